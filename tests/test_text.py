"""Tests for tinyllm.data.text: clean_text's options, dedupe, and the built-in corpus."""

from __future__ import annotations

import pytest

from tinyllm.data import clean_text, dedupe
from tinyllm.data.text import builtin_corpus


def test_html_tags_are_stripped_and_entities_decoded():
    html = (
        "<html><head><style>p {color: red}</style></head><body><p>Fish &amp; chips&#33;</p><!-- ad -->"
        "<script>if (a < b) alert(1)</script><b>caf&eacute;</b></body></html>"
    )
    assert clean_text(html) == "\nFish & chips!\ncafé"


def test_block_tags_become_newlines_and_escaped_markup_survives():
    assert clean_text("one<br>two<br/>three</p>four") == "one\ntwo\nthree\nfour"
    assert clean_text("write &lt;b&gt; for bold") == "write <b> for bold"


def test_strip_html_false_keeps_markup():
    assert clean_text("a <b>bold</b> &amp; move", strip_html=False) == "a <b>bold</b> &amp; move"


def test_nfc_composes_and_nfkc_folds_compatibility_characters():
    decomposed = "cafe\u0301 \ufb01 \uff21 x\u00b2"
    assert clean_text(decomposed) == "caf\u00e9 \ufb01 \uff21 x\u00b2"
    assert clean_text(decomposed, normalize="NFKC") == "caf\u00e9 fi A x2"
    assert clean_text(decomposed, normalize=None) == decomposed
    assert clean_text("caf\u00e9", normalize="NFD") == "cafe\u0301"
    with pytest.raises(ValueError, match="NFX"):
        clean_text("x", normalize="NFX")


def test_control_characters_go_but_tab_newline_and_emoji_joiners_stay():
    text = "a\x00b\x07c\td\ne\x1bf\x7fg\x85h 👨\u200d👩"
    assert clean_text(text) == "abc\td\nefgh 👨\u200d👩"


def test_line_endings_become_newlines():
    assert clean_text("a\r\nb\rc\n") == "a\nb\nc\n"


def test_collapse_whitespace():
    text = "  Hello,\t\t world  \n\n\n\n  next\u00a0\u00a0para  \n"
    assert clean_text(text) == text, "off by default"
    assert clean_text(text, collapse_whitespace=True) == "Hello, world\n\nnext para"


def test_clean_text_rejects_non_strings():
    with pytest.raises(TypeError, match="bytes"):
        clean_text(b"abc")


def test_dedupe_keeps_first_occurrences_in_order():
    docs = ["b", "a", "b", "c", "a"]
    assert dedupe(docs) == ["b", "a", "c"]
    assert dedupe(iter(docs)) == ["b", "a", "c"]
    assert dedupe([]) == []


def test_dedupe_with_a_key():
    docs = ["Hello ", "hello", "world", " WORLD"]
    assert dedupe(docs, key=lambda d: d.strip().lower()) == ["Hello ", "world"]


def test_builtin_corpus_is_pythons_help_topics():
    from pydoc_data.topics import topics

    text = builtin_corpus()
    assert isinstance(text, str) and len(text) > 100_000
    first = topics[sorted(topics)[0]]
    assert text.startswith(first + "\n\n")
    assert builtin_corpus() is text, "computed once"
