"""Tokenizers: text <-> integer ids. Pure Python + ``regex``; nothing here knows about tensors.

- :class:`BPETokenizer` (``bpe.py``): byte-level BPE as in GPT-2/GPT-4; train one, or import a
  ``.tiktoken`` vocabulary. Its parts: ``bpe_train.py`` learns merges, ``bpe_encode.py`` applies
  them to a chunk, ``bpe_vocab.py`` checks a vocabulary and reads and writes its files.
- :class:`CharTokenizer` (``char.py``): one id per character, for the smallest experiments.
- :class:`WordPieceTokenizer` (``wordpiece.py``): BERT's tokenizer, with BERT's ``vocab.txt``;
  ``wordpiece_train.py`` learns a vocabulary by the likelihood criterion.
- ``patterns.py``: the split regexes (GPT-2's, GPT-4's) that cut text into chunks before BPE.
- :class:`HFBPETokenizer` (``hf_json.py``): a Hugging Face ``tokenizer.json`` (Llama 3, Qwen2,
  SmolLM, GPT-2); ``hf_sentencepiece.py`` reads the SentencePiece-style ones (Llama 2, TinyLlama,
  Mistral v0.1).

``load_tokenizer(path)`` opens a file saved by either class (or a run directory's tokenizer.json).
"""

from __future__ import annotations

import os

from .bpe import BPETokenizer
from .char import CharTokenizer
from .hf_json import HFBPETokenizer, is_hf_tokenizer_json, load_hf_tokenizer
from .patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, PATTERNS, resolve_pattern
from .serialize import read_tokenizer_json
from .wordpiece import WordPieceTokenizer

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "GPT4_SPLIT_PATTERN",
    "PATTERNS",
    "BPETokenizer",
    "CharTokenizer",
    "HFBPETokenizer",
    "WordPieceTokenizer",
    "load_tokenizer",
    "resolve_pattern",
]

_CLASSES = {cls.format_name: cls for cls in (BPETokenizer, CharTokenizer, WordPieceTokenizer)}


def load_tokenizer(path: str | os.PathLike
                   ) -> BPETokenizer | CharTokenizer | HFBPETokenizer | WordPieceTokenizer:
    """Load a tokenizer file saved by ``BPETokenizer.save``, ``CharTokenizer.save`` or
    ``WordPieceTokenizer.save`` (or the ``tokenizer.json`` of a run directory, when ``path`` is
    one).

    The file's ``"format"`` field picks the class; ValueError names the file if it is neither. A
    Hugging Face ``tokenizer.json`` (no "format", a "model" object) is read as an
    :class:`HFBPETokenizer`.
    """
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            raise FileNotFoundError(f"'{path}' is a directory without a tokenizer.json; give a "
                                    "tokenizer file "
                                    "or a run directory that holds one")
        path = os.path.join(path, "tokenizer.json")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"no tokenizer file at '{path}'")
    if _is_hf_file(path):
        return load_hf_tokenizer(path)
    fmt = read_tokenizer_json(path)["format"]
    if fmt not in _CLASSES:
        raise ValueError(f"tokenizer file '{path}' has format {fmt!r}; expected one of "
                         f"{sorted(_CLASSES)}")
    return _CLASSES[fmt].load(path)


def _is_hf_file(path) -> bool:
    import json
    try:
        with open(path, encoding="utf-8") as f:
            return is_hf_tokenizer_json(json.load(f))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False   # read_tokenizer_json names the problem
