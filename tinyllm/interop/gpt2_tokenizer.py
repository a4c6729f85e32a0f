"""GPT-2's tokenizer files (``vocab.json`` + ``merges.txt``)
as a tinyllm ``BPETokenizer``, and back.

OpenAI released GPT-2's byte-level BPE as two text files, which Hugging Face kept (OpenAI's own
names are in brackets):

    vocab.json  (encoder.json)  {"!": 0, "\\"": 1, ..., "Ġthe": 262, ..., "<|endoftext|>": 50256}
    merges.txt  (vocab.bpe)     "#version: 0.2", then one merge per line, in the order learned: "Ġ t"

Both are written in *byte-level unicode*: each of the 256 byte values is shown as one printable
character, so tokens (which are byte strings, not always valid UTF-8) can live in JSON and in a text
file split on spaces. The mapping (``bytes_to_unicode``): the 188 bytes that are printable Latin-1
characters other than space (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the
other 68 (controls, space, 0x7F-0xA0, 0xAD) become ``chr(256 + n)`` in byte order, so space (0x20,
the 33rd of them) is ``Ġ`` (U+0120) and newline is ``Ċ``.

The ids are vocab.json's, unchanged, so they match the rows of GPT-2's embedding table. In GPT-2 the
256 single bytes are ids 0..255 in the order of that mapping (``!`` is 0, byte 0 is 188), merge
``i`` makes id ``256 + i``, and ``<|endoftext|>`` is 50256: exactly the shape ``BPETokenizer``
takes, a rank table ``{token bytes: id}`` whose bytes have ids 0..255 in any order. Because merge
``i`` makes id ``256 + i``, "apply the merges in merges.txt order" (Hugging Face) and "merge the
adjacent pair whose result has the lowest id" (tiktoken, tinyllm) rank the merges alike; tiktoken's
own gpt2 encoding is built from these two files in exactly this way. This module checks the
``256 + i`` rule and refuses files that break it.

Entries of vocab.json that are neither a byte nor made by a merge (GPT-2 has one, "<|endoftext|>")
are special tokens: ordinary text can never produce them.

Text is split with GPT-2's pattern before BPE. An exported tokenizer that was trained with another
pattern (tinyllm trains with GPT-4's by default) keeps its ids and merges, but Hugging Face's GPT-2
tokenizer will split text with GPT-2's pattern, so a few chunk boundaries can differ.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..files import atomic_write, read_json
from ..tokenizer import BPETokenizer, GPT2_SPLIT_PATTERN

# Hugging Face's, OpenAI's
VOCAB_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
MERGES_HEADER = "#version: 0.2"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """byte → the character GPT-2's files show it as (printable Latin-1 as itself,
    others chr(256 + n))."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def encode_token(token: bytes) -> str:
    """Token bytes → its byte-level unicode string (``b" the"`` → ``"Ġthe"``)."""
    table = bytes_to_unicode()
    return "".join(table[byte] for byte in token)


def decode_token(text: str, where: str) -> bytes:
    """Byte-level unicode string → token bytes;
    ValueError naming ``where`` for a character outside the 256."""
    table = unicode_to_bytes()
    try:
        return bytes(table[char] for char in text)
    except KeyError as e:
        raise ValueError(f"{where}: {text!r} contains {e.args[0]!r} (U+{ord(e.args[0]):04X}), "
                         "which is not one of "
                         "GPT-2's 256 byte characters") from None


def find_tokenizer_files(directory) -> tuple[Path, Path] | None:
    """(vocab, merges) files in ``directory``: vocab.json + merges.txt, or encoder.json + vocab.bpe;
    else None."""
    directory = Path(directory)
    for vocab, merges in VOCAB_FILES:
        if (directory / vocab).is_file() and (directory / merges).is_file():
            return directory / vocab, directory / merges
    return None


def read_merges(path) -> list[tuple[str, str]]:
    """The merges of a merges.txt as pairs of byte-level unicode strings
    (the version line skipped)."""
    pairs = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, 1):
            line = line.rstrip("\r\n")
            if not line or (line_number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"'{path}' line {line_number}: expected two tokens separated by "
                                 f"one space, got {line[:60]!r}")
            pairs.append((parts[0], parts[1]))
    return pairs


