"""Softmax, log-softmax and the fused softmax + cross-entropy loss."""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Tensor


CHUNK_ELEMENTS = 1 << 18   # cross_entropy's exp runs over row chunks of about this many values (1 MB of float32)


def _softmax_array(x, axis):
    """softmax of a raw array, stable: exp(x - max) / Σ exp(x - max). Returns a new array."""
    xp = backend.xp
    p = x - x.max(axis=axis, keepdims=True)
    xp.exp(p, out=p)
    p /= p.sum(axis=axis, keepdims=True)
    return p


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """p = exp(x) / Σ exp(x) along ``axis``.

    Jacobian dp_i/dx_j = p_i (δ_ij - p_j), so dx = p · (dp - Σ_j dp_j p_j). Saves p.
    """
    p = _softmax_array(x.data, axis)

    def backward(dp):
        dx = dp - (dp * p).sum(axis=axis, keepdims=True)
        dx *= p
        return (dx,)

    return Tensor._make(p, (x,), backward)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """y = x - log Σ exp(x) along ``axis``.

    dy_i/dx_j = δ_ij - p_j, so dx = dy - p · Σ dy. Saves y (p = exp y is recomputed in the backward).
    """
    xp = backend.xp
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(dy):
        return (dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True),)

    return Tensor._make(y, (x,), backward)


def _count_valid_targets(t, vocab: int, ignore_index: int) -> int:
    """How many targets count (are not ``ignore_index``); a target outside [0, V) is an error. Targets from
    the host are checked there for free; device ones with one read of the device."""
    on_host = isinstance(t, np.ndarray)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= vocab))
    n_valid, n_bad = (valid.sum(), bad.sum()) if on_host else \
        backend.to_numpy(backend.xp.stack([valid.sum(), bad.sum()]))
    if n_bad:
        t = t if on_host else backend.to_numpy(t)
        position = int(np.argmax((t != ignore_index) & ((t < 0) | (t >= vocab))))
        raise ValueError(f"cross_entropy: target {int(t[position])} at position {position} is outside "
                         f"[0, {vocab}) (and is not ignore_index={ignore_index})")
    return int(n_valid)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Softmax followed by the negative log-likelihood of the targets, fused.

    Shapes: logits (..., V), targets (...) integers in [0, V) or ``ignore_index``.
    Per position n with target t:  loss_n = log Σ_v exp(z_nv) - z_nt,  and  dloss_n/dz_n = p_n - onehot(t).
    reduction="mean" averages over the non-ignored positions (so dz = (p - onehot) / N_valid on those rows and
    0 on ignored rows); "sum" adds them; "none" returns the per-position losses (0 where ignored).
    If every target is ignored, "mean" returns 0 with a zero gradient (nothing to learn from the batch).
    Saves exp(z - max) (the logits' size) and its row sums, and turns them into the gradient in place.
    """
    xp = backend.xp
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    targets = targets.data if isinstance(targets, Tensor) else targets
    targets = targets if hasattr(targets, "dtype") else np.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match logits of shape {logits.shape} (expected {logits.shape[:-1]})")
    if targets.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    vocab = logits.shape[-1]
    z = logits.data.reshape(-1, vocab)                        # (N, V)
    n_valid = _count_valid_targets(targets.reshape(-1), vocab, ignore_index)
    t = xp.asarray(targets).reshape(-1)                       # (N,)
    valid = t != ignore_index
    rows = xp.arange(t.size)
    safe_t = xp.where(valid, t, 0)

    # log Σ exp(z), computed stably by shifting each row by its max. The exponentials are kept
    # unnormalised: the backward divides by their sum in the same pass that scales the rows.
    exp_z = xp.empty_like(z)                                  # (N, V)
    zmax = xp.empty((z.shape[0], 1), dtype=z.dtype)           # (N, 1)
    sum_exp = xp.empty(z.shape[0], dtype=z.dtype)             # (N,)

    chunk_rows = max(1, CHUNK_ELEMENTS // vocab) if backend.device == "cpu" else len(z)

    def forward_block(z, zmax, exp_z, sum_exp):
        z.max(axis=1, keepdims=True, out=zmax)
        # exp(z - max) a few rows at a time, the difference in a small buffer that stays in cache: over
        # the whole (N, V) array, a separate subtract pass and an in-place exp took 1.5x as long.
        for i in range(0, len(z), chunk_rows):
            chunk = slice(i, i + chunk_rows)
            xp.exp(z[chunk] - zmax[chunk], out=exp_z[chunk])
        exp_z.sum(axis=1, out=sum_exp)

    backend.parallel_rows(forward_block, z, zmax, exp_z, sum_exp)
    target_logit = z[rows, safe_t] - zmax[:, 0]               # (N,)  z_t - max
    losses = xp.log(sum_exp) - target_logit                   # (N,)
    losses *= valid

    if reduction == "mean":
        out = losses.sum() / max(n_valid, 1)
    elif reduction == "sum":
        out = losses.sum()
    else:
        out = losses.reshape(targets.shape)

    def backward(dloss):
        # dz = (p - onehot(t)) · dloss_n, with dloss_n = 0 on ignored rows.
        if reduction == "none":
            row_scale = dloss.reshape(-1) * valid
        else:
            scale = dloss / max(n_valid, 1) if reduction == "mean" else dloss
            row_scale = valid * scale
        row_scale = row_scale.astype(exp_z.dtype)
        dz = exp_z                                            # p · scale = exp_z · (scale / Σ exp), in place
        backend.parallel_rows(xp.multiply, dz, (row_scale / sum_exp)[:, None], dz)
        dz[rows, safe_t] -= row_scale                         # - onehot(t) · scale
        return (dz.reshape(logits.shape),)

    return Tensor._make(xp.asarray(out, dtype=logits.dtype), (logits,), backward)
