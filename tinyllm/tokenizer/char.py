"""The character tokenizer: one token per distinct character of the training text.

The simplest tokenizer there is (nanoGPT's Tiny Shakespeare model uses it): the vocabulary is the
sorted set of characters in the text, a character's id is its position in that list. It compresses
nothing, so a model sees long sequences, but every id means one visible character, which makes it
the easiest one to watch a model learn with. Unlike byte-level BPE it cannot encode a character it
has not seen.

It has the same method names as :class:`BPETokenizer` (``encode``, ``decode``, ``encode_batch``,
``save``, ``load``, ``vocab_size``, ``special_tokens``), so the rest of tinyllm can take either.

File format (JSON)::

    {"format": "tinyllm-char", "version": 1, "chars": "\\n !$&',-.3:;?ABC...xyz"}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from .serialize import check_format, read_tokenizer_json, write_text_atomically

FORMAT_NAME, FORMAT_VERSION = "tinyllm-char", 1


class CharTokenizer:
    """Characters <-> ids, from a sorted vocabulary of characters.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.encode("hole"), tok.vocab_size
    ([1, 3, 2, 0], 4)
    """

    format_name = FORMAT_NAME

    def __init__(self, chars: Iterable[str]):
        unique = set(chars)
        for c in unique:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"the vocabulary must be single characters, got {c!r}")
        self._chars = sorted(unique)
        self._ids = {c: i for i, c in enumerate(self._chars)}
        self._id_to_char = dict(enumerate(self._chars))

    @classmethod
    def from_text(cls, text_or_iterable: str | Iterable[str]) -> CharTokenizer:
        """The vocabulary of every character in a text (or in an iterable of texts)."""
        texts = [text_or_iterable] if isinstance(text_or_iterable, str) else text_or_iterable
        chars: set[str] = set()
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"expected text as a str, got {type(text).__name__}")
            chars.update(text)
        return cls(chars)

    train = from_text  # the name BPETokenizer uses for "build from a text"

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    @property
    def chars(self) -> list[str]:
        """The vocabulary: character ``i`` has id ``i``."""
        return list(self._chars)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Always empty: a character tokenizer has no special tokens."""
        return {}

    def encode(self, text: str, allowed_special="none_raise") -> list[int]:
        """Text -> ids. ValueError names the first character not in the vocabulary and its position.

        ``allowed_special`` is accepted for interchangeability with BPETokenizer; there are no
        special tokens.
        """
        if not isinstance(text, str):
            raise TypeError(f"expected text as a str, got {type(text).__name__}")
        try:
            return list(map(self._ids.__getitem__, text))
        except KeyError as e:
            char = e.args[0]
            raise ValueError(
                f"character {char!r} (U+{ord(char):04X}) at position {text.index(char)} is not in "
                f"the vocabulary of {self.vocab_size} characters this tokenizer was built from"
            ) from None

    encode_ordinary = encode

    def encode_batch(self, texts: Iterable[str], allowed_special="none_raise") -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts, not one str; use encode() "
                            "for a single text")
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (accepts a list or a NumPy array). ValueError names an id out of range."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        elif not isinstance(ids, (list, tuple)):
            ids = list(ids)
        try:
            return "".join(map(self._id_to_char.__getitem__, ids))
        except (KeyError, TypeError):
            for token_id in ids:
                try:
                    known = token_id in self._id_to_char
                except TypeError:  # unhashable, e.g. a list
                    known = False
                if not known:
                    raise ValueError(
                        f"token id {token_id!r} is not in this tokenizer (ids are "
                        f"0..{self.vocab_size - 1})"
                    ) from None
            raise

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (see the module docstring)."""
        data = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "chars": "".join(self._chars)}
        write_text_atomically(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """Read a file written by :meth:`save`; ValueError naming the file if it is malformed."""
        data = read_tokenizer_json(path)
        check_format(data, path, FORMAT_NAME, FORMAT_VERSION)
        chars = data.get("chars")
        if not isinstance(chars, str) or len(set(chars)) != len(chars):
            raise ValueError(f"tokenizer file '{path}': \"chars\" must be a string of "
                             "distinct characters")
        return cls(chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
