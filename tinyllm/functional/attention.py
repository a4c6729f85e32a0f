"""Multi-head scaled dot-product attention, with a hand-written backward.

For one head with queries Q (Tq, D), keys K (Tk, D) and values V (Tk, D):

    S = Q Kᵀ / √D            (Tq, Tk)   scores
    P = softmax(S + M)        (Tq, Tk)   M is 0 where a query may look at a key and -∞ where it may not
    Y = P V                   (Tq, D)

The backward runs those lines in reverse (like llm.c's attention_backward):

    dV = Pᵀ dY                           undoes  Y = P V
    dP = dY Vᵀ                           undoes  Y = P V
    dS = P ⊙ (dP - rowsum(dP ⊙ P))       undoes  P = softmax(S + M)   (masked entries have P = 0, so dS = 0)
    dQ = dS K / √D,   dK = dSᵀ Q / √D    undo    S = Q Kᵀ / √D

Everything is batched over (B, H) with ``@``: no Python loop over batch, time or heads. The forward saves the
attention probabilities P (B, H, Tq, Tk) and the scaled queries (Q's size); K and V are the inputs.

Grouped-query attention (GQA, Ainslie et al. 2023; Llama 2 70B, Llama 3, Mistral): there are fewer key/value
heads than query heads, H_kv dividing H, and query head h reads key/value head h // G with G = H / H_kv (the
Hugging Face ``repeat_kv`` order: kv head j serves query heads jG … jG + G - 1). The KV cache shrinks by G.
Instead of repeating K and V G times, the G query heads of a group are stacked along the query axis:

    Q (B, H, Tq, D) ─reshape (a view)─► (B, H_kv, G·Tq, D);   S = Q Kᵀ/√D is then (B, H_kv, G·Tq, Tk)

one matmul per kv head, with K and V never copied. The backward needs no extra step either: dK = dSᵀ Q and
dV = Pᵀ dY contract over the G·Tq stacked rows, which *is* the sum of the G query heads' gradients into the
shared kv head (what the backward of a repeat would do). Masks and the causal offset act on a 5-D view
(B, H_kv, G, Tq, Tk) of the same scores. With H_kv = H (G = 1) every reshape is the identity: plain
multi-head attention.

Rotary position embeddings (``rope.py``) are applied to q and k inside ``self_attention`` (and undone on dq,
dk in its backward), so a Llama-style layer is still one graph node.
"""

from __future__ import annotations

import math

from .. import backend
from ..autograd import Tensor
from .rope import apply_rotary


def _group_mask(mask, n_kv_head, group):
    """A boolean mask broadcastable to (B, H, Tq, Tk) as a 5-D mask broadcastable to (B, H_kv, G, Tq, Tk)."""
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.reshape(mask.shape[0], n_kv_head, group, *mask.shape[2:])


