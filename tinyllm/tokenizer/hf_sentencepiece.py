"""SentencePiece-style BPE from a Hugging Face ``tokenizer.json``: Llama 2, TinyLlama, Mistral v0.1.

These tokenizers were trained by Google's SentencePiece and converted by ``transformers``. They
differ from byte-level BPE (``hf_json.py``) in three ways:

- *Characters, not bytes.* Text is not cut into chunks by a regex. Spaces become ``▁`` (U+2581) and
  one ``▁`` is put in front of the text ("Hello world" → "▁Hello▁world"), then BPE runs over the
  *characters* of the whole text, merging pairs in ``merges`` order (merge i beats merge j > i; the
  leftmost pair wins a tie).
- *Byte fallback.* A character that is not in the vocabulary becomes the tokens of its UTF-8 bytes,
  ``<0xE6>`` ``<0x97>`` ``<0xA5>`` — so nothing is ever unknown, as in byte-level BPE, but only rare
  characters pay for it.
- *Decoding* turns ``▁`` back into spaces, joins byte tokens into bytes,
  and drops the one leading space.

The file says so like this (both variants ``transformers`` writes are read):

    "normalizer":    {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
                      "pre_tokenizer": null
    or "normalizer": null, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "split":
    false, ...}
    "model":         {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                      "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x00>": 3, ..., "▁t": 259, ...},
                      "merges": [...]}

Added tokens (``<s>``, ``</s>``, chat markers) are cut out first and each piece of text between them
is encoded on its own, with its own leading ``▁`` (``Metaspace``: unless it starts with a space
already), as ``tokenizers`` does.
"""

from __future__ import annotations

from .bpe import BPETokenizer
from .bpe_encode import apply_merges
from .hf_json import _merge_pairs, _refuse, merge_table

SPACE = "▁"


def is_sentencepiece_style(data: dict) -> bool:
    """Whether a tokenizer.json is SentencePiece-style BPE (byte fallback, or ▁ for spaces)."""
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    return (bool(model.get("byte_fallback")) or pre.get("type") == "Metaspace"
            or "Prepend" in str(data.get("normalizer")))


def _check_pipeline(data: dict, where: str) -> bool:
    """Refuse pipelines other than the two ``transformers`` writes; True for Prepend + Replace
    (which puts ▁ in front of every piece), False for Metaspace (which does not when the piece
    already starts with a space)."""
    normalizer, pre = data.get("normalizer"), data.get("pre_tokenizer")
    steps = (normalizer or {}).get("normalizers", []) if normalizer else []
    prepend_replace = [s.get("type") for s in steps] == ["Prepend", "Replace"] \
        and steps[0].get("prepend") == SPACE \
        and steps[1].get("pattern") == {"String": " "} and steps[1].get("content") == SPACE
    metaspace = normalizer is None and pre is not None and pre.get("type") == "Metaspace" \
        and pre.get("replacement") == SPACE and not pre.get("split", True) \
        and pre.get("prepend_scheme") == "always"
    if not (prepend_replace and pre is None) and not metaspace:
        _refuse(where, "this SentencePiece-style pipeline",
                "tinyllm reads Prepend('▁') + Replace(' ', '▁') without a "
                "pre-tokenizer, or Metaspace(split=false, prepend_scheme='always')")
    return prepend_replace


