"""Hugging Face ``tokenizer.json`` (the ``tokenizers`` library's file) for byte-level BPE models.

GPT-2, Llama 3, Qwen2,
SmolLM and most open models since ship one file that describes the whole pipeline:

    {"normalizer":     null | {"type": "NFC"},
     "pre_tokenizer":  {"type": "Sequence", "pretokenizers": [
                          {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|...)|..."}, "behavior":
                          "Isolated"}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex":
                          false}]},
     "model":          {"type": "BPE", "vocab": {"Ġthe": 262, ...}, "merges": ["Ġ t", ...] or [["Ġ", "t"], ...],
                        "ignore_merges": true | false, "byte_fallback": false},
     "added_tokens":   [{"id": 128000, "content": "<|begin_of_text|>", "special": true, ...}, ...],
     "decoder":        {"type": "ByteLevel"}}

Encoding text is the same four steps as tinyllm's ``BPETokenizer``: cut out the added tokens, split
the rest with the pre-tokenizer's regexes (GPT-2's is ``ByteLevel`` with ``use_regex: true``; Llama
3 and Qwen2 put their own ``Split`` regex first), write each chunk as bytes, and merge. Two details
differ, and this sibling class follows Hugging Face in both:

- *Which pairs merge.* tiktoken (and ``BPETokenizer``) merges any adjacent pair whose bytes form a
  token, lowest token id first. Hugging Face merges only the pairs listed in ``merges``, in list
  order. So here the pair table comes straight from the merges list: merge i joins (a, b) into a
  token with internal id 256 + i, and the internal ids are translated to the file's ids at the end
  (the file may number its tokens in any order: a trainer puts special tokens first, Llama 3 puts
  them last).
- *Whole chunks.* With ``ignore_merges`` (Llama 3), a chunk that is itself in the vocabulary is that
  token without merging; without it (GPT-2), merges alone decide.

Vocabulary entries use GPT-2's byte-level characters (``Ġ`` is a space; see
``interop/gpt2_tokenizer.py``). Added tokens, special or not, are what tinyllm calls special tokens:
a string that encodes to one id.

SentencePiece-style BPE (TinyLlama, Mistral, Llama 2: ``▁`` for spaces, ``byte_fallback``) is a
different pipeline, read by ``hf_sentencepiece.py``; ``load_hf_tokenizer`` picks the class. ``save``
writes the file back exactly as read (it is the tokenizer's definition), so ``from_file`` in
``tokenizers`` loads it.
"""

from __future__ import annotations

import json
import os
import unicodedata
from itertools import chain

from .bpe import BPETokenizer
from .bpe_encode import apply_merges
from .patterns import GPT2_SPLIT_PATTERN, make_splitter
from .serialize import write_text_atomically

FORMAT_NAME = "huggingface-tokenizer-json"


def is_hf_tokenizer_json(data) -> bool:
    """Whether a parsed JSON object is a ``tokenizers`` file
    (it has a "model" object and no tinyllm "format")."""
    return isinstance(data, dict) and "format" not in data and isinstance(data.get("model"), dict)


def _byte_chars() -> dict[str, int]:
    from ..interop.gpt2_tokenizer import unicode_to_bytes   # GPT-2's 256 byte characters
    return unicode_to_bytes()


def _refuse(where: str, part: str, why: str):
    raise ValueError(f"{where}: {part} is not supported: {why}. tinyllm reads byte-level BPE "
                     "tokenizers (GPT-2, Llama 3, Qwen2, SmolLM) and SentencePiece-style BPE as "
                     "transformers converts it (▁ and byte_fallback: Llama 2, TinyLlama, Mistral "
                     "v0.1)")


def _split_patterns(pre, where: str) -> list[str]:
    """The regexes a pre-tokenizer cuts text with, in order
    (each applied to the previous one's chunks)."""
    if pre is None:
        _refuse(where, "a tokenizer without a pre_tokenizer",
                "byte-level BPE needs the ByteLevel pre-tokenizer")
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    patterns, byte_level = [], False
    for step in steps:
        kind = step.get("type")
        if kind == "Split":
            pattern = step.get("pattern", {})
            if "Regex" not in pattern or step.get("behavior") != "Isolated" or step.get("invert"):
                _refuse(where, f"pre_tokenizer Split {json.dumps(step)[:120]}",
                        "only a Regex split with behavior Isolated and invert false is")
            patterns.append(pattern["Regex"])
        elif kind == "ByteLevel":
            if step.get("add_prefix_space"):
                _refuse(where, "ByteLevel add_prefix_space=true",
                        "text is encoded without an added leading space")
            if step.get("use_regex", True):
                patterns.append(GPT2_SPLIT_PATTERN)
            byte_level = True
        else:
            _refuse(where, f"pre_tokenizer {kind!r}", "only Split and ByteLevel pre-tokenizers are")
    if not byte_level:
        _refuse(where, "a pre_tokenizer without ByteLevel", "tokens must be byte-level")
    return patterns


