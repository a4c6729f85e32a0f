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
"""

from __future__ import annotations

import math

from .. import backend
from ..autograd import Tensor


def attention_forward(q, k, v, causal=True, mask=None):
    """Raw-array forward. q (B, H, Tq, D), k and v (B, H, Tk, D); ``mask`` broadcastable to (B, H, Tq, Tk),
    True where attending is allowed. With ``causal``, query i sits at absolute position Tk - Tq + i (the
    keys before it may come from a KV cache) and sees keys 0 … Tk - Tq + i.

    Returns (y (B, H, Tq, D), probs (B, H, Tq, Tk), scaled queries (B, H, Tq, D)).
    """
    xp = backend.xp
    t_q, t_k = q.shape[-2], k.shape[-2]
    q_scaled = q * (1.0 / math.sqrt(q.shape[-1]))            # (B, H, Tq, D)
    scores = q_scaled @ k.swapaxes(-1, -2)                   # (B, H, Tq, Tk)
    if causal:
        future = xp.triu(xp.ones((t_q, t_k), dtype=bool), k=t_k - t_q + 1)
        scores += xp.where(future, -xp.inf, 0.0).astype(scores.dtype)
    if mask is not None:
        scores = xp.where(mask, scores, xp.asarray(-xp.inf, dtype=scores.dtype))
    # softmax over keys, in place
    row_max = scores.max(axis=-1, keepdims=True)
    if mask is not None:  # a query that may see no key at all (padding) gets all-zero probabilities
        row_max = xp.where(xp.isfinite(row_max), row_max, 0.0).astype(scores.dtype)
    scores -= row_max
    probs = xp.exp(scores, out=scores)
    row_sum = probs.sum(axis=-1, keepdims=True)
    if mask is not None:
        row_sum[row_sum == 0] = 1.0
    probs /= row_sum
    return probs @ v, probs, q_scaled                        # (B, H, Tq, D)


def attention_backward(dy, k, v, probs, q_scaled):
    """Raw-array backward of ``attention_forward``: returns dq, dk, dv (the derivation is in the module docstring)."""
    dv = probs.swapaxes(-1, -2) @ dy                          # (B, H, Tk, D)    dV = Pᵀ dY
    d_scores = dy @ v.swapaxes(-1, -2)                        # (B, H, Tq, Tk)   dP = dY Vᵀ
    d_scores -= backend.xp.einsum("...ij,...ij->...i", d_scores, probs)[..., None]  # rowsum(dP ⊙ P), no temporary
    d_scores *= probs                                         # dS = P ⊙ (dP - rowsum(dP ⊙ P))
    scale = 1.0 / math.sqrt(q_scaled.shape[-1])
    dq = d_scores @ k                                         # (B, H, Tq, D)    dQ = dS K / √D
    dq *= scale
    dk = d_scores.swapaxes(-1, -2) @ q_scaled                 # (B, H, Tk, D)    dK = dSᵀ Q / √D
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

    Shapes: q (B, H, Tq, D), k and v (B, H, Tk, D) → (B, H, Tq, D). ``mask``: boolean, broadcastable to
    (B, H, Tq, Tk), True where a query may attend to a key (e.g. a padding mask of shape (B, 1, 1, Tk)).
    """
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention expects q (B, H, Tq, D) and k, v (B, H, Tk, D) with matching B, H and D; "
            f"got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"causal attention needs at least as many keys as queries; got {q.shape[-2]} queries, {k.shape[-2]} keys")
    mask = _check_mask(mask, q.shape[:-1] + (k.shape[-2],))
    y, probs, q_scaled = attention_forward(q.data, k.data, v.data, causal, mask)

    def backward(dy):
        return attention_backward(dy, k.data, v.data, probs, q_scaled)

    return Tensor._make(y, (q, k, v), backward)


def self_attention(qkv: Tensor, n_head: int, causal: bool = True, mask=None) -> Tensor:
    """Multi-head self-attention on packed projections, with the head split and merge fused in.

    qkv (B, T, 3C) holds [queries | keys | values], each C = H·D wide, as produced by one linear layer.
    Returns (B, T, C): each head's output, heads side by side. Splitting and merging heads are views and
    one copy, so the graph has a single node and the backward writes dq, dk, dv straight into one (B, T, 3C)
    gradient.
    """
    batch, time, three_c = qkv.shape
    if three_c % 3 or (three_c // 3) % n_head:
        raise ValueError(f"self_attention: last axis {three_c} must be 3 × C with C divisible by n_head={n_head}")
    channels = three_c // 3
    head_size = channels // n_head
    mask = _check_mask(mask, (batch, n_head, time, time))
    heads = qkv.data.reshape(batch, time, 3, n_head, head_size)
    q, k, v = (heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # each (B, H, T, D), views
    y, probs, q_scaled = attention_forward(q, k, v, causal, mask)
    y = y.transpose(0, 2, 1, 3).reshape(batch, time, channels)          # (B, T, C)

    def backward(dy):
        dy = dy.reshape(batch, time, n_head, head_size).transpose(0, 2, 1, 3)  # (B, H, T, D)
        d_heads = backend.xp.empty((batch, time, 3, n_head, head_size), dtype=dy.dtype)
        for i, d in enumerate(attention_backward(dy, k, v, probs, q_scaled)):
            d_heads[:, :, i] = d.transpose(0, 2, 1, 3)
        return (d_heads.reshape(batch, time, three_c),)

    return Tensor._make(y, (qkv,), backward)
