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

The row sums need no (Tq, Tk) product: rowsum(dP ⊙ P)_i = Σ_j P_ij (dY_i · V_j) = dY_i · (Σ_j P_ij
V_j) = dY_i · Y_i, a dot product of two D-vectors (FlashAttention-2 computes it the same way).

Everything is batched over (B, H) with ``@``: no Python loop over batch, time or heads. The forward
saves P (B, H, Tq, Tk) and Y; Q, K and V are its inputs.

The file is built in layers around that one pair, ``attention_forward`` / ``attention_backward``:

1. ``attention_bias``: M from a causal rule and/or a boolean mask. Causal with Tk ≥ Tq puts query i
   at position Tk - Tq + i (the keys before the queries came from a KV cache) and lets it see keys 0
   … Tk - Tq + i.
2. ``grouped_query_attention_*``: grouped-query attention (GQA, Ainslie et al. 2023; Llama 3,
   Mistral) has H_kv < H key/value heads, query head h reading kv head h // G with G = H / H_kv
   (Hugging Face's ``repeat_kv`` order). Instead of repeating K and V G times, the G query heads of
   a group are stacked along the query axis, Q (B, H, Tq, D) → (B, H_kv, G·Tq, D), and the plain
   pair runs on that. Its backward then sums the G heads' gradients into their shared kv head by
   itself: dK = dSᵀ Q / √D contracts over all G·Tq rows, which is what the backward of a repeat
   would do.
3. ``blockwise_attention_*``: an optional causal shortcut. Queries in blocks of ``QUERY_BLOCK`` see
   only the keys up to their last position, so the all-masked upper triangle of S is never computed.
4. ``scaled_dot_product_attention`` and ``self_attention``: the Tensor wrappers (the second splits
   packed qkv projections into heads, rotates them with RoPE when asked, and merges the heads back).
"""

from __future__ import annotations

import math

from .. import backend
from ..autograd import Tensor, fused_op
from .prefix import mask_with_prefix, prepend_backward, prepend_forward
from .rope import apply_rotary

QUERY_BLOCK = 64   # queries per block in blockwise attention (see benchmarks/bench_ops.py)


# ---------------------------------------------------------------- the plain multi-head pair


def attention_forward(q, k, v, bias=None):
    """q (B, H, Tq, D), k and v (B, H, Tk, D); ``bias`` M broadcastable to (B, H, Tq, Tk) or None.
    Returns y (B, H, Tq, D) and the cache (q, k, v, P, y)."""
    S = q @ k.swapaxes(-1, -2)                              # (B, H, Tq, Tk)
    S *= 1.0 / math.sqrt(q.shape[-1])                       # S = Q Kᵀ / √D
    if bias is not None:
        S += bias                                           # S + M
    P = softmax_rows_(S)                                    # P = softmax(S + M), in S's memory
    y = P @ v                                               # Y = P V
    return y, (q, k, v, P, y)


def attention_backward(dy, cache, needs=None):
    """dq (B, H, Tq, D), dk, dv (B, H, Tk, D) from dy (B, H, Tq, D)."""
    q, k, v, P, y = cache
    dV = P.swapaxes(-1, -2) @ dy                            # undoes  Y = P V
    dP = dy @ v.swapaxes(-1, -2)                            # undoes  Y = P V
    row_sums = (dy * y).sum(axis=-1, keepdims=True)         # rowsum(dP ⊙ P) = rowsum(dY ⊙ Y)
    dS = P * (dP - row_sums)                                # undoes  P = softmax(S + M)
    scale = 1.0 / math.sqrt(q.shape[-1])
    dQ = (dS @ k) * scale                                   # undoes  S = Q Kᵀ / √D
    dK = (dS.swapaxes(-1, -2) @ q) * scale                  # undoes  S = Q Kᵀ / √D
    return dQ, dK, dV


def softmax_rows_(S):
    """softmax over the last axis, in place. A row that may see no key at all (all -∞, e.g. padding)
    gets all-zero probabilities instead of NaN."""
    xp = backend.xp
    row_max = S.max(axis=-1, keepdims=True)
    row_max = xp.where(xp.isfinite(row_max), row_max, 0.0).astype(S.dtype)
    S -= row_max
    xp.exp(S, out=S)
    row_sum = S.sum(axis=-1, keepdims=True)
    row_sum[row_sum == 0] = 1.0
    S /= row_sum
    return S


def attention_bias(t_q, t_k, causal, mask, dtype):
    """M: 0 where a query may attend to a key, -∞ where not, broadcastable to (B, H, Tq, Tk); None
    when every query sees every key. ``mask``: boolean, True = may attend. ``causal``: query i sits
    at position Tk - Tq + i and sees keys 0 … Tk - Tq + i."""
    xp = backend.xp
    allowed = mask
    if causal:
        seen = xp.tril(xp.ones((t_q, t_k), dtype=bool), k=t_k - t_q)   # (Tq, Tk)
        allowed = seen if mask is None else seen & mask
    if allowed is None:
        return None
    return xp.where(allowed, 0.0, -xp.inf).astype(dtype)


# ---------------------------------------------------------------- grouped-query attention


def grouped_query_attention_forward(q, k, v, bias=None):
    """q (B, H, Tq, D), k and v (B, H_kv, Tk, D) with H_kv dividing H → y (B, H, Tq, D), cache. The
    plain pair on the query heads of each group stacked along the query axis (a reshape, no copy of
    K or V)."""
    batch, n_head, t_q, head_size = q.shape
    n_kv_head = k.shape[1]
    if n_kv_head == n_head:
        return attention_forward(q, k, v, bias)
    group = n_head // n_kv_head
    q_grouped = q.reshape(batch, n_kv_head, group * t_q, head_size)         # (B, H_kv, G·Tq, D)
    y, cache = attention_forward(q_grouped, k, v, _group_bias(bias, n_kv_head, group, t_q))
    return y.reshape(batch, n_head, t_q, head_size), cache


def grouped_query_attention_backward(dy, cache, needs=None):
    """dq (B, H, Tq, D), dk, dv (B, H_kv, Tk, D) from dy (B, H, Tq, D)."""
    q_grouped = cache[0]
    dq, dk, dv = attention_backward(dy.reshape(q_grouped.shape), cache)      # undoes the stacking
    return dq.reshape(dy.shape), dk, dv


def _group_bias(bias, n_kv_head, group, t_q):
    """A bias broadcastable to (B, H, Tq, Tk) as one broadcastable to the stacked (B, H_kv,
    G·Tq, Tk)."""
    if bias is None:
        return None
    # (B or 1, H or 1, Tq or 1, Tk or 1)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    batch, heads, rows, keys = bias.shape
    # the same for every head and query
    if heads == 1 and rows == 1:
        return bias
    # one (Tq, Tk) pattern: G copies of it
    if heads == 1:
        return backend.xp.tile(bias, (1, 1, group, 1))
    full = backend.xp.broadcast_to(bias, (batch, heads, t_q, keys))
    return full.reshape(batch, n_kv_head, group * t_q, keys)


# ---------------------------------------------------------------- causal attention in query blocks


def query_blocks(t_q, t_k, block=QUERY_BLOCK):
    """(first query, end query, end key) of each block:
    queries a … b-1 see keys up to Tk - Tq + b - 1."""
    return [(a, min(a + block, t_q), t_k - t_q + min(a + block, t_q)) for a in range(0, t_q, block)]


def blockwise_attention_forward(q, k, v, mask=None, block=QUERY_BLOCK):
    """Causal ``grouped_query_attention_forward`` over blocks of ``block`` queries, each against
    only the keys it may see: over n blocks about (n - 1) / 2n of the scores are never computed (the
    causal-block skipping of FlashAttention, without the rest of it). Returns y (B, H, Tq, D) and a
    cache per block."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    y = backend.xp.empty(q.shape, dtype=q.dtype)            # (B, H, Tq, D)
    caches = []
    for a, b, key_end in query_blocks(t_q, t_k, block):
        bias = attention_bias(b - a, key_end, True, _mask_block(mask, a, b, key_end), q.dtype)
        y[:, :, a:b], cache = grouped_query_attention_forward(q[:, :, a:b], k[:, :, :key_end],
                                                              v[:, :, :key_end], bias)
        caches.append((a, b, key_end, cache))
    return y, caches


def _mask_block(mask, a, b, key_end):
    """Rows a … b-1 and keys 0 … key_end-1 of a mask broadcastable to (B, H, Tq, Tk)
    (broadcast axes stay 1)."""
    if mask is None:
        return None
    rows = slice(a, b) if mask.shape[-2] > 1 else slice(None)
    keys = slice(0, key_end) if mask.shape[-1] > 1 else slice(None)
    return mask[..., rows, keys]


def blockwise_attention_backward(dy, caches, needs=None):
    """Each block's backward; a key's gradient is the sum over the blocks that saw it."""
    dq = backend.xp.empty(dy.shape, dtype=dy.dtype)         # (B, H, Tq, D)
    dk = dv = None
    # the last block sees every key: it starts dk, dv
    for a, b, key_end, cache in reversed(caches):
        dq[:, :, a:b], dk_block, dv_block = grouped_query_attention_backward(dy[:, :, a:b], cache)
        if dk is None:
            dk, dv = dk_block, dv_block                     # (B, H_kv, Tk, D)
        else:
            dk[:, :, :key_end] += dk_block
            dv[:, :, :key_end] += dv_block
    return dq, dk, dv


def multi_head_attention_forward(q, k, v, causal, mask):
    """The forward the wrappers use: blockwise when it pays (causal, two blocks or more), else one
    block. Returns y and (backward function, its cache)."""
    if causal and q.shape[-2] >= 2 * QUERY_BLOCK:
        y, cache = blockwise_attention_forward(q, k, v, mask, QUERY_BLOCK)
        return y, (blockwise_attention_backward, cache)
    bias = attention_bias(q.shape[-2], k.shape[-2], causal, mask, q.dtype)
    y, cache = grouped_query_attention_forward(q, k, v, bias)
    return y, (grouped_query_attention_backward, cache)


def multi_head_attention_backward(dy, cache, needs=None):
    backward, inner = cache
    return backward(dy, inner)


# ---------------------------------------------------------------- Tensor wrappers


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True,
                                 mask=None) -> Tensor:
    """softmax(Q Kᵀ/√D + M) V for every batch element and head.

    Shapes: q (B, H, Tq, D), k and v (B, H_kv, Tk, D) → (B, H, Tq, D), where H_kv = H (multi-head)
    or divides H (grouped-query). ``mask``: boolean, broadcastable to (B, H, Tq, Tk), True where a
    query may attend to a key (e.g. a padding mask of shape (B, 1, 1, Tk)).
    """
    _check_shapes(q, k, v, causal)
    mask = _check_mask(mask, q.shape[:-1] + (k.shape[-2],))
    y, cache = multi_head_attention_forward(q.data, k.data, v.data, causal, mask)
    return fused_op(multi_head_attention_backward, y, cache, q, k, v)