class SentencePieceBPETokenizer(BPETokenizer):
    """A SentencePiece-style BPE ``tokenizer.json`` (see the module docstring);
    ids are the file's ids."""

    format_name = "huggingface-sentencepiece-bpe"

    def __init__(self, data: dict, where: str = "tokenizer.json"):
        model = data.get("model") or {}
        if (model.get("type") != "BPE" or model.get("continuing_subword_prefix")
                or model.get("end_of_word_suffix")):
            _refuse(where, f"model {model.get('type')!r}", "only plain BPE models are")
        self._always_prepend = _check_pipeline(data, where)
        vocab = model.get("vocab")
        if not isinstance(vocab, dict):
            raise ValueError(f"{where}: model.vocab must be an object of token → id")
        self._data, self._where, self._file_ids = data, where, dict(vocab)
        self._byte_ids = [vocab.get(f"<0x{b:02X}>")
                          for b in range(256)] if model.get("byte_fallback") else None
        self._unk = vocab.get(model.get("unk_token")) if model.get("unk_token") else None
        if self._byte_ids is not None and None in self._byte_ids:
            raise ValueError(f"{where}: byte_fallback is on but the vocabulary lacks "
                             f"<0x{self._byte_ids.index(None):02X}>")
        # Internal ids: every single character and byte token first, then one per merge
        # (see merge_table).
        base = [piece for piece in vocab if len(piece) == 1 or piece.startswith("<0x")]
        internal, pair_ranks = merge_table(base, _merge_pairs(model.get("merges", []), where),
                                           vocab, where)
        self._char_ids = {piece: i for i, piece in enumerate(base) if len(piece) == 1}
        self._byte_internal = [base.index(f"<0x{b:02X}>")
                               for b in range(256)] if self._byte_ids else None
        self._internal_to_file = [vocab[piece] for piece in internal]
        self._pair_ranks, self._merges, self._pattern = pair_ranks, None, None
        self._split = lambda text: [text] if text else []
        self._special_tokens = {
            entry["content"]: int(entry["id"]) for entry in data.get("added_tokens", [])
        }
        self._decoder = {token_id: self._piece_bytes(piece) for piece, token_id in vocab.items()}
        self._decoder.update(
            {token_id: text.encode("utf-8") for text, token_id in self._special_tokens.items()}
        )
        self._vocab_size = max(self._decoder) + 1
        self._special_splitters, self._cache = {}, {}

    @staticmethod
    def _piece_bytes(piece: str) -> bytes:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes((int(piece[3:5], 16),))
        return piece.replace(SPACE, " ").encode("utf-8")

    from_file = classmethod(lambda cls, path: _load(cls, path))
    load = from_file

    def save(self, path) -> None:
        from .hf_json import HFBPETokenizer
        HFBPETokenizer.save(self, path)                       # the file as read

    def __repr__(self) -> str:
        return (f"SentencePieceBPETokenizer(vocab_size={self.vocab_size}, "
                f"added_tokens={len(self._special_tokens)})")

    def encode_ordinary(self, text: str) -> list[int]:
        if isinstance(text, str) and text:
            text = text.replace(" ", SPACE)
            text = text if text.startswith(SPACE) and not self._always_prepend else SPACE + text
        return super().encode_ordinary(text)

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = []
        for char in chunk:
            token = self._char_ids.get(char)
            if token is not None:
                ids.append(token)
            elif self._byte_internal is not None:
                ids.extend(self._byte_internal[b] for b in char.encode("utf-8"))
            elif self._unk is None:
                raise ValueError(f"{self._where}: {char!r} is not in the vocabulary and there is "
                                 "no byte fallback "
                                 "or unk token")
            else:
                ids.append(-1)                                # unknown: kept apart, never merged
        to_file = self._internal_to_file
        return [self._unk if i < 0 else to_file[i] for i in apply_merges(ids, self._pair_ranks)]

    def decode(self, ids) -> str:
        text = self.decode_bytes(ids).decode("utf-8", errors="replace")
        return text[1:] if text.startswith(" ") else text     # the one ▁ that encoding put in front

    @property
    def merges(self):
        raise NotImplementedError("a SentencePiece-style tokenizer's merges are in its "
                                  "tokenizer.json")

    def to_tiktoken_ranks(self):
        raise NotImplementedError("a SentencePiece-style tokenizer is not byte-level BPE: "
                                  "no tiktoken form")


def _load(cls, path):
    from .hf_json import read_tokenizer_json_file
    return cls(read_tokenizer_json_file(path), str(path))


__all__ = ["SentencePieceBPETokenizer", "is_sentencepiece_style"]