def load_gpt2_tokenizer(vocab_file, merges_file, pattern: str | None = "gpt2") -> BPETokenizer:
    """A ``BPETokenizer`` from GPT-2-style ``vocab.json`` and ``merges.txt``
    (or encoder.json, vocab.bpe).

    Ids are vocab.json's; entries no merge makes become special tokens (GPT-2's "<|endoftext|>" =
    50256). ValueError names the file and the entry when the files do not describe one byte-level
    BPE.
    """
    vocab_json = read_json(vocab_file, what="GPT-2 vocabulary")
    if not isinstance(vocab_json, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                   for v in vocab_json.values()):
        raise ValueError(f"'{vocab_file}' must be a JSON object mapping token strings "
                         "to integer ids")
    merges_text = read_merges(merges_file)

    ranks: dict[bytes, int] = {}
    for byte, char in bytes_to_unicode().items():
        if char not in vocab_json:
            raise ValueError(f"'{vocab_file}' has no entry {char!r} for byte {byte}; every byte "
                             "must be a token")
        if not 0 <= vocab_json[char] < 256:
            raise ValueError(f"'{vocab_file}': byte token {char!r} has id {vocab_json[char]}; byte "
                             "tokens must have ids 0..255")
        ranks[bytes((byte,))] = vocab_json[char]
    merges: list[tuple[int, int]] = []
    for i, (left, right) in enumerate(merges_text):
        where = f"'{merges_file}' merge {i + 1} ({left} {right})"
        if left not in vocab_json or right not in vocab_json:
            missing = left if left not in vocab_json else right
            raise ValueError(f"{where}: {missing!r} is not in '{vocab_file}'")
        for part in (left, right):
            if vocab_json[part] >= 256 + i:
                raise ValueError(f"{where}: {part!r} has id {vocab_json[part]}, which no "
                                 "earlier merge made")
        merged = left + right
        if vocab_json.get(merged) != 256 + i:
            found = "is not in it" if merged not in vocab_json else f"has id {vocab_json[merged]}"
            raise ValueError(f"{where}: makes {merged!r}, which should have id {256 + i} in "
                             f"'{vocab_file}' (merge i "
                             f"makes id 256 + i) but {found}")
        ranks[decode_token(left, where) + decode_token(right, where)] = 256 + i
        merges.append((vocab_json[left], vocab_json[right]))
    if len(ranks) != 256 + len(merges):
        raise ValueError(f"'{merges_file}': some merge makes a token that an earlier merge or "
                         "byte already is")

    mergeable = {encode_token(token) for token in ranks}
    special = {text: token_id for text, token_id in vocab_json.items() if text not in mergeable}
    try:
        return BPETokenizer(ranks, pattern, special, merges=merges)
    except ValueError as e:
        raise ValueError(f"'{vocab_file}': {e}") from None


def load_gpt2_tokenizer_from(directory, pattern: str | None = "gpt2") -> BPETokenizer:
    """``load_gpt2_tokenizer`` on the files found in ``directory``
    (FileNotFoundError if there are none)."""
    files = find_tokenizer_files(directory)
    if files is None:
        names = " or ".join(" + ".join(pair) for pair in VOCAB_FILES)
        raise FileNotFoundError(f"no GPT-2 tokenizer files ({names}) in '{directory}'")
    return load_gpt2_tokenizer(*files, pattern=pattern)


def save_gpt2_tokenizer(tokenizer: BPETokenizer, directory) -> tuple[Path, Path]:
    """Write ``tokenizer`` as ``vocab.json`` + ``merges.txt`` in ``directory``;
    returns the two paths.

    Ids are kept (bytes, merges, special tokens). The split pattern is not part of these files:
    readers assume GPT-2's (see the module docstring).
    """
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError("only a BPETokenizer can be written as vocab.json + merges.txt, not a "
                        f"{type(tokenizer).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = tokenizer.special_tokens
    special_ids = set(specials.values())
    vocab = {}
    for token_id in range(tokenizer.vocab_size):
        if token_id in special_ids:
            continue
        try:
            vocab[encode_token(tokenizer.token_to_bytes(token_id))] = token_id
        except ValueError:
            continue                       # a gap in the ids (no token): nothing to write
    for text, token_id in specials.items():
        if text in vocab:
            raise ValueError(f"special token {text!r} (id {token_id}) is spelled like ordinary "
                             f"token {vocab[text]} "
                             "in byte-level unicode; vocab.json cannot hold both")
        vocab[text] = token_id
    lines = [MERGES_HEADER]
    for left, right in tokenizer.merges:
        lines.append(f"{encode_token(tokenizer.token_to_bytes(left))} "
                     f"{encode_token(tokenizer.token_to_bytes(right))}")
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    ordered = dict(sorted(vocab.items(), key=lambda item: item[1]))
    atomic_write(vocab_path, json.dumps(ordered, ensure_ascii=False))
    atomic_write(merges_path, "\n".join(lines) + "\n")
    return vocab_path, merges_path


def uses_gpt2_pattern(tokenizer) -> bool:
    return getattr(tokenizer, "pattern", None) == GPT2_SPLIT_PATTERN


__all__ = ["bytes_to_unicode", "encode_token", "decode_token", "find_tokenizer_files",
           "read_merges",
           "load_gpt2_tokenizer", "load_gpt2_tokenizer_from", "save_gpt2_tokenizer",
           "uses_gpt2_pattern"]
