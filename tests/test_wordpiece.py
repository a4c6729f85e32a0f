"""WordPiece (BERT's tokenizer): normalisation, greedy longest-match, specials, files, training, HF parity."""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import pytest

from tinyllm.cli import main
from tinyllm.tokenizer import WordPieceTokenizer, load_tokenizer
from tinyllm.tokenizer.wordpiece import is_punctuation, normalize, pre_tokenize, word_pieces
from tinyllm.tokenizer.wordpiece_train import train_wordpiece

DATA = Path(__file__).parents[1].parent / "shared" / "data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# What BERT's pre-processing has to get right: accents, CJK, punctuation, control and odd whitespace
# characters, Greek final sigma, special-token strings, and words over the 100-character limit.
HARD_TEXT = ("Café Ñandú naïve résumé ÉCOLE 北京欢迎你 東京 こんにちは 안녕 «quoted» — dash… $5+3^2 {x}|y~ "
             "\x00a\x07b\u200bc\ufffd Σίσυφος ΣΑΣ " + "a" * 101 + " " + "b" * 100 +
             " pneumonoultramicroscopicsilicovolcanoconiosis\tx\u3000y\u00a0z [MASK] [CLS]x[SEP] don't")


def tiny():
    return WordPieceTokenizer(SPECIALS + ["un", "##aff", "##able", "!", "a", "##a", "hello", "world", "##s", ","])


def test_normalize_cleans_spaces_cjk_and_strips_accents_only_when_uncased():
    assert normalize("Héllo\tWörld\x07!", lowercase=True) == "hello world!"
    assert normalize("Héllo\tWörld\x07!", lowercase=False) == "Héllo Wörld!"
    assert normalize("a北b", lowercase=False) == "a 北 b"
    assert normalize("ΣΑΣ", lowercase=True) == "σασ"                     # per character: no final ς


def test_pre_tokenize_splits_whitespace_and_isolates_each_punctuation_character():
    assert pre_tokenize("hello,  world!! $5") == ["hello", ",", "world", "!", "!", "$", "5"]
    assert pre_tokenize("«a»—b") == ["«", "a", "»", "—", "b"]


def test_the_punctuation_regex_agrees_with_is_punctuation_on_every_bmp_character():
    chars = [chr(c) for c in range(33, 0x10000) if not 0xD800 <= c < 0xE000 and chr(c) != " "]
    text = " ".join(chars)
    words = pre_tokenize(text)
    assert words == chars                                              # each one its own word either way
    punct = {c for c in chars if is_punctuation(c)}
    assert "$" in punct and "«" in punct and "a" not in punct and unicodedata.category("—") == "Pd"


def test_greedy_longest_match_first_with_continuations_and_unk():
    tok = tiny()
    assert tok.tokenize("Unaffable!") == ["un", "##aff", "##able", "!"]
    assert tok.tokenize("hellos worldx") == ["hello", "##s", "[UNK]"]  # no piece for "##x": the whole word
    assert word_pieces("a" * 101, tok.vocab) is None and word_pieces("a" * 100, tok.vocab) is not None
    assert tok.tokenize("a" * 101) == ["[UNK]"]


def test_special_token_strings_are_their_tokens_and_pairs_get_type_ids():
    tok = tiny()
    assert tok.tokenize("hello [MASK]!") == ["hello", "[MASK]", "!"]
    assert tok.tokenize("hello [MASK]", allowed_special="none") == ["hello", "[UNK]", "[UNK]", "[UNK]"]
    with pytest.raises(ValueError, match=r"special token \[MASK\]"):
        tok.encode("[MASK]", allowed_special="none_raise")
    ids, types = tok.encode_pair("hello", "worlds")
    assert [tok.id_to_token(i) for i in ids] == ["[CLS]", "hello", "[SEP]", "world", "##s", "[SEP]"]
    assert types == [0, 0, 0, 1, 1, 1]


def test_decode_glues_continuations():
    tok = tiny()
    ids = tok.encode("unaffable, hello worlds!")
    assert tok.decode(ids) == "unaffable , hello worlds !"
    assert tok.decode(tok.encode_pair("hello")[0], skip_special_tokens=True) == "hello"