def self_attention_forward(qkv, n_head, n_kv_head, causal=True, mask=None, rope=None, prefix_k=None,
                           prefix_v=None):
    """qkv (B, T, (H + 2 H_kv)·D) = [queries | keys | values] from one linear layer → y (B, T, H·D),
    cache. ``prefix_k``, ``prefix_v`` (H_kv, P, D): keys and values in front of every row's, which
    every query sees (prefix tuning: ``tinyllm.prompt_tuning``); the causal rule then puts query i
    at position P + i."""
    batch, time, _ = qkv.shape
    # views: (B, H, T, D), (B, H_kv, T, D) × 2
    q, k, v = split_qkv(qkv, n_head, n_kv_head)
    if rope is not None:
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)   # q, k = R q, R k
    front = None
    if prefix_k is not None:                                # k, v = [K_prefix ; k], [V_prefix ; v]
        (k, front), (v, _) = prepend_forward(prefix_k, k, 2), prepend_forward(prefix_v, v, 2)
        mask = mask_with_prefix(mask, prefix_k.shape[1])
    y, cache = multi_head_attention_forward(q, k, v, causal, mask)   # (B, H, T, D)
    y = y.transpose(0, 2, 1, 3).reshape(batch, time, -1)    # merge heads: (B, T, H·D)
    return y, (qkv.shape, n_head, n_kv_head, rope, cache, front)