def attention_forward(q, k, v, causal=True, mask=None):
    """Raw-array forward. q (B, H, Tq, D), k and v (B, H_kv, Tk, D) with H_kv dividing H (grouped-query
    attention when H_kv < H); ``mask`` broadcastable to (B, H, Tq, Tk), True where attending is allowed. With
    ``causal``, query i sits at absolute position Tk - Tq + i (the keys before it may come from a KV cache)
    and sees keys 0 … Tk - Tq + i.

    Returns (y (B, H, Tq, D), probs (B, H_kv, G·Tq, Tk), scaled queries (B, H_kv, G·Tq, D)) — for G = 1
    simply (B, H, Tq, Tk) and (B, H, Tq, D).
    """
    xp = backend.xp
    batch, n_head, t_q, head_size = q.shape
    n_kv_head, t_k = k.shape[1], k.shape[-2]
    group = n_head // n_kv_head
    q_scaled = xp.empty(q.shape, dtype=q.dtype)              # (B, H, Tq, D), C-ordered so the reshape is a view
    xp.multiply(q, 1.0 / math.sqrt(head_size), out=q_scaled)
    q_scaled = q_scaled.reshape(batch, n_kv_head, group * t_q, head_size)   # (B, H_kv, G·Tq, D)
    scores = q_scaled @ k.swapaxes(-1, -2)                   # (B, H_kv, G·Tq, Tk)
    grouped = scores.reshape(batch, n_kv_head, group, t_q, t_k)              # a view: per query head and time
    if causal:
        future = xp.triu(xp.ones((t_q, t_k), dtype=bool), k=t_k - t_q + 1)
        causal_bias = xp.where(future, -xp.inf, 0.0).astype(scores.dtype)   # (Tq, Tk): 0, or -∞ in the future
    if mask is not None:
        grouped = xp.where(_group_mask(mask, n_kv_head, group), grouped, xp.asarray(-xp.inf, dtype=scores.dtype))

    def softmax_in_place(s):
        """Softmax over keys, in place (B, H_kv, G, Tq, Tk)."""
        if causal:
            s += causal_bias
        row_max = s.max(axis=-1, keepdims=True)
        if mask is not None:  # a query that may see no key at all (padding) gets all-zero probabilities
            row_max = xp.where(xp.isfinite(row_max), row_max, 0.0).astype(s.dtype)
        s -= row_max
        xp.exp(s, out=s)
        row_sum = s.sum(axis=-1, keepdims=True)
        if mask is not None:
            row_sum[row_sum == 0] = 1.0
        s /= row_sum

    softmax_in_place(grouped)
    probs = grouped.reshape(batch, n_kv_head, group * t_q, t_k)
    y = probs @ v                                            # (B, H_kv, G·Tq, D)
    return y.reshape(batch, n_head, t_q, head_size), probs, q_scaled


def attention_backward(dy, k, v, probs, q_scaled):
    """Raw-array backward of ``attention_forward``: returns dq (B, H, Tq, D), dk, dv (B, H_kv, Tk, D) (the
    derivation is in the module docstring; for G > 1 the matmuls with Pᵀ and dSᵀ sum over each group)."""
    batch, n_kv_head, rows, head_size = q_scaled.shape
    dy_grouped = dy.reshape(batch, n_kv_head, rows, head_size)   # (B, H_kv, G·Tq, D)
    dV = probs.swapaxes(-1, -2) @ dy_grouped                  # (B, H_kv, Tk, D)    undoes Y = P V
    dP = dy_grouped @ v.swapaxes(-1, -2)                      # (B, H_kv, G·Tq, Tk)
    dS = probs * (dP - (dP * probs).sum(axis=-1, keepdims=True))   # undoes P = softmax(S), row by row
    dQ = (dS @ k) / math.sqrt(head_size)                      # (B, H_kv, G·Tq, D)  undoes S = Q Kᵀ / √D
    dK = dS.swapaxes(-1, -2) @ q_scaled                       # (B, H_kv, Tk, D)    (Q/√D saved: dK = dSᵀ Q/√D)
    return dQ.reshape(dy.shape), dK, dV


# ------------------------------------------------------------------ causal attention in query blocks

QUERY_BLOCK = 64   # queries per block in blockwise_attention_forward (fastest at T=256 on 2 cores: 64 > 32, 128, 256)


def _query_blocks(t_q, t_k, causal):
    """(first query, end query, end key) of each block: with a causal mask, queries a … b-1 see keys up to
    t_k - t_q + b - 1 only, so the keys after that (all masked) are left out of the block's products."""
    if not causal or t_q < 2 * QUERY_BLOCK:
        return [(0, t_q, t_k)]
    return [(a, min(a + QUERY_BLOCK, t_q), t_k - t_q + min(a + QUERY_BLOCK, t_q)) for a in range(0, t_q, QUERY_BLOCK)]


def _mask_block(mask, a, b, key_end):
    """Rows a … b-1 and keys 0 … key_end-1 of a mask broadcastable to (B, H, Tq, Tk) (broadcast axes stay 1)."""
    if mask is None:
        return None
    rows = slice(a, b) if mask.shape[-2] > 1 else slice(None)
    keys = slice(0, key_end) if mask.shape[-1] > 1 else slice(None)
    return mask[..., rows, keys]


