"""Tests for tinyllm.tokenizer: BPE training, encoding, files, tiktoken interop, and the char tokenizer."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.data.text import builtin_corpus
from tinyllm.tokenizer import GPT4_SPLIT_PATTERN, BPETokenizer, CharTokenizer, load_tokenizer
from tinyllm.tokenizer.bpe_encode import merge_long, merge_short
from tinyllm.tokenizer.bpe_vocab import write_tiktoken_file
from tinyllm.tokenizer.serialize import escape_bytes, unescape_bytes

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UNICODE_SAMPLE = (
    "Héllo wörld! naïve café, e\u0301 (e + combining acute), ﬁnance. 你好，世界。日本語のテキスト。"
    " 한국어 텍스트. Привет, мир! مرحبا بالعالم. 😀👍🏽👨‍👩‍👧 emoji   runs\t\tof\n\n\nwhitespace  \r\n"
    " numbers 1234567 3.14159 and CONTRACTIONS: I'LL we've they'd it's.\n"
)
CUSTOM_PATTERN = r"\p{L}+|\p{N}+"  # matches letters and digits only: everything else is a gap chunk
PATTERNS = {"gpt2": "gpt2", "gpt4": "gpt4", "none": None, "custom": CUSTOM_PATTERN}


@pytest.fixture(scope="module")
def corpus() -> str:
    return builtin_corpus()


@pytest.fixture(scope="module")
def small_text(corpus) -> str:
    return corpus[:30_000] + UNICODE_SAMPLE * 3


@pytest.fixture(scope="module")
def tokenizers(small_text) -> dict[str, BPETokenizer]:
    """One small tokenizer per pattern choice."""
    return {name: BPETokenizer.train(small_text, 400, pattern=pattern) for name, pattern in PATTERNS.items()}


# ------------------------------------------------------------------------------------------ training


def test_training_on_aaabdaaabac_gives_the_hand_computed_merges():
    # Pairs of a a a b d a a a b a c: (a,a) 4 times -> 256 = "aa". Now 256 a b d 256 a b a c, where
    # (256,a) and (a,b) both occur twice: the smaller pair (97,98) wins -> 257 = "ab". Then 256 257 d
    # 256 257 a c: (256,257) twice -> 258 = "aaab".
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, pattern=None)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tok.token_to_bytes(258) == b"aaab"


def test_ties_go_to_the_smallest_pair():
    tok = BPETokenizer.train("dcba", vocab_size=257, pattern=None)  # (d,c) (c,b) (b,a) once each
    assert tok.merges == [(ord("b"), ord("a"))]


def _textbook_merges(text: str, num_merges: int, pattern) -> list[tuple[int, int]]:
    """The slow, obviously correct trainer: recount all pairs of all chunks after every merge."""
    from tinyllm.tokenizer.patterns import make_splitter, resolve_pattern

    words = [list(chunk.encode("utf-8")) for chunk in make_splitter(resolve_pattern(pattern))(text)]
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for w, word in enumerate(words):
            merged, i = [], 0
            while i < len(word):
                if tuple(word[i : i + 2]) == best:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            words[w] = merged
    return merges


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.sampled_from("aab c\né"), max_size=80), pattern=st.sampled_from(["gpt4", None]))
def test_incremental_training_equals_the_textbook_loop(text, pattern):
    # A tiny alphabet makes overlapping pairs ("aaa"), repeated pairs in one chunk and ties common.
    assert BPETokenizer.train(text, 256 + 12, pattern=pattern).merges == _textbook_merges(text, 12, pattern)


def test_training_is_deterministic(small_text):
    first = BPETokenizer.train(small_text, 350)
    second = BPETokenizer.train(small_text, 350)
    assert first.merges == second.merges


def test_merges_never_cross_chunks():
    tok = BPETokenizer.train("ab ab ab ab", vocab_size=300, pattern="gpt4")
    learned = {tok.token_to_bytes(i) for i in range(256, tok.vocab_size)}
    assert learned == {b"ab", b" ab"}, "'b' and ' ' are in different chunks, so 'b ' must not be learned"


def test_merges_never_cross_documents():
    tok = BPETokenizer.train(["ab", "cd"], vocab_size=300, pattern=None)
    assert tok.merges == [(97, 98), (99, 100)], "(b, c) spans two documents and must not be counted"


def test_training_stops_when_no_pairs_are_left():
    tok = BPETokenizer.train("abab", vocab_size=1000, pattern=None, special_tokens=["<|end|>"])
    assert tok.merges == [(97, 98), (256, 256)]
    assert tok.special_tokens == {"<|end|>": 258}
    assert tok.vocab_size == 259


def test_progress_callback_sees_every_merge():
    seen = []
    BPETokenizer.train(
        "aaabdaaabac", 259, pattern=None, progress=lambda done, token, count: seen.append((done, token, count))
    )
    assert seen == [(1, b"aa", 4), (2, b"ab", 2), (3, b"aaab", 2)]


# -------------------------------------------------------------------------------------- round trips

unicode_text = st.text(
    st.one_of(
        st.characters(codec="utf-8"),  # any code point but lone surrogates (which are not valid text)
        st.sampled_from(list("😀👍🏽\u200d你好世界한국\u0301\u0308é e\t\n\r ")),
    ),
    max_size=60,
)


@pytest.mark.parametrize("name", list(PATTERNS))
@settings(max_examples=150, deadline=None)
@given(text=unicode_text)
def test_decode_inverts_encode_for_any_unicode(tokenizers, name, text):
    tok = tokenizers[name]
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("name", list(PATTERNS))
def test_round_trip_on_real_text(tokenizers, small_text, name):
    text = small_text + "     \n\n  " + "x" * 300  # also a chunk longer than the heap threshold
    assert tokenizers[name].decode(tokenizers[name].encode(text)) == text
    assert tokenizers[name].encode("") == []


@pytest.fixture(scope="module")
def abc_tokenizer():
    return BPETokenizer.train("abcabcaabbccabacbc" * 5 + "aaaa bbbb", 300, pattern=None)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=400).map(lambda b: bytes(x % 3 + 97 for x in b)))
def test_heap_merge_equals_simple_merge(abc_tokenizer, data):
    tok = abc_tokenizer  # an alphabet of three letters makes long runs of merges
    ids = list(data)
    assert merge_long(list(ids), tok._pair_ranks) == merge_short(list(ids), tok._pair_ranks)


def test_a_100_kb_chunk_takes_the_heap_path_and_round_trips():
    tok = BPETokenizer.train("ab" * 50 + "a" * 64, 300, pattern=None)
    text = "ab" * 50_000 + "a" * 1000
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 10


def test_decode_of_a_cut_character_gives_the_replacement_character(tokenizers):
    tok = tokenizers["gpt4"]
    euro = "€".encode("utf-8")  # 3 bytes
    assert tok.decode([euro[0], euro[1]]) == "\ufffd"
    assert tok.decode_bytes([euro[0], euro[1]]) == euro[:2]


def test_lone_surrogates_encode_as_the_replacement_character(tokenizers):
    tok = tokenizers["gpt4"]
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"


def test_cache_is_bounded_and_correct(small_text):
    tok = BPETokenizer.train(small_text, 300)
    expected = tok.encode(small_text)
    tok.cache_size = 10  # a call that finds 10 or more entries empties the cache first
    assert tok.encode(small_text) == expected
    assert tok.encode(small_text) == expected
    tok.encode("x")
    assert list(tok._cache) == ["x"]


def test_encode_batch_and_numpy_ids(tokenizers):
    np = pytest.importorskip("numpy")
    tok = tokenizers["gpt4"]
    texts = ["hello", "", "wörld 😀"]
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert tok.decode(np.array(batch[2], dtype=np.int64)) == "wörld 😀"


# ----------------------------------------------------------------------------------- special tokens


@pytest.fixture(scope="module")
def with_specials(small_text):
    return BPETokenizer.train(small_text, 300, special_tokens=["<|endoftext|>", "<|pad|>"])


def test_special_tokens_get_the_last_ids(with_specials):
    assert with_specials.special_tokens == {"<|endoftext|>": 298, "<|pad|>": 299}
    assert with_specials.vocab_size == 300
    assert len(with_specials.merges) == 300 - 256 - 2


def test_special_token_in_text_raises_by_default(with_specials):
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        with_specials.encode("hi<|endoftext|>")


def test_allowed_special_all(with_specials):
    ids = with_specials.encode("hi<|endoftext|>there<|pad|>", allowed_special="all")
    assert ids[-1] == 299 and 298 in ids
    assert with_specials.decode(ids) == "hi<|endoftext|>there<|pad|>"


def test_allowed_special_set_allows_only_its_members(with_specials):
    ids = with_specials.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"})
    assert 298 in ids
    with pytest.raises(ValueError, match=r"<\|pad\|>"):
        with_specials.encode("a<|endoftext|>b<|pad|>", allowed_special={"<|endoftext|>"})
    with pytest.raises(ValueError, match="<nope>"):
        with_specials.encode("a", allowed_special={"<nope>"})


def test_none_and_encode_ordinary_treat_specials_as_text(with_specials):
    text = "a<|endoftext|>b"
    ids = with_specials.encode_ordinary(text)
    assert with_specials.encode(text, allowed_special="none") == ids
    assert 298 not in ids and with_specials.decode(ids) == text


# ------------------------------------------------------------------------------------------ bad input


def test_vocab_size_too_small_names_the_numbers():
    with pytest.raises(ValueError, match=r"vocab_size 257.*256.*2.*258"):
        BPETokenizer.train("abc", 257, special_tokens=["<a>", "<b>"])


def test_empty_and_duplicated_special_tokens_are_named():
    with pytest.raises(ValueError, match="''"):
        BPETokenizer.train("abc", 300, special_tokens=[""])
    with pytest.raises(ValueError, match="<a>.*twice"):
        BPETokenizer.train("abc", 300, special_tokens=["<a>", "<a>"])
    with pytest.raises(TypeError, match="list of strings"):
        BPETokenizer.train("abc", 300, special_tokens="<a>")


def test_decode_names_an_id_out_of_range(tokenizers):
    tok = tokenizers["gpt4"]
    for bad in (tok.vocab_size, -1, 10**9):
        with pytest.raises(ValueError, match=f"token id {bad} "):
            tok.decode([65, bad])
    with pytest.raises(TypeError, match="str"):
        tok.decode(["a"])


def test_encode_names_a_non_str_type(tokenizers):
    tok = tokenizers["gpt4"]
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"hello")
    with pytest.raises(TypeError, match="NoneType"):
        tok.encode_ordinary(None)
    with pytest.raises(TypeError, match="not one str"):
        tok.encode_batch("hello")
    with pytest.raises(TypeError, match="int"):
        BPETokenizer.train(["ok", 5], 300)


def test_invalid_pattern_is_a_value_error():
    with pytest.raises(ValueError, match="not a valid regex"):
        BPETokenizer.train("abc", 300, pattern="(unclosed")


# ----------------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path, with_specials, small_text):
    path = tmp_path / "tok.json"
    with_specials.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == with_specials.merges
    assert loaded.special_tokens == with_specials.special_tokens
    assert loaded.pattern == with_specials.pattern == GPT4_SPLIT_PATTERN
    assert loaded.encode(small_text) == with_specials.encode(small_text)
    assert isinstance(load_tokenizer(path), BPETokenizer)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "tinyllm-bpe" and data["version"] == 1
    assert [" ", "t"] in data["merges"] or [" ", "a"] in data["merges"], "merges are stored as readable text"


def test_partial_utf8_tokens_survive_save_and_load(tmp_path):
    tok = BPETokenizer.train("你好世界 " * 20 + "€uro \\ " * 20, 300, pattern=None)

    def is_utf8(token: bytes) -> bool:
        try:
            token.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    assert not all(is_utf8(tok.token_to_bytes(i)) for i in range(256, tok.vocab_size))
    tok.save(tmp_path / "t.json")
    assert "\\x" in (tmp_path / "t.json").read_text(encoding="utf-8")
    assert BPETokenizer.load(tmp_path / "t.json").merges == tok.merges


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=20) | st.text(max_size=10).map(lambda s: s.encode("utf-8") + b"\\x41\\"))
def test_escape_bytes_is_reversible(token):
    assert unescape_bytes(escape_bytes(token)) == token


def test_truncated_file_names_the_file_and_line(tmp_path, with_specials):
    path = tmp_path / "tok.json"
    with_specials.save(path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(ValueError, match=r"tok\.json.*line \d+"):
        BPETokenizer.load(path)
    with pytest.raises(ValueError, match=r"tok\.json"):
        load_tokenizer(path)


def test_malformed_files_name_the_problem(tmp_path, with_specials):
    path = tmp_path / "tok.json"
    with_specials.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))

    def load_with(**changes):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**data, **changes}), encoding="utf-8")
        return BPETokenizer.load(bad)

    with pytest.raises(ValueError, match="version 99"):
        load_with(version=99)
    with pytest.raises(ValueError, match="format 'other'"):
        load_with(format="other")
    with pytest.raises(ValueError, match=r"bad\.json.*merge 1 joins 'zzz'"):
        load_with(merges=[data["merges"][0], ["zzz", "a"]])
    with pytest.raises(ValueError, match="byte_order"):
        load_with(byte_order=[0] * 256)
    with pytest.raises(ValueError, match="promises 5 merges"):
        load_with(num_merges=5)


# ---------------------------------------------------------------------------------- tiktoken interop


def _byte_shuffled_ranks(tok: BPETokenizer, seed: int = 0) -> dict[bytes, int]:
    """The same vocabulary with the single bytes in a shuffled id order (as in GPT-2 and cl100k)."""
    order = list(range(256))
    random.Random(seed).shuffle(order)
    ranks = tok.to_tiktoken_ranks()
    return {token: (order[rank] if rank < 256 else rank) for token, rank in ranks.items()}


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_tiktoken_gives_identical_ids(corpus, pattern):
    tiktoken = pytest.importorskip("tiktoken")
    tok = BPETokenizer.train(corpus, 1024, pattern=pattern, special_tokens=["<|endoftext|>"])
    enc = tiktoken.Encoding(
        "tinyllm", pat_str=tok.pattern, mergeable_ranks=tok.to_tiktoken_ranks(), special_tokens=tok.special_tokens
    )
    assert enc.encode_ordinary(corpus) == tok.encode(corpus)
    mixed = UNICODE_SAMPLE + "<|endoftext|>" + corpus[:5000]
    assert enc.encode(mixed, allowed_special="all") == tok.encode(mixed, allowed_special="all")


def test_from_tiktoken_file_with_shuffled_byte_ids(tmp_path, small_text, with_specials):
    path = tmp_path / "vocab.tiktoken"
    write_tiktoken_file(_byte_shuffled_ranks(with_specials), path)
    tok = BPETokenizer.from_tiktoken_file(path, "gpt4", {"<|endoftext|>": 298})
    assert tok.byte_order != list(range(256))

    def as_bytes(t, ids):
        return [t.token_to_bytes(i) for i in ids]

    text = small_text[:5000]
    assert as_bytes(tok, tok.encode(text)) == as_bytes(with_specials, with_specials.encode(text))
    recovered = [tuple(as_bytes(tok, pair)) for pair in tok.merges]
    assert recovered == [tuple(as_bytes(with_specials, pair)) for pair in with_specials.merges]

    tok.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    assert again.byte_order == tok.byte_order and again.encode(text) == tok.encode(text)
    again.save_tiktoken_file(tmp_path / "again.tiktoken")
    assert (tmp_path / "again.tiktoken").read_bytes() == path.read_bytes()

    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding("shuffled", pat_str=tok.pattern, mergeable_ranks=tok.to_tiktoken_ranks(), special_tokens={})
    assert enc.encode_ordinary(text) == tok.encode(text)


def test_malformed_tiktoken_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(b"IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken' line 2"):
        BPETokenizer.from_tiktoken_file(path, "gpt2")
    path.write_bytes(b"IQ== 0\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken.*byte 0 is missing"):
        BPETokenizer.from_tiktoken_file(path, "gpt2")


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's files write byte b as a printable character: itself if printable, else chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


@pytest.mark.skipif(not (SHARED_DATA / "gpt2").exists(), reason="GPT-2 files not available")
def test_gpt2_vocabulary_encodes_and_recovers_its_merges():
    decoder = _gpt2_byte_decoder()
    encoder = json.loads((SHARED_DATA / "gpt2" / "encoder.json").read_text(encoding="utf-8"))
    ranks = {bytes(decoder[c] for c in token): i for token, i in encoder.items() if token != "<|endoftext|>"}
    tok = BPETokenizer(ranks, "gpt2", {"<|endoftext|>": 50256})
    assert tok.encode("Hello world") == [15496, 995]  # the ids GPT-2 publishes
    merges_txt = (SHARED_DATA / "gpt2" / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    names = {i: token for token, i in encoder.items()}
    assert [f"{names[a]} {names[b]}" for a, b in tok.merges] == [line for line in merges_txt if line]


# -------------------------------------------------------------------------------- char tokenizer


def test_char_tokenizer_round_trip_and_sorted_vocab(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    assert tok.decode(tok.encode("low")) == "low"
    tok.save(tmp_path / "c.json")
    loaded = load_tokenizer(tmp_path / "c.json")
    assert isinstance(loaded, CharTokenizer) and loaded.chars == tok.chars


def test_char_tokenizer_errors_name_the_character_and_position():
    tok = CharTokenizer.train(["abc", "d"])
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 2"):
        tok.encode("abzd")
    with pytest.raises(ValueError, match="token id 4 "):
        tok.decode([0, 4])
    with pytest.raises(TypeError):
        tok.encode(5)


def test_load_tokenizer_rejects_unknown_formats(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "sentencepiece"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.json.*sentencepiece"):
        load_tokenizer(path)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_train_and_encode(tmp_path, capsys):
    from tinyllm.cli import main

    data = tmp_path / "data.txt"
    data.write_text(UNICODE_SAMPLE * 20, encoding="utf-8")
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "300", "--out", str(out), "--quiet"]) == 0
    assert "vocab size" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "Héllo wörld", "--count"]) == 0
    count = int(capsys.readouterr().out)
    assert count == len(load_tokenizer(out).encode("Héllo wörld"))
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "<|endoftext|>"]) == 2
    assert "--allow-special" in capsys.readouterr().err
