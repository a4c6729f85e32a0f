"""From text files to batches of token ids for next-token prediction.

    text file(s) ──tokenizer──► one long array of ids ──split──► train | val
    train ──windows of context+1 tokens──► x = window[:-1], y = window[1:]   (y is x shifted by one)

Token arrays are NumPy uint16 (vocabularies up to 65,536) or uint32, cached as ``.npy`` files keyed
by a hash of the text and the tokenizer, so a second run on the same data skips tokenization.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..files import atomic_write_with


def read_text(path) -> str:
    """The text of a UTF-8 file, or of every ``.txt`` file under a directory (sorted,
    joined by blank lines)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"data directory '{path}' holds no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"no data file or directory at '{path}'")
    parts = []
    for file in files:
        raw = file.read_bytes()
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ValueError(f"data file '{file}' is not valid UTF-8: byte {e.start} (line {line}) "
                             f"is {raw[e.start:e.start + 1]!r}") from None
    text = "\n\n".join(parts)
    if not text.strip():
        raise ValueError(f"data '{path}' is empty")
    return text


def id_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def tokenize(text: str, tokenizer, cache_dir=None) -> np.ndarray:
    """Encode ``text`` into a 1-D id array,
    reusing ``cache_dir/tokens-<hash>.npy`` when it exists."""
    cache = None
    if cache_dir is not None:
        digest = hashlib.sha256(text.encode("utf-8"))
        digest.update(tokenizer_fingerprint(tokenizer).encode())
        cache = Path(cache_dir) / f"tokens-{digest.hexdigest()[:16]}.npy"
        if cache.exists():
            return np.load(cache, allow_pickle=False)
    ids = np.asarray(tokenizer.encode(text, allowed_special="all"),
                     dtype=id_dtype(tokenizer.vocab_size))
    if cache is not None:
        os.makedirs(cache.parent, exist_ok=True)
        atomic_write_with(cache, lambda f: np.save(f, ids, allow_pickle=False))
    return ids


def tokenizer_fingerprint(tokenizer) -> str:
    """A string that changes whenever the tokenizer would encode differently."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tok.json"
        tokenizer.save(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()


def split_train_val(ids: np.ndarray, val_fraction: float = 0.1):
    """The first (1 - val_fraction) of the ids for training, the rest for validation (no shuffling:
    text is sequential, and a held-out tail is what nanoGPT and "LLMs from scratch" use)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:]


def check_length(ids: np.ndarray, context: int, what: str) -> None:
    if len(ids) < context + 1:
        raise ValueError(
            f"{what} has {len(ids)} tokens; one training window needs {context + 1} "
            f"(context {context} + 1 target). Use more text or a smaller --context"
        )


def random_batch(ids: np.ndarray, batch_size: int, context: int, generator: np.random.Generator):
    """``batch_size`` windows at random offsets (nanoGPT's get_batch): x (B, T)
    and y = x shifted by one."""
    starts = generator.integers(0, len(ids) - context, size=batch_size)
    windows = np.stack([ids[s:s + context + 1] for s in starts]).astype(np.int64)   # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


class TokenWindows:
    """All windows of ``context`` inputs taken every ``stride`` tokens (Raschka's GPTDatasetV1).

    ``stride = context`` gives non-overlapping windows (every token predicted once — the right
    choice for evaluation); a smaller stride gives overlapping ones.
    """

    def __init__(self, ids: np.ndarray, context: int, stride: int | None = None):
        stride = context if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        check_length(ids, context, "the data")
        self.ids, self.context, self.stride = ids, context, stride
        self.starts = np.arange(0, len(ids) - context, stride)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        s = self.starts[i]
        window = self.ids[s:s + self.context + 1].astype(np.int64)
        return window[:-1], window[1:]

    def batches(self, batch_size: int, shuffle: bool = False, generator=None, limit=None):
        """Yield (x (B, T), y (B, T)) batches in order, or shuffled with ``generator``;
        at most ``limit``."""
        order = generator.permutation(len(self)) if shuffle else np.arange(len(self))
        count = 0
        for first in range(0, len(order), batch_size):
            if limit is not None and count >= limit:
                return
            pairs = [self[i] for i in order[first:first + batch_size]]
            yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            count += 1
