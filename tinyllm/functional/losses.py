"""Softmax, log-softmax and the fused softmax + cross-entropy loss."""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Tensor, fused_op


def _softmax_array(x, axis):
    """softmax of a raw array, stable: exp(x - max) / Σ exp(x - max). Returns a new array."""
    xp = backend.xp
    p = x - x.max(axis=axis, keepdims=True)
    xp.exp(p, out=p)
    p /= p.sum(axis=axis, keepdims=True)
    return p


def _log_softmax_array(x, axis):
    """log-softmax of a raw array, stable: (x - max) - log Σ exp(x - max). Returns a new array."""
    xp = backend.xp
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_forward(x, axis):
    """p = exp(x) / Σ exp(x) along ``axis``."""
    p = _softmax_array(x, axis)
    return p, (p, axis)


def softmax_backward(dp, cache, needs=(True,)):
    """The Jacobian dp_i/dx_j = p_i (δ_ij - p_j), so dx = p · (dp - Σ_j dp_j p_j)."""
    p, axis = cache
    dx = dp - (dp * p).sum(axis=axis, keepdims=True)         # undoes p = exp(x) / Σ exp(x)
    dx *= p
    return (dx,)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """softmax along ``axis`` (``softmax_forward``); saves p."""
    p, cache = softmax_forward(x.data, axis)
    return fused_op(softmax_backward, p, cache, x)


def log_softmax_forward(x, axis):
    """y = x - log Σ exp(x) along ``axis``."""
    y = _log_softmax_array(x, axis)
    return y, (y, axis)


def log_softmax_backward(dy, cache, needs=(True,)):
    """dy_i/dx_j = δ_ij - p_j, so dx = dy - p · Σ dy, with p = exp(y) recomputed."""
    y, axis = cache
    # undoes y = x - log Σ exp(x)
    return (dy - backend.xp.exp(y) * dy.sum(axis=axis, keepdims=True),)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log-softmax along ``axis`` (``log_softmax_forward``); saves y."""
    y, cache = log_softmax_forward(x.data, axis)
    return fused_op(log_softmax_backward, y, cache, x)


def _count_valid_targets(t, vocab: int, ignore_index: int) -> int:
    """How many targets count (are not ``ignore_index``); a target outside [0, V) is an error.
    Targets from the host are checked there for free; device ones with one read of the device."""
    on_host = isinstance(t, np.ndarray)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= vocab))
    n_valid, n_bad = (valid.sum(), bad.sum()) if on_host else \
        backend.to_numpy(backend.xp.stack([valid.sum(), bad.sum()]))
    if n_bad:
        t = t if on_host else backend.to_numpy(t)
        position = int(np.argmax((t != ignore_index) & ((t < 0) | (t >= vocab))))
        raise ValueError(f"cross_entropy: target {int(t[position])} at position "
                         f"{position} is outside "
                         f"[0, {vocab}) (and is not ignore_index={ignore_index})")
    return int(n_valid)


def cross_entropy_forward(z, t, valid, n_valid: int, reduction: str):
    """Softmax, then the negative log-likelihood of the targets, fused. z (N, V) logits, t (N,)
    targets (any index where ``valid`` is False), n_valid = Σ valid. Per row n with target t:
        loss_n = log Σ_v exp(z_nv) - z_nt
    (computed with z shifted by its row max: no overflow)."""
    xp = backend.xp
    zmax = z.max(axis=1, keepdims=True)                      # (N, 1)
    exp_z = z - zmax                                         # (N, V), then exponentiated in place
    xp.exp(exp_z, out=exp_z)
    sum_exp = exp_z.sum(axis=1)                              # (N,)
    rows = xp.arange(len(z))
    losses = (xp.log(sum_exp) - (z[rows, t] - zmax[:, 0])) * valid   # (N,), 0 where ignored
    if reduction == "mean":
        out = losses.sum() / max(n_valid, 1)
    else:
        out = losses.sum() if reduction == "sum" else losses
    return out, (exp_z, sum_exp, t, valid, n_valid, reduction)


def cross_entropy_backward(dout, cache, needs=(True,)):
    """dloss_n/dz_n = p_n - onehot(t_n), with p_n = exp(z_n - max) / Σ exp, scaled by each row's
    share of dout: dout / N_valid for "mean", dout for "sum", dout_n for "none"; 0 on ignored
    rows."""
    exp_z, sum_exp, t, valid, n_valid, reduction = cache
    if reduction == "none":
        row_scale = dout * valid
    else:
        row_scale = valid * (dout / max(n_valid, 1) if reduction == "mean" else dout)
    row_scale = row_scale.astype(exp_z.dtype)                # (N,)
    # exp_z is not needed again: reuse its memory
    dz = exp_z
    dz *= (row_scale / sum_exp)[:, None]                     # p · scale
    dz[backend.xp.arange(len(dz)), t] -= row_scale           # - onehot(t) · scale
    return (dz,)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100,
                  reduction: str = "mean") -> Tensor:
    """The mean (or sum, or per-position) cross-entropy of ``logits`` (..., V) against ``targets``
    (...), integers in [0, V) or ``ignore_index`` (``cross_entropy_forward``). "mean" averages over
    the targets that are not ignored; when all are, it is 0 with a zero gradient. "none" gives 0
    where ignored. Saves exp(z - max) (the logits' size) and its row sums."""
    xp = backend.xp
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("cross_entropy: reduction must be 'mean', 'sum' or 'none', "
                         f"got {reduction!r}")
    targets = targets.data if isinstance(targets, Tensor) else targets
    targets = targets if hasattr(targets, "dtype") else np.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match "
                         "logits of shape "
                         f"{logits.shape} (expected {logits.shape[:-1]})")
    if targets.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    vocab = logits.shape[-1]
    n_valid = _count_valid_targets(targets.reshape(-1), vocab, ignore_index)
    t = xp.asarray(targets).reshape(-1)                      # (N,)
    valid = t != ignore_index
    out, cache = cross_entropy_forward(logits.data.reshape(-1, vocab), xp.where(valid, t, 0), valid,
                                       n_valid, reduction)
    out = out.reshape(targets.shape) if reduction == "none" else out
    return fused_op(_cross_entropy_backward_nd, xp.asarray(out, dtype=logits.dtype),
                    (cache, logits.shape), logits)


def _cross_entropy_backward_nd(dout, cache, needs=(True,)):
    flat_cache, logits_shape = cache
    (dz,) = cross_entropy_backward(dout.reshape(-1) if dout.ndim else dout, flat_cache, needs)
    return (dz.reshape(logits_shape),)