def blockwise_attention_forward(q, k, v, causal=True, mask=None):
    """``attention_forward`` over blocks of QUERY_BLOCK queries, each against only the keys it may see.

    With a causal mask the upper-right triangle of the (Tq, Tk) scores is all -∞: their products, exponentials
    and gradients are wasted work. Block i of queries needs keys 0 … (its last position) only, so over
    n blocks about (n - 1) / 2n of the scores are never computed (37.5% at T = 256, blocks of 64): the
    causal-block skipping of FlashAttention, without the rest of it. Each block is an ordinary call of
    ``attention_forward`` (its causal offset puts the block's queries at their true positions).
    Returns y (B, H, Tq, D) and what the backward needs: per block (a, b, key_end, probs, scaled queries).
    """
    blocks = _query_blocks(q.shape[-2], k.shape[-2], causal)
    if len(blocks) == 1:
        y, probs, q_scaled = attention_forward(q, k, v, causal, mask)
        return y, [(0, q.shape[-2], k.shape[-2], probs, q_scaled)]
    y = backend.xp.empty(q.shape, dtype=q.dtype)              # (B, H, Tq, D)
    saved = []
    for a, b, key_end in blocks:
        y[:, :, a:b], probs, q_scaled = attention_forward(q[:, :, a:b], k[:, :, :key_end], v[:, :, :key_end], causal,
                                                          _mask_block(mask, a, b, key_end))
        saved.append((a, b, key_end, probs, q_scaled))
    return y, saved


def blockwise_attention_backward(dy, k, v, saved):
    """Backward of ``blockwise_attention_forward``: each block's ``attention_backward``; a key's gradient
    is the sum over the blocks that saw it."""
    if len(saved) == 1:
        return attention_backward(dy, k, v, *saved[0][3:])
    dq = backend.xp.empty(dy.shape, dtype=dy.dtype)           # (B, H, Tq, D)
    dk = dv = None
    for a, b, key_end, probs, q_scaled in reversed(saved):    # the last block sees every key: it starts dk, dv
        dq[:, :, a:b], dk_block, dv_block = attention_backward(dy[:, :, a:b], k[:, :, :key_end], v[:, :, :key_end],
                                                               probs, q_scaled)
        if dk is None:                                        # (B, H_kv, Tk, D)
            dk, dv = dk_block, dv_block
        else:
            dk[:, :, :key_end] += dk_block
            dv[:, :, :key_end] += dv_block
    return dq, dk, dv


def _check_mask(mask, expected):
    if mask is None:
        return None
    mask = backend.xp.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if mask.dtype != bool:
        raise ValueError(f"attention mask must be boolean (True = may attend), got dtype {mask.dtype}")
    try:  # must broadcast *to* the scores' shape, not merely with it (a (4, 1, 1, T) mask for B=1 would grow y)
        fits = backend.xp.broadcast_shapes(mask.shape, expected) == tuple(expected)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"attention mask of shape {mask.shape} does not broadcast to the scores' shape {expected}")
    return mask


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask=None) -> Tensor:
    """softmax(Q Kᵀ/√D + M) V for every batch element and head.

    Shapes: q (B, H, Tq, D), k and v (B, H_kv, Tk, D) → (B, H, Tq, D), where H_kv = H (multi-head) or divides
    H (grouped-query: query head h uses kv head h // (H / H_kv)). ``mask``: boolean, broadcastable to
    (B, H, Tq, Tk), True where a query may attend to a key (e.g. a padding mask of shape (B, 1, 1, Tk)).
    """
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention expects q (B, H, Tq, D) and k, v (B, H_kv, Tk, D) with matching B and D; "
            f"got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"attention: the {q.shape[1]} query heads must be a multiple of the {k.shape[1]} key/value "
                         f"heads (grouped-query attention); got q {q.shape}, k {k.shape}, v {v.shape}")
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"causal attention needs at least as many keys as queries; got {q.shape[-2]} queries, {k.shape[-2]} keys")
    mask = _check_mask(mask, q.shape[:-1] + (k.shape[-2],))
    y, saved = blockwise_attention_forward(q.data, k.data, v.data, causal, mask)

    def backward(dy):
        return blockwise_attention_backward(dy, k.data, v.data, saved)

    return Tensor._make(y, (q, k, v), backward)


