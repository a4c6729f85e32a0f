"""The same learned rows in front of every sequence of a batch: the op behind soft prompts and
key/value prefixes.

    prefix (P, C)        x (B, T, C)                      out (B, P + T, C)
    ┌──────┐             ┌──────────┐                     ┌──────┬──────────┐
    │  p   │    and      │   x[b]   │     ──prepend──►    │  p   │   x[b]   │   for every row b
    └──────┘             └──────────┘                     └──────┴──────────┘

A soft prompt (``tinyllm.prompt_tuning``) is a (P, C) prefix of the token embeddings (B, T, C) along
time; a layer's key prefix is an (H, P, D) prefix of the keys (B, H, T, D) along axis 2. The
attention mask that came with the text must then let every query see the P new keys
(``mask_with_prefix``).
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, fused_op


def prepend_forward(prefix, x, axis: int):
    """out[b] = [prefix ; x[b]] along ``axis`` of x (axis ≥ 1: axis 0 is the batch): prefix has x's
    shape without the batch axis, except P ≥ 0 along ``axis`` where x has T."""
    xp = backend.xp
    n_prefix = prefix.shape[axis - 1]
    shape = list(x.shape)
    shape[axis] += n_prefix
    out = xp.empty(shape, dtype=x.dtype)
    front = (slice(None),) * axis + (slice(0, n_prefix),)
    back = (slice(None),) * axis + (slice(n_prefix, None),)
    out[front] = prefix                                      # broadcast over the batch
    out[back] = x
    return out, (front, back)


def prepend_backward(dout, cache, needs=(True, True)):
    """Each input's gradient is its part of dout; the prefix was copied into every row, so its
    gradient is the sum over the batch."""
    front, back = cache
    # undoes out[front] = prefix (broadcast over B)
    dprefix = dout[front].sum(axis=0) if needs[0] else None
    dx = dout[back] if needs[1] else None                     # undoes out[back] = x
    return dprefix, dx


def prepend(prefix: Tensor, x: Tensor, axis: int = 1) -> Tensor:
    """``prefix`` in front of every row of ``x`` along ``axis`` (see ``prepend_forward``). Saves
    nothing."""
    if not 1 <= axis < x.ndim or prefix.ndim != x.ndim - 1:
        raise ValueError("prepend: the prefix must have x's shape without its batch axis, and axis "
                         f"must be one of x's other axes; got prefix {prefix.shape}, x {x.shape}, "
                         f"axis {axis}")
    expected = x.shape[1:axis] + (prefix.shape[axis - 1],) + x.shape[axis + 1:]
    if prefix.shape != expected:
        raise ValueError(f"prepend: a prefix of shape {prefix.shape} does not fit x of shape "
                         f"{x.shape} along axis {axis} (expected {expected} with any length in "
                         f"place of {prefix.shape[axis - 1]})")
    out, cache = prepend_forward(prefix.data, x.data, axis)
    return fused_op(prepend_backward, out, cache, prefix, x)


def mask_with_prefix(mask, n_keys: int, n_queries: int = 0):
    """An attention mask (..., Tq, Tk) for n_keys more keys in front (and n_queries more queries,
    when the mask has a query axis): every query may see the new keys, and the new queries see every
    key (a causal mask still hides the future). A mask of None stays None."""
    if mask is None:
        return None
    xp = backend.xp
    mask = mask.data if isinstance(mask, Tensor) else mask
    mask = mask.reshape((1,) * (2 - mask.ndim) + mask.shape)  # at least (Tq, Tk)
    *lead, t_q, t_k = mask.shape
    t_q_new = t_q + n_queries if t_q > 1 else 1
    out = xp.ones((*lead, t_q_new, n_keys + t_k), dtype=bool)
    out[..., t_q_new - t_q:, n_keys:] = mask
    return out