def self_attention_backward(dy, cache, needs=(True, False, False)):
    """d qkv (B, T, (H + 2 H_kv)·D) from dy (B, T, H·D), written straight into one array; and the
    gradients of the key and value prefixes, if any (else None)."""
    (batch, time, width), n_head, n_kv_head, rope, attention_cache, front = cache
    head_size = width // (n_head + 2 * n_kv_head)
    dy = dy.reshape(batch, time, n_head, head_size).transpose(0, 2, 1, 3)    # undoes the merge
    dq, dk, dv = multi_head_attention_backward(dy, attention_cache)
    d_prefix_k = d_prefix_v = None
    # undoes  k, v = [K_prefix ; k], [V_prefix ; v]
    if front is not None:
        d_prefix_k, dk = prepend_backward(dk, front, (needs[1], True))
        d_prefix_v, dv = prepend_backward(dv, front, (needs[2], True))
    if rope is not None:                                    # undoes  q, k = R q, R k
        dq, dk = apply_rotary(dq, *rope, inverse=True), apply_rotary(dk, *rope, inverse=True)
    d_heads = backend.xp.empty((batch, time, n_head + 2 * n_kv_head, head_size), dtype=dy.dtype)
    d_heads[:, :, :n_head] = dq.transpose(0, 2, 1, 3)                         # undoes the split
    d_heads[:, :, n_head:n_head + n_kv_head] = dk.transpose(0, 2, 1, 3)
    d_heads[:, :, n_head + n_kv_head:] = dv.transpose(0, 2, 1, 3)
    return d_heads.reshape(batch, time, width), d_prefix_k, d_prefix_v