def check_heads(n_head: int, n_kv_head: int | None) -> int:
    """n_kv_head (None = n_head), checked to divide n_head."""
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    if n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"n_head={n_head} must be divisible by n_kv_head={n_kv_head} "
                         "(each key/value head serves an equal group of query heads)")
    return n_kv_head


def split_qkv(qkv, n_head: int, n_kv_head: int):
    """Views q (B, H, T, D), k and v (B, H_kv, T, D) of a packed (B, T, (H + 2 H_kv)·D) projection."""
    batch, time, width = qkv.shape
    heads = qkv.reshape(batch, time, n_head + 2 * n_kv_head, width // (n_head + 2 * n_kv_head))
    q = heads[:, :, :n_head].transpose(0, 2, 1, 3)
    k = heads[:, :, n_head:n_head + n_kv_head].transpose(0, 2, 1, 3)
    v = heads[:, :, n_head + n_kv_head:].transpose(0, 2, 1, 3)
    return q, k, v


def self_attention(qkv: Tensor, n_head: int, causal: bool = True, mask=None, n_kv_head: int | None = None,
                   rope=None) -> Tensor:
    """Multi-head (or grouped-query) self-attention on packed projections, head split/merge and RoPE fused in.

    qkv (B, T, (H + 2 H_kv)·D) holds [queries | keys | values]: H query heads, then H_kv key heads and H_kv
    value heads, each D wide, as produced by one linear layer (for H_kv = H that is GPT-2's (B, T, 3C)).
    ``rope``: (cos, sin) from ``rope.rope_cos_sin(positions, D, theta)`` to rotate q and k by their positions
    (Llama), or None (GPT-2: positions were added to the input). Returns (B, T, C) with C = H·D: each head's
    output, heads side by side. Splitting and merging heads are views and one copy, so the graph has a single
    node and the backward writes dq, dk, dv straight into one gradient of qkv's shape; with RoPE the backward
    first rotates dq and dk back (the inverse rotation, see ``rope.py``).
    Saves the probabilities and the scaled queries (as ``blockwise_attention_forward``), plus the rotated keys
    with RoPE.
    """
    batch, time, width = qkv.shape
    if n_kv_head is None or n_kv_head == n_head:
        if width % 3 or (width // 3) % n_head:
            raise ValueError(f"self_attention: last axis {width} must be 3 × C with C divisible by n_head={n_head}")
        n_kv_head = n_head
    else:
        check_heads(n_head, n_kv_head)
        if width % (n_head + 2 * n_kv_head):
            raise ValueError(f"self_attention: last axis {width} must be (n_head + 2·n_kv_head) × head size with "
                             f"n_head={n_head}, n_kv_head={n_kv_head}")
    head_size = width // (n_head + 2 * n_kv_head)
    mask = _check_mask(mask, (batch, n_head, time, time))
    q, k, v = split_qkv(qkv.data, n_head, n_kv_head)       # views: (B, H, T, D), (B, H_kv, T, D) × 2
    cos, sin = rope if rope is not None else (None, None)
    if rope is not None:
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y, saved = blockwise_attention_forward(q, k, v, causal, mask)
    y = y.transpose(0, 2, 1, 3).reshape(batch, time, n_head * head_size)   # (B, T, C)

    def backward(dy):
        dy = dy.reshape(batch, time, n_head, head_size).transpose(0, 2, 1, 3)  # (B, H, T, D)
        dq, dk, dv = blockwise_attention_backward(dy, k, v, saved)
        if rope is not None:                                 # undo  q, k = R q, R k
            dq, dk = apply_rotary(dq, cos, sin, inverse=True), apply_rotary(dk, cos, sin, inverse=True)
        d_heads = backend.xp.empty((batch, time, n_head + 2 * n_kv_head, head_size), dtype=dy.dtype)
        d_heads[:, :, :n_head] = dq.transpose(0, 2, 1, 3)
        d_heads[:, :, n_head:n_head + n_kv_head] = dk.transpose(0, 2, 1, 3)
        d_heads[:, :, n_head + n_kv_head:] = dv.transpose(0, 2, 1, 3)
        return (d_heads.reshape(batch, time, width),)

    return Tensor._make(y, (qkv,), backward)
