"""The BPE vocabulary as data: checking it, turning merges into ranks and back, and its two files.

A vocabulary has two equivalent descriptions:

- *ranks*, ``{token bytes: id}`` (tiktoken's table), and
- *merges*, ``[(id, id), ...]``: merge ``i`` joins two earlier tokens into token ``256 + i``, given
  the order of the 256 single bytes (``byte_order[i]`` is the byte with id ``i``).

Merges -> ranks is concatenation. Ranks -> merges asks, for each token, which two tokens made it:
run BPE on the token's bytes allowing only lower ranks;
it stops at the two halves it was built from.

The JSON file (``format: "tinyllm-bpe"``, version 1) looks like this, one merge per line::

    {
      "format": "tinyllm-bpe",
      "version": 1,
      "pattern": "'(?i:[sdmt]|ll|ve|re)|...",       (the split regex, or null)
      "special_tokens": {"<|endoftext|>": 4095},
      "byte_order": [0, 1, 2, ..., 255],            (the byte with id i; 0..255 after training)
      "num_merges": 3839,
      "merges": [
        [" ", "t"],                                 (id 256 = b" t")
        ["h", "e"],                                 (id 257 = b"he")
        [" t", "he"],                               (id 258 = b" the")
        ...
      ]
    }

Tokens are written with the readable escape of ``serialize.py`` (``\\xNN`` for bytes that are not
UTF-8, ``\\\\`` for a backslash). A ``.tiktoken`` file is one ``base64(token bytes) id`` per line.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable

from .bpe_encode import merge_short
from .serialize import (
    check_format,
    dump_json_lines,
    escape_bytes,
    read_tokenizer_json,
    unescape_bytes,
    write_text_atomically,
)

FORMAT_NAME, FORMAT_VERSION = "tinyllm-bpe", 1


# ----------------------------------------------------------------------------------------- checks


def check_ranks(ranks: dict[bytes, int], decoder: dict[int, bytes]) -> None:
    """Raise ValueError unless ids are 0..n-1, one per token,
    and the single bytes have ids 0..255."""
    if len(decoder) != len(ranks):
        seen: dict[int, bytes] = {}
        for token, rank in ranks.items():
            if rank in seen:
                raise ValueError(f"tokens {seen[rank]!r} and {token!r} both have id {rank}")
            seen[rank] = token
    if ranks and (min(decoder) != 0 or max(decoder) != len(ranks) - 1):
        raise ValueError(f"token ids must be 0..{len(ranks) - 1}, found "
                         f"{min(decoder)}..{max(decoder)}")
    for byte in range(256):
        rank = ranks.get(bytes((byte,)))
        if rank is None or rank >= 256:
            where = "is missing" if rank is None else f"has id {rank}"
            raise ValueError(f"byte {byte} {where}: the 256 single bytes must be tokens "
                             "with ids 0..255")


def check_special_list(special_tokens: Iterable[str]) -> list[str]:
    """A list of distinct, non-empty special token strings, or ValueError naming the bad one."""
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a list of strings, not the single str "
                        f"{special_tokens!r}")
    result: list[str] = []
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special token {token!r} is not a non-empty string")
        if token in result:
            raise ValueError(f"special token {token!r} is given twice")
        result.append(token)
    return result


def check_special_tokens(special_tokens: dict[str, int], first_free_id: int) -> dict[str, int]:
    """Special token -> id,
    each a non-empty string with its own id at or after ``first_free_id``."""
    check_special_list(list(special_tokens))
    owner: dict[int, str] = {}
    for token, token_id in special_tokens.items():
        if not isinstance(token_id, int) or token_id < first_free_id:
            raise ValueError(
                f"special token {token!r} has id {token_id!r}; ids 0..{first_free_id - 1} are "
                "ordinary tokens"
            )
        if token_id in owner:
            raise ValueError(f"special tokens {owner[token_id]!r} and {token!r} both "
                             f"have id {token_id}")
        owner[token_id] = token
    return dict(special_tokens)


def special_splitter(allowed: Iterable[str]):
    """``split(text)`` -> [text, special, text, special, ..., text],
    longest special first on overlap."""
    alternatives = "|".join(re.escape(token) for token in sorted(allowed, key=len, reverse=True))
    return re.compile(f"({alternatives})").split


# --------------------------------------------------------------------------------- merges <-> ranks


def ranks_from_merges(merges: list[tuple[int, int]],
                      byte_order: list[int] | None = None) -> dict[bytes, int]:
    """Replay the merges: ``{token bytes: id}`` with the single bytes first, in ``byte_order``."""
    order = list(range(256)) if byte_order is None else list(byte_order)
    if sorted(order) != list(range(256)):
        raise ValueError("byte_order must list each byte 0..255 exactly once")
    vocab = [bytes((byte,)) for byte in order]
    ranks = {token: i for i, token in enumerate(vocab)}
    for i, pair in enumerate(merges):
        if len(pair) != 2 or not all(isinstance(t, int) and 0 <= t < len(vocab) for t in pair):
            raise ValueError(f"merge {i} is {pair!r}; it must join two ids from "
                             f"0..{len(vocab) - 1}")
        token = vocab[pair[0]] + vocab[pair[1]]
        if token in ranks:
            raise ValueError(f"merge {i} makes {escape_bytes(token)!r}, which is already token "
                             f"{ranks[token]}")
        ranks[token] = len(vocab)
        vocab.append(token)
    return ranks


def recover_merges(ranks: dict[bytes, int], decoder: dict[int, bytes], pair_ranks: dict) -> list:
    """Which two tokens made each token of rank >= 256? BPE on its bytes,
    only lower ranks allowed."""
    byte_ids = [ranks[bytes((byte,))] for byte in range(256)]
    merges = []
    for rank in range(256, len(ranks)):
        token = decoder[rank]
        parts = merge_short([byte_ids[byte] for byte in token], pair_ranks, limit=rank)
        if len(parts) != 2:  # BPE cannot reach it; any two lower-ranked halves will do
            halves = [(ranks.get(token[:cut], rank), ranks.get(token[cut:], rank))
                      for cut in range(1, len(token))]
            lower = [(left, right) for left, right in halves if left < rank and right < rank]
            if not lower:
                raise ValueError(f"token {rank} ({escape_bytes(token)!r}) is not two "
                                 "lower-ranked tokens joined")
            parts = lower[0]
        merges.append(tuple(parts))
    return merges


# ------------------------------------------------------------------------------------------- files


def save_json(tokenizer, path: str | os.PathLike) -> None:
    """Write ``tokenizer`` in the JSON format above."""
    vocab = [tokenizer.token_to_bytes(i) for i in range(256)]
    merges = tokenizer.merges
    lines = []
    for first, second in merges:
        lines.append([escape_bytes(vocab[first]), escape_bytes(vocab[second])])
        vocab.append(vocab[first] + vocab[second])
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "pattern": tokenizer.pattern,
        "special_tokens": tokenizer.special_tokens,
        "byte_order": tokenizer.byte_order,
        "num_merges": len(merges),
    }
    write_text_atomically(path, dump_json_lines(header, "merges", lines))


def load_json(cls, path: str | os.PathLike):
    """Read the JSON format above; ValueError naming the file if it is malformed."""
    data = read_tokenizer_json(path)
    check_format(data, path, FORMAT_NAME, FORMAT_VERSION)
    try:
        byte_order = data["byte_order"]
        if not isinstance(byte_order, list) or sorted(byte_order) != list(range(256)):
            raise ValueError("byte_order must list each byte 0..255 exactly once")
        ranks = {bytes((byte,)): i for i, byte in enumerate(byte_order)}
        merges = []
        for i, pair in enumerate(data["merges"]):
            if not isinstance(pair,
                              list) or len(pair) != 2 or not all(isinstance(s, str) for s in pair):
                raise ValueError(f"merge {i} is {pair!r}, expected two strings")
            ids = [ranks.get(unescape_bytes(s)) for s in pair]
            if None in ids:
                raise ValueError(f"merge {i} joins {pair[ids.index(None)]!r}, which is "
                                 "not a token yet")
            merges.append((ids[0], ids[1]))
            ranks[unescape_bytes(pair[0]) + unescape_bytes(pair[1])] = 256 + i
        if data.get("num_merges", len(merges)) != len(merges):
            raise ValueError(f"it promises {data['num_merges']} merges but holds {len(merges)}")
        return cls.from_merges(merges, data["pattern"], data["special_tokens"], byte_order)
    except KeyError as e:
        raise ValueError(f"tokenizer file '{path}' has no field {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"tokenizer file '{path}': {e}") from None


def read_tiktoken_file(path: str | os.PathLike) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a ``.tiktoken`` file;
    ValueError naming the file and line if malformed."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token_b64, rank = line.split()
                token = base64.b64decode(token_b64, validate=True)
                if token in ranks:
                    raise ValueError("token listed twice")
                ranks[token] = int(rank)
            except (ValueError, binascii.Error) as e:
                raise ValueError(
                    f"'{path}' line {line_number}: expected 'base64-token rank', got {line[:60]!r} "
                    f"({e})"
                ) from None
    return ranks


def write_tiktoken_file(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write ``{token bytes: rank}`` as a ``.tiktoken`` file, in rank order."""
    with open(path, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            f.write(base64.b64encode(token) + b" %d\n" % rank)