def _normalizer(normalizer, where: str):
    if normalizer is None:
        return None
    if normalizer.get("type") == "NFC":
        return lambda text: unicodedata.normalize("NFC", text)
    _refuse(where, f"normalizer {normalizer.get('type')!r}", "only none or NFC is")


def _token_bytes(token: str, where: str) -> bytes:
    table = _byte_chars()
    try:
        return bytes(table[char] for char in token)
    except KeyError as e:
        _refuse(where, f"vocabulary entry {token!r}",
                f"{e.args[0]!r} is not one of the 256 byte-level characters")


def _merge_pairs(merges, where: str) -> list[tuple[str, str]]:
    """The merges as (left, right) strings: a file has "a b" strings (older) or [a,
    b] lists (newer)."""
    pairs = []
    for i, merge in enumerate(merges):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(pair,
                          list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"{where}: merge {i} is {merge!r}; expected \"a b\" or [\"a\", \"b\"]")
        pairs.append((pair[0], pair[1]))
    return pairs


def merge_table(base: list, pairs: list, vocab, where: str) -> tuple[list, dict]:
    """Internal ids for BPE by merge order: ``base`` tokens get 0 … K-1 and merge i's result K + i,
    so that ``merge_short``'s rule "merge the adjacent pair whose result has the lowest id" applies
    the merges in list order. Returns (internal id → token, {(left id, right id): result id})."""
    internal, internal_id, pair_ranks = list(base), {token: i for i, token in enumerate(base)}, {}
    for i, (left, right) in enumerate(pairs):
        if left not in internal_id or right not in internal_id or left + right not in vocab:
            raise ValueError(f"{where}: merge {i} ({left!r}, {right!r}) uses or makes a token that "
                             "is not in the "
                             "vocabulary or not made by an earlier merge")
        pair_ranks.setdefault((internal_id[left], internal_id[right]), len(internal))
        # a token two merges make keeps its first id
        internal_id.setdefault(left + right, len(internal))
        internal.append(left + right)
    return internal, pair_ranks


