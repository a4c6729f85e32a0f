"""Raw text before tokenization: cleaning it, dropping duplicates, and the built-in corpus.

Web text arrives with HTML markup, entities such as ``&amp;``, several spellings of the same
character ("é" as one code point or as "e" + a combining accent), stray control characters and
ragged whitespace. A tokenizer trained on that spends tokens on the noise, so clean first, then
train.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Callable, Hashable, Iterable

_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_LINE_BREAK_TAG = re.compile(r"<(?:br|/?p|/div|/li|/h[1-6]|/tr|/blockquote|/pre)\b[^<>]*>",
                             re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<![^<>]*>")  # <b>, </a>, <img src=x />, <!DOCTYPE html>
_LINE_ENDING = re.compile(r"\r\n?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # category Cc except \t (09) and \n (0a)
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # whitespace other than newline
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")

NORMAL_FORMS = ("NFC", "NFKC", "NFD", "NFKD")


def clean_text(
    text: str,
    strip_html: bool = True,
    normalize: str | None = "NFC",
    collapse_whitespace: bool = False,
) -> str:
    """Clean one document. The steps run in this order:

    strip_html
        Remove HTML markup: ``<script>``/``<style>`` elements with their content, comments, and
        tags; ``<br>``, ``<p>`` and the ends of block elements (``</div>``, ``</li>``, ...) become
        newlines so paragraphs stay apart; then entities are decoded (``&amp;`` -> ``&``, ``&#233;``
        -> ``é``). Entities are decoded *after* tags are removed, so ``&lt;b&gt;`` survives as the
        text ``<b>``. Anything from ``<`` + a letter to the next ``>`` counts as a tag, so
        ``a<b and c>d`` loses ``<b and c>``: pass ``strip_html=False`` for source code or math.
    line endings
        Always: ``\\r\\n`` and a lone ``\\r`` become ``\\n``.
    normalize
        Unicode normalization: ``"NFC"`` (default) composes "e" + U+0301 into the single "é" without
        changing what any text means; ``"NFKC"`` also folds compatibility characters ("ﬁ" -> "fi",
        full-width "Ａ" -> "A", "²" -> "2"), which loses some distinctions; ``"NFD"``/``"NFKD"``
        decompose instead; ``None`` leaves the code points as they are.
    control characters
        Always: characters of Unicode category Cc (U+0000-U+001F, U+007F-U+009F) are removed, except
        tab and newline. Format characters (category Cf, e.g. the zero-width joiner that holds emoji
        sequences together) are kept.
    collapse_whitespace
        If True: each run of whitespace other than newlines becomes one space, spaces next to a
        newline go, runs of blank lines become one blank line, and the text is stripped at both
        ends. Off by default because it flattens the indentation of code.
    """
    if not isinstance(text, str):
        raise TypeError(f"clean_text expects a str, got {type(text).__name__}")
    if normalize is not None and normalize not in NORMAL_FORMS:
        raise ValueError(f"normalize={normalize!r}: expected one of {NORMAL_FORMS} or None")
    if strip_html:
        text = _SCRIPT_OR_STYLE.sub("", text)
        text = _COMMENT.sub("", text)
        text = _LINE_BREAK_TAG.sub("\n", text)
        text = _TAG.sub("", text)
        text = html.unescape(text)
    text = _LINE_ENDING.sub("\n", text)
    if normalize is not None:
        text = unicodedata.normalize(normalize, text)
    text = _CONTROL.sub("", text)
    if collapse_whitespace:
        text = _HORIZONTAL_SPACE.sub(" ", text)
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
        text = _BLANK_LINES.sub("\n\n", text)
        text = text.strip()
    return text


def dedupe(documents: Iterable[str], key: Callable[[str], Hashable] | None = None) -> list[str]:
    """The documents without exact duplicates, first occurrences kept, in their original order.

    ``key`` decides what counts as the same document, e.g. ``key=str.strip`` or
    ``key=lambda d: clean_text(d, collapse_whitespace=True).lower()``; by default the text itself.
    """
    seen: set = set()
    unique = []
    for document in documents:
        k = document if key is None else key(document)
        if k not in seen:
            seen.add(k)
            unique.append(document)
    return unique


@functools.lru_cache(maxsize=1)
def builtin_corpus() -> str:
    """tinyllm's default training text: Python's own help topics (``pydoc_data.topics``),
    about 465 KB.

    It ships with every Python, so examples, tests and benchmarks run offline: English prose about
    the language with code examples mixed in. The topics are joined in order of their names, a blank
    line between each two.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some Linux distributions package it separately
        raise RuntimeError(
            "the built-in corpus needs the standard library's pydoc_data module, which this Python "
            "lacks; pass a text file instead (e.g. --data FILE)"
        ) from None
    return "\n\n".join(topics[name] for name in sorted(topics))