def test_vocab_txt_round_trip_and_missing_specials_are_refused(tmp_path):
    tok = tiny()
    tok.save_vocab(tmp_path / "vocab.txt")
    again = WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    assert again.tokens == tok.tokens
    tok.save(tmp_path / "wp.json")
    loaded = load_tokenizer(tmp_path / "wp.json")
    assert isinstance(loaded, WordPieceTokenizer) and loaded.encode("Unaffable!") == tok.encode("Unaffable!")
    for special in ("[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        (tmp_path / "bad.txt").write_text("\n".join(t for t in tok.tokens if t != special) + "\n")
        with pytest.raises(ValueError, match=rf"bad.txt: the vocabulary lacks \[{special[1:-1]}\]"):
            WordPieceTokenizer.from_vocab_file(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("\n".join(tok.tokens + ["hello"]) + "\n")
    with pytest.raises(ValueError, match="'hello' appears twice"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "dup.txt")


def test_training_merges_by_likelihood_score():
    # "t ##s" is the most frequent pair (200: BPE would merge it first), but "q ##u" always occur together:
    # score 5 / (5 · 5) = 0.2 against 200 / (200 · 240) ≈ 0.004, so WordPiece merges "qu" first.
    text = "quo " * 5 + "es " * 40 + "e " * 200 + "s " * 10 + "ts " * 200
    tok = train_wordpiece(text, 5 + 7 + 1, min_frequency=1)
    assert tok.tokens[:5] == SPECIALS
    assert set(tok.tokens[5:12]) == {"e", "q", "s", "t", "##o", "##s", "##u"}
    assert tok.tokens[12] == "qu"
    assert train_wordpiece(text, 5 + 7 + 3, min_frequency=1).tokens[12:] == ["qu", "quo", "ts"]
    assert train_wordpiece(text, 5 + 7 + 1, min_frequency=1, criterion="count").tokens[12] == "ts"   # BPE's choice


def test_cli_trains_a_wordpiece_tokenizer_and_writes_vocab_txt(tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text("The quick brown fox jumps over the lazy dog. " * 50 + "Café au lait. " * 20)
    out = tmp_path / "wp.json"
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--data", str(data), "--vocab-size", "80",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "vocab.txt" in printed and "ran out of pairs" in printed    # 67 tokens spell every word whole
    tok = load_tokenizer(out)
    assert WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt").tokens == tok.tokens
    assert tok.vocab_size == 67 and tok.tokenize("CAFE")[0].startswith("c")


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_ids_match_hugging_face_on_a_large_real_text(tmp_path, lowercase):
    tokenizers = pytest.importorskip("tokenizers")
    if not (DATA / "tinyshakespeare.txt").exists():
        pytest.skip("../shared/data is not here")
    text = (DATA / "tinyshakespeare.txt").read_text()[:250_000]
    if (DATA / "taylorswift.txt").exists():
        text += (DATA / "taylorswift.txt").read_text()
    text += HARD_TEXT
    tok = train_wordpiece(text[:60_000] + HARD_TEXT, 1000, lowercase=lowercase)
    tok.save_vocab(tmp_path / "vocab.txt")
    hf = tokenizers.BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=lowercase)
    ours, theirs = tok.encode(text), hf.encode(text, add_special_tokens=False).ids
    assert len(ours) > 100_000 and tok.unk_id in ours                  # the over-long words
    assert ours == theirs
    ids, types = tok.encode_pair("Café, 北京!", "ÉCOLE naïve")
    pair = hf.encode("Café, 北京!", "ÉCOLE naïve")
    assert (ids, types) == (pair.ids, pair.type_ids)
    if "transformers" in sys.modules or pytest.importorskip("transformers"):
        from transformers import BertTokenizerFast
        fast = BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=lowercase)
        assert fast(HARD_TEXT, add_special_tokens=False)["input_ids"] == tok.encode(HARD_TEXT)