def self_attention(qkv: Tensor, n_head: int, causal: bool = True, mask=None,
                   n_kv_head: int | None = None, rope=None, prefix=None) -> Tensor:
    """Multi-head (or grouped-query) self-attention on packed projections: (B, T, (H + 2 H_kv)·D) →
    (B, T, H·D). For H_kv = H the input is GPT-2's (B, T, 3C). ``rope``: (cos, sin) from
    ``rope.rope_cos_sin`` to rotate q and k by their positions (Llama), or None (GPT-2). ``prefix``:
    (keys, values) Tensors (H_kv, P, D) in front of the text's, or None (see
    ``self_attention_forward``)."""
    n_kv_head = _check_packed_heads(qkv.shape[-1], n_head, n_kv_head)
    mask = _check_mask(mask, (qkv.shape[0], n_head, qkv.shape[1], qkv.shape[1]))
    prefix_k, prefix_v = (None, None) if prefix is None else prefix
    if prefix is not None:
        expected = (n_kv_head, prefix_k.shape[1], qkv.shape[-1] // (n_head + 2 * n_kv_head))
        if prefix_k.shape != expected or prefix_v.shape != expected:
            raise ValueError("self_attention: key/value prefixes must be (H_kv, P, D) = "
                             f"{expected}; got {prefix_k.shape} and {prefix_v.shape}")
    arrays = (None, None) if prefix is None else (prefix_k.data, prefix_v.data)
    y, cache = self_attention_forward(qkv.data, n_head, n_kv_head, causal, mask, rope, *arrays)
    return fused_op(self_attention_backward, y, cache, qkv, prefix_k, prefix_v)


def split_qkv(qkv, n_head: int, n_kv_head: int):
    """Views q (B, H, T, D), k and v (B, H_kv, T, D) of a packed (B, T, (H + 2 H_kv)·D)
    projection."""
    batch, time, width = qkv.shape
    heads = qkv.reshape(batch, time, n_head + 2 * n_kv_head, width // (n_head + 2 * n_kv_head))
    q = heads[:, :, :n_head].transpose(0, 2, 1, 3)
    k = heads[:, :, n_head:n_head + n_kv_head].transpose(0, 2, 1, 3)
    v = heads[:, :, n_head + n_kv_head:].transpose(0, 2, 1, 3)
    return q, k, v


# ---------------------------------------------------------------- input checks


def check_heads(n_head: int, n_kv_head: int | None) -> int:
    """n_kv_head (None = n_head), checked to divide n_head."""
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    if n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"n_head={n_head} must be divisible by n_kv_head={n_kv_head} "
                         "(each key/value head serves an equal group of query heads)")
    return n_kv_head


def _check_packed_heads(width, n_head, n_kv_head):
    if n_kv_head is None or n_kv_head == n_head:
        if width % 3 or (width // 3) % n_head:
            raise ValueError(f"self_attention: last axis {width} must be 3 × C with C divisible by "
                             f"n_head={n_head}")
        return n_head
    check_heads(n_head, n_kv_head)
    if width % (n_head + 2 * n_kv_head):
        raise ValueError(f"self_attention: last axis {width} must be (n_head + 2·n_kv_head) × "
                         "head size with "
                         f"n_head={n_head}, n_kv_head={n_kv_head}")
    return n_kv_head


def _check_shapes(q, k, v, causal):
    if (q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0]
            or q.shape[-1] != k.shape[-1]):
        raise ValueError("attention expects q (B, H, Tq, D) and k, v (B, H_kv, Tk, D) with "
                         "matching B and D; "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"attention: the {q.shape[1]} query heads must be a multiple of the "
                         f"{k.shape[1]} key/value heads (grouped-query attention); got q "
                         f"{q.shape}, k {k.shape}, v {v.shape}")
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError("causal attention needs at least as many keys as queries; got "
                         f"{q.shape[-2]} "
                         f"queries, {k.shape[-2]} keys")


def _check_mask(mask, expected):
    if mask is None:
        return None
    mask = backend.xp.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if mask.dtype != bool:
        raise ValueError("attention mask must be boolean (True = may attend), got "
                         f"dtype {mask.dtype}")
    # must broadcast *to* the scores' shape, not merely with it (a (4, 1, 1, T) mask for B=1 would
    # grow y)
    try:
        fits = backend.xp.broadcast_shapes(mask.shape, expected) == tuple(expected)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"attention mask of shape {mask.shape} does not broadcast to the "
                         "scores' shape "
                         f"{expected}")
    return mask