class HFBPETokenizer(BPETokenizer):
    """A byte-level BPE tokenizer read from a Hugging Face ``tokenizer.json``;
    ids are the file's ids.

    >>> tok = HFBPETokenizer.from_file("SmolLM2-135M/tokenizer.json")
    >>> tok.encode("Hello<|im_end|>", allowed_special="all")

    ``encode``/``decode`` behave like ``BPETokenizer``'s (``allowed_special`` decides what happens
    to added-token strings in the text); ``save`` writes the original file.
    """

    format_name = FORMAT_NAME

    def __init__(self, data: dict, where: str = "tokenizer.json"):
        model = data.get("model") or {}
        if model.get("type") != "BPE":
            _refuse(where, f"model type {model.get('type')!r}", "only BPE models are")
        for key in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix", "dropout"):
            if model.get(key):
                _refuse(where, f"model.{key}={model[key]!r}", "byte-level BPE does not use it")
        patterns = _split_patterns(data.get("pre_tokenizer"), where)
        normalize = _normalizer(data.get("normalizer"), where)
        vocab, where_vocab = model.get("vocab"), f"{where}: model.vocab"
        if not isinstance(vocab, dict):
            raise ValueError(f"{where}: model.vocab must be an object of token → id")
        file_ids = {_token_bytes(token, where_vocab): token_id for token, token_id in vocab.items()}
        missing = [b for b in range(256) if bytes((b,)) not in file_ids]
        if missing:
            raise ValueError(f"{where}: the vocabulary lacks {len(missing)} of the 256 single "
                             "bytes (first: byte "
                             f"{missing[0]}), so some text could not be encoded; train it with "
                             "initial_alphabet=ByteLevel.alphabet()")
        pairs = [(_token_bytes(left, where), _token_bytes(right, where))
                 for left, right in _merge_pairs(model.get("merges", []), where)]
        internal, pair_ranks = merge_table([bytes((b,)) for b in range(256)], pairs, file_ids,
                                           where)
        added = {}
        for entry in data.get("added_tokens", []):
            if entry.get("lstrip") or entry.get("rstrip") or entry.get("single_word"):
                _refuse(where,
                        f"added token {entry.get('content')!r} with lstrip/rstrip/single_word",
                        "added tokens are matched exactly")
            added[entry["content"]] = int(entry["id"])
        self._data, self._where = data, where
        self._file_ids, self._internal_to_file = file_ids, [file_ids[token] for token in internal]
        self._ignore_merges, self._normalize = bool(model.get("ignore_merges")), normalize
        self._init_tables(patterns, pair_ranks, added)

    def _init_tables(self, patterns, pair_ranks, added):
        """What ``BPETokenizer``'s encode/decode read: the splitter, pair table,
        special tokens, decoder."""
        self._pattern = patterns[-1] if patterns else None
        splitters = [make_splitter(p) for p in patterns]

        def split(text):
            chunks = [text]
            for splitter in splitters:
                chunks = list(chain.from_iterable(map(splitter, chunks)))
            return chunks

        self._split = split
        self._pair_ranks, self._merges = pair_ranks, None
        self._special_tokens = added
        self._decoder = {token_id: token for token, token_id in self._file_ids.items()}
        self._decoder.update({token_id: text.encode("utf-8") for text, token_id in added.items()})
        self._vocab_size = max(self._decoder) + 1
        self._special_splitters, self._cache = {}, {}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "HFBPETokenizer":
        return cls(read_tokenizer_json_file(path), str(path))

    load = from_file

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``tokenizer.json`` this tokenizer was read from
        (``tokenizers`` loads it unchanged)."""
        write_text_atomically(path, json.dumps(self._data, ensure_ascii=False, indent=2) + "\n")

    def __repr__(self) -> str:
        return (f"HFBPETokenizer(vocab_size={self.vocab_size}, "
                f"added_tokens={len(self._special_tokens)})")

    def encode_ordinary(self, text: str) -> list[int]:
        if self._normalize is not None and isinstance(text, str):
            text = self._normalize(text)
        return super().encode_ordinary(text)

    def _encode_chunk(self, chunk: str) -> list[int]:
        piece = chunk.encode("utf-8")
        if self._ignore_merges and piece in self._file_ids:
            return [self._file_ids[piece]]
        to_file = self._internal_to_file
        return [to_file[i] for i in apply_merges(list(piece), self._pair_ranks)]

    @property
    def merges(self):
        raise NotImplementedError("a Hugging Face tokenizer's merges are in its tokenizer.json "
                                  "(model.merges)")

    def to_tiktoken_ranks(self):
        raise NotImplementedError("Hugging Face tokenizers merge by merge order, not token id: "
                                  "no tiktoken form")


def read_tokenizer_json_file(path) -> dict:
    """The parsed ``tokenizer.json``; ValueError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"'{path}' is not a valid tokenizer.json: {e}") from None
    if not is_hf_tokenizer_json(data):
        raise ValueError(f"'{path}' is not a Hugging Face tokenizer.json (no \"model\" object)")
    return data


def load_hf_tokenizer(path):
    """A Hugging Face ``tokenizer.json`` as the class that reads its kind: ``HFBPETokenizer``
    (byte-level BPE) or ``SentencePieceBPETokenizer`` (``▁`` and byte fallback: Llama 2, TinyLlama,
    Mistral v0.1)."""
    from .hf_sentencepiece import SentencePieceBPETokenizer, is_sentencepiece_style
    data = read_tokenizer_json_file(path)
    kind = SentencePieceBPETokenizer if is_sentencepiece_style(data) else HFBPETokenizer
    return kind(data, str(path))


def hf_tokenizer_json(bpe: BPETokenizer) -> dict:
    """A tinyllm ``BPETokenizer`` as a ``tokenizer.json`` object: its split regex as a ``Split``
    pre-tokenizer, its ids, merges and special tokens unchanged. Merge i makes id 256 + i, so "merge
    in list order" (Hugging Face) ranks pairs as "lowest resulting id" (tinyllm) does; the two rules
    differ only for a pair whose bytes form a token that training built from another split (see
    ``bpe.py``)."""
    from ..interop.gpt2_tokenizer import encode_token

    vocab = {encode_token(bpe.token_to_bytes(i)): i for i in range(bpe.vocab_size) if i not in
             bpe.special_tokens.values()}
    merges = [[encode_token(bpe.token_to_bytes(a)), encode_token(bpe.token_to_bytes(b))]
              for a, b in bpe.merges]
    steps = [{"type": "Split", "pattern": {"Regex": bpe.pattern}, "behavior": "Isolated",
              "invert": False}] \
        if bpe.pattern else []
    steps.append(
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    )
    added = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False,
              "special": True} for text,
              i in sorted(bpe.special_tokens.items(), key=lambda item: item[1])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps}, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": merges}}


__all__ = ["HFBPETokenizer", "hf_tokenizer_json", "is_hf_tokenizer_json", "load_hf_tokenizer",
           "FORMAT_NAME"]
