"""The key/value cache:
what makes generating a token cost one position's work instead of the whole context's.

A causal transformer's keys and values at position t depend only on tokens 0 … t, so once computed
they never change. Generation therefore runs in two phases:

    prefill   the prompt (B, T) goes through the model once; every layer stores its keys and values
    decode    each new token (B, 1) goes through alone: its query attends over the stored keys and values
              plus its own, and its key and value are appended

Without a cache every new token recomputes all T positions: O(T) work per token (and O(T²)
attention) instead of O(1) matmul work plus an O(T) dot product with the cached keys.

Memory is allocated in blocks sized to the context used: per layer, keys and values of shape
(B, H_kv, S, D), H_kv the key/value heads (= H, or fewer with grouped-query attention, which is what
GQA is for: a cache G = H / H_kv times smaller). S starts at min(block_size, 256) and doubles (up to
block_size) when a prefill or step needs more, so a model with a 128k-token block_size that
generates 300 tokens holds 512 positions, not 128k. Appending writes into the next free slots (no
concatenation, no reallocation per token); attention reads the filled prefix ``[:, :, :length]`` as
a view. For GPT-2 small at B=1 and the full 1024 positions that is 2 · 12 layers · 1024 · 768 · 4
bytes = 75 MB.

With rotary positions (Llama) the keys are stored already rotated: a key's rotation depends only on
its own position, so it never changes either.

The cache knows nothing about padding or positions: every row of a batch has the same ``length``
(prompts are left-padded, see ``tinyllm.generate``), and the attention mask and position ids come
from the caller. Since a key carries its position inside it (added or rotated in before it was
cached), a row's keys can move to other columns without changing what they mean: ``append_rows``
lets new sequences join a running batch (left-padded to the common length) and
``select_rows(rows, start)`` can drop leading columns that every row has as padding. That is all
continuous batching (``tinyllm.serve``) needs.
"""

from __future__ import annotations

from . import backend


class LayerKV:
    """One attention layer's keys and values: preallocated (B, H, capacity, D) arrays, the first
    ``length`` positions filled."""

    def __init__(self, batch_size, n_head, capacity, head_size, dtype, limit=None):
        # the most positions it may grow to (block_size)
        self.limit = capacity if limit is None else limit
        shape = (batch_size, n_head, min(capacity, self.limit), head_size)
        self.keys = backend.xp.zeros(shape, dtype=dtype)     # (B, H, S, D)
        self.values = backend.xp.zeros(shape, dtype=dtype)   # (B, H, S, D)
        self.length = 0

    def _grow(self, needed: int) -> None:
        """Reallocate to max(2S, needed) positions (at most ``limit``),
        copying the filled prefix."""
        size = min(max(2 * self.capacity, needed), self.limit)
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = backend.xp.zeros(old.shape[:2] + (size,) + old.shape[3:], dtype=old.dtype)
            new[:, :, :self.length] = old[:, :, :self.length]
            setattr(self, name, new)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def append(self, k, v):
        """Store k, v (B, H, T, D) after the cached positions; return every key and value so far
        (views of shape (B, H, length + T, D))."""
        start, end = self.length, self.length + k.shape[2]
        if self.capacity < end <= self.limit:
            self._grow(end)
        if end > self.capacity:
            raise ValueError(
                f"KV cache is full: it holds {start} positions and {k.shape[2]} more do not fit in "
                f"its {self.limit} (the model's block_size); slide the window or reset the cache"
            )
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Keys and values of every layer of a GPT for a batch of sequences, all of the same ``length``.

    ``KVCache.for_model(model.config, batch_size)`` makes an empty one; ``model(idx, cache=cache)``
    fills it (each attention layer appends to ``cache.layers[i]``) and continues where it stopped.
    """

    def __init__(self, n_layer, batch_size, n_head, capacity, head_size, dtype=None, initial=None):
        """``capacity``: the most positions it holds; ``initial``: positions allocated at first
        (default all)."""
        dtype = backend.dtype if dtype is None else dtype
        first = capacity if initial is None else min(initial, capacity)
        self.layers = [LayerKV(batch_size, n_head, first, head_size, dtype, capacity)
                       for _ in range(n_layer)]
        # Keys and values that every row sees in front of its own, one (keys, values) pair per
        # layer, kept for the whole generation: a soft prompt's, computed at the prefill
        # (tinyllm.prompt_tuning). Not counted in ``length``: the cache's positions are the text's.
        self.prefixes = None

    @classmethod
    def for_model(cls, config, batch_size: int = 1, dtype=None) -> "KVCache":
        """An empty cache for a ``GPTConfig``: capacity = block_size (256 positions allocated at
        first, doubled as needed), and as many heads as the model has key/value heads
        (``n_kv_head``: fewer than ``n_head`` with grouped-query attention)."""
        n_kv_head = getattr(config, "n_kv_head", None) or config.n_head
        return cls(config.n_layer, batch_size, n_kv_head, config.block_size, config.head_size,
                   dtype, initial=256)

    @property
    def length(self) -> int:
        """How many positions are cached (the same for every layer between forward passes)."""
        return self.layers[0].length

    @property
    def capacity(self) -> int:
        """The most positions it can hold (block_size for ``for_model``)."""
        return self.layers[0].limit

    @property
    def allocated(self) -> int:
        """Positions allocated now (grows with the context used)."""
        return self.layers[0].capacity

    @property
    def batch_size(self) -> int:
        return self.layers[0].keys.shape[0]

    def reset(self) -> None:
        """Forget everything (the arrays are kept and overwritten by the next prefill)."""
        for layer in self.layers:
            layer.length = 0

    def select_rows(self, rows, start: int = 0) -> None:
        """Keep (and reorder, or repeat) rows of the batch: ``rows`` lists the old row of each new
        one. Used to drop finished sequences and, in beam search, to let each beam continue from its
        parent. ``start``: also drop the first ``start`` positions (padding that no kept row needs
        any more). Copies only the filled positions."""
        xp = backend.xp
        rows = xp.asarray(rows, dtype=xp.intp)
        for layer in self.layers:
            n = layer.length
            for name in ("keys", "values"):
                old = getattr(layer, name)
                new = xp.empty((len(rows),) + old.shape[1:], dtype=old.dtype)   # (B', H, S, D)
                new[:, :, :n - start] = old[rows, :, start:n]
                setattr(layer, name, new)
            layer.length = n - start

    def append_rows(self, other: "KVCache") -> None:
        """Add the rows of ``other`` below this cache's rows. The shorter of the two is left-padded
        to the longer's length, so the columns it gains are padding that the caller's attention mask
        must hide."""
        xp = backend.xp
        length = max(self.length, other.length)
        for mine, theirs in zip(self.layers, other.layers):
            for name in ("keys", "values"):
                top, bottom = getattr(mine, name), getattr(theirs, name)
                # (B + B', H, S, D)
                new = xp.zeros((len(top) + len(bottom),) + top.shape[1:], dtype=top.dtype)
                new[:len(top), :, length - mine.length:length] = top[:, :, :mine.length]
                new[len(top):, :, length - theirs.length:length] = bottom[:, :, :theirs.length]
                setattr(mine, name, new)
            mine.length = length
