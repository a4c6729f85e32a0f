"""Hugging Face tokenizer.json → HFBPETokenizer: ids identical to the ``tokenizers`` library itself, for
tokenizers it trained in the GPT-2, Llama 3 and Qwen2 styles, on a large real text with special tokens."""

import json
from pathlib import Path

import pytest

from tinyllm.tokenizer import HFBPETokenizer, load_tokenizer

DATA = Path(__file__).parents[1].parent / "shared" / "data"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
EXTRA = "<|im_start|>user\nHéllo wörld 12345 — ünïcode 日本語 🙂 \t tabs  <|im_end|>   \n\n  x<|endoftext|>"


def _text():
    path = DATA / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip("../shared/data/tinyshakespeare.txt is absent")
    return path.read_text(encoding="utf-8")


def train_hf_tokenizer(style: str, text: str, path: Path, vocab_size: int = 700):
    """A tokenizer trained by the ``tokenizers`` library in the given style, saved as tokenizer.json."""
    tk = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    tok = tk.Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=style == "gpt2")
    if style == "gpt2":
        tok.pre_tokenizer = byte_level
    else:
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([text], trainer)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])    # after training: ids at the end, as in Llama 3
    tok.save(str(path))
    return tok


@pytest.mark.parametrize("style", ["gpt2", "llama3", "qwen2"])
def test_ids_match_tokenizers_library(style, tmp_path):
    text = _text()
    reference = train_hf_tokenizer(style, text[:100_000], tmp_path / "tokenizer.json")
    ours = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(ours, HFBPETokenizer)
    sample = text[:400_000] + EXTRA                          # 400k characters of real text, then the rest
    ids = ours.encode(sample, allowed_special="all")
    assert ids == reference.encode(sample, add_special_tokens=False).ids
    assert ours.decode(ids) == sample
    assert ours.vocab_size == reference.get_vocab_size()
    assert ours.special_tokens["<|im_end|>"] == reference.token_to_id("<|im_end|>")
    with pytest.raises(ValueError, match="special token"):
        ours.encode("hi<|im_end|>")                          # not allowed unless asked for


def test_merges_as_strings_and_written_back(tmp_path):
    """Older files write merges as "a b" strings; the tokenizer written back loads in ``tokenizers``."""
    tk = pytest.importorskip("tokenizers")
    text = _text()[:50_000]
    train_hf_tokenizer("gpt2", text, tmp_path / "tokenizer.json", vocab_size=400)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    (tmp_path / "old.json").write_text(json.dumps(data), encoding="utf-8")
    ours = HFBPETokenizer.from_file(tmp_path / "old.json")
    ours.save(tmp_path / "back.json")
    again = tk.Tokenizer.from_file(str(tmp_path / "back.json"))
    assert ours.encode(text) == again.encode(text, add_special_tokens=False).ids


SP_NORMALIZER = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                    {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
SP_METASPACE = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
SP_DECODER = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                               {"type": "ByteFallback"}, {"type": "Fuse"},
                                               {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


@pytest.mark.parametrize("variant", ["prepend-replace", "metaspace"])
def test_sentencepiece_style_ids_match_tokenizers_library(variant, tmp_path):
    """Llama 2 / TinyLlama-style files (▁ for spaces, BPE over characters, <0xNN> byte fallback), in both
    layouts transformers writes: the same ids as ``tokenizers``, and decode(encode(text)) == text."""
    tk = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    text = _text()
    tok = tk.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator([text[:50_000]], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]   # vocabulary only
    data["normalizer"], data["pre_tokenizer"] = (SP_NORMALIZER, None) if variant == "prepend-replace" \
        else (None, SP_METASPACE)
    data["decoder"] = SP_DECODER
    (tmp_path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    reference, ours = tk.Tokenizer.from_file(str(tmp_path / "tokenizer.json")), load_tokenizer(tmp_path / "tokenizer.json")
    assert type(ours).__name__ == "SentencePieceBPETokenizer"
    sample = text[:200_000] + EXTRA + "</s>"                 # unseen characters fall back to bytes
    assert ours.encode(sample, allowed_special="all") == reference.encode(sample, add_special_tokens=False).ids
    plain = text[:20_000] + " Héllo 日本語 🙂"
    ids = ours.encode(plain)
    assert ours.decode(ids) == plain == reference.decode(ids)


def test_other_sentencepiece_pipelines_are_refused_by_name(tmp_path):
    data = {"model": {"type": "BPE", "vocab": {"▁a": 0}, "merges": [], "byte_fallback": True},
            "normalizer": {"type": "NFKC"}, "pre_tokenizer": None, "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="SentencePiece-style pipeline is not supported"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_missing_bytes_and_bad_merge_are_named(tmp_path):
    data = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}, "added_tokens": []}
    (tmp_path / "t.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks 255 of the 256 single bytes"):
        HFBPETokenizer.from_file(tmp_path / "t.json")


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_a_tinyllm_tokenizer_written_as_tokenizer_json(pattern, tmp_path):
    """A BPETokenizer trained by tinyllm, converted to tokenizer.json: the tokenizers library and tinyllm's
    own reader give the ids tinyllm gives."""
    tk = pytest.importorskip("tokenizers")
    from tinyllm.tokenizer import BPETokenizer
    from tinyllm.tokenizer.hf_json import hf_tokenizer_json

    text = _text()
    ours = BPETokenizer.train(text[:30_000], 400, pattern=pattern, special_tokens=["<|endoftext|>"])
    (tmp_path / "tokenizer.json").write_text(json.dumps(hf_tokenizer_json(ours)), encoding="utf-8")
    sample = text[:200_000] + EXTRA.replace("<|im_start|>", "").replace("<|im_end|>", "")
    expected = ours.encode(sample, allowed_special="all")
    assert tk.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(sample).ids == expected
    assert load_tokenizer(tmp_path / "tokenizer.json").encode(sample, allowed_special="all") == expected
