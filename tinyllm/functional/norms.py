"""Normalisation layers: layer norm (GPT-2) and RMS norm (Llama),
each a forward/backward pair on arrays."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, fused_op


def layer_norm_forward(x, w, b, eps):
    """Normalise the last axis (C channels) to mean 0 and variance 1, then scale and shift. x
    (..., C)."""
    xp = backend.xp
    centred = x - x.mean(axis=-1, keepdims=True)             # x - μ         (..., C)
    var = (centred * centred).mean(axis=-1, keepdims=True)   # σ²            (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)                          # r = 1/√(σ²+ε) (..., 1)
    x_hat = centred * rstd                                   # x̂ = (x-μ) r   (..., C)
    y = x_hat if w is None else x_hat * w                    # y = x̂ w + b
    if b is not None:
        y = y + b
    return y, (x_hat, rstd, w)


def layer_norm_backward(dy, cache, needs=(True, True, True)):
    """With g = dy · w:   dx = r · (g - mean(g) - x̂ · mean(g · x̂))
    from dx̂/dx = r (I - 1/C - x̂ x̂ᵀ/C): subtracting mean(g) removes μ's direction (the all-ones
    one), and x̂ · mean(g x̂) removes σ's (along x̂). dw and db sum over every axis but the last."""
    x_hat, rstd, w = cache
    channels = x_hat.shape[-1]
    dx = None
    if needs[0]:
        g = dy if w is None else dy * w                      # undoes y = x̂ w
        dx = rstd * (g - g.mean(axis=-1, keepdims=True)      # undoes x̂ = (x - μ) r
                     - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
    dy2d, x_hat2d = dy.reshape(-1, channels), x_hat.reshape(-1, channels)
    dw = (dy2d * x_hat2d).sum(axis=0) if needs[1] else None  # undoes y = x̂ w:  dw = Σ dy x̂
    db = dy2d.sum(axis=0) if needs[2] else None              # undoes y += b:   db = Σ dy
    return dx, dw, db


# Fast path: the pair above with each row sum an einsum (which reads a row once and makes no
# (..., C) temporary, where .mean(axis=-1) of a product makes one) and x̂, g built in place. Tested
# equal to the plain pair (tests/test_fast_paths.py); what it saves on a whole training step:
# benchmarks/bench_fast_paths.py.

def _row_sums(a, b=None):
    """Σ_c a[n, c] (or Σ_c a[n, c] b[n, c]) for each row n of 2-D arrays, as a column (N, 1)."""
    xp = backend.xp
    sums = xp.einsum("nc->n", a) if b is None else xp.einsum("nc,nc->n", a, b)
    return sums[:, None]


def layer_norm_forward_fast(x, w, b, eps):
    """``layer_norm_forward`` on (N, C) rows with einsum row sums; the same cache."""
    xp = backend.xp
    channels = x.shape[-1]
    rows = x.reshape(-1, channels)                           # (N, C)
    x_hat = rows - _row_sums(rows) / channels                # x - μ
    rstd = 1.0 / xp.sqrt(_row_sums(x_hat, x_hat) / channels + eps)   # r = 1/√(σ²+ε)  (N, 1)
    x_hat *= rstd                                            # x̂ = (x - μ) r
    y = x_hat * w if w is not None else x_hat.copy()
    if b is not None:
        y += b
    batch_shape = x.shape[:-1]
    return y.reshape(x.shape), (x_hat.reshape(x.shape), rstd.reshape(*batch_shape, 1), w)


def layer_norm_backward_fast(dy, cache, needs=(True, True, True)):
    """``layer_norm_backward`` with einsum sums: the same three terms, g built in place."""
    xp = backend.xp
    x_hat, rstd, w = cache
    channels = x_hat.shape[-1]
    dy2d, x_hat2d = dy.reshape(-1, channels), x_hat.reshape(-1, channels)   # (N, C)
    dx = None
    if needs[0]:
        g = dy2d * w if w is not None else dy2d.copy()      # g = dy w
        mean_g_x_hat = _row_sums(g, x_hat2d) / channels
        g -= _row_sums(g) / channels                         # g - mean(g)
        g -= x_hat2d * mean_g_x_hat                          #   - x̂ mean(g x̂)
        g *= rstd.reshape(-1, 1)                             # · r
        dx = g.reshape(dy.shape)
    dw = xp.einsum("nc,nc->c", dy2d, x_hat2d) if needs[1] else None   # Σ dy x̂
    db = dy2d.sum(axis=0) if needs[2] else None                        # Σ dy
    return dx, dw, db


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Layer norm (``layer_norm_forward``, run by its fast path); saves x̂ (x's size) and r (one
    value per row)."""
    channels = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"layer_norm: {name} of shape {t.shape} does not match the "
                             f"{channels} channels "
                             f"of x {x.shape}")
    y, cache = layer_norm_forward_fast(x.data, None if weight is None else weight.data,
                                       None if bias is None else bias.data, eps)
    return fused_op(layer_norm_backward_fast, y, cache, x, weight, bias)


def rms_norm_forward(x, w, eps):
    """Root-mean-square normalisation of the last axis, then a scale — Llama's norm. No mean
    subtraction and no bias, unlike layer norm: a cheaper norm that only fixes each row's scale
    (Zhang & Sennrich 2019)."""
    xp = backend.xp
    # r = 1/√(mean(x²) + ε) (..., 1)
    rstd = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    # x̂ = x r (..., C)
    x_hat = x * rstd
    return (x_hat if w is None else x_hat * w), (x_hat, rstd, w)


def rms_norm_backward(dy, cache, needs=(True, True)):
    """With g = dy · w:   dx = r · (g - x̂ · mean(g · x̂))
    from ∂x̂_i/∂x_j = r δ_ij + x_i ∂r/∂x_j and ∂r/∂x_j = -r³ x_j / C, so ∂x̂_i/∂x_j = r
    (δ_ij - x̂_i x̂_j / C):
    layer norm's formula without its "- mean(g)" term, as nothing was subtracted in the forward."""
    x_hat, rstd, w = cache
    dx = None
    if needs[0]:
        g = dy if w is None else dy * w                                 # undoes y = x̂ w
        dx = rstd * (g - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))   # undoes x̂ = x r
    channels = x_hat.shape[-1]
    dw = (dy.reshape(-1, channels) * x_hat.reshape(-1, channels)).sum(axis=0) if needs[1] else None
    return dx, dw


def rms_norm(x: Tensor, weight: Tensor | None, eps: float = 1e-5) -> Tensor:
    """RMS norm (``rms_norm_forward``); saves x̂ (x's size) and r (one value per row)."""
    channels = x.shape[-1]
    if weight is not None and weight.shape != (channels,):
        raise ValueError(f"rms_norm: weight of shape {weight.shape} does not match the "
                         f"{channels} channels "
                         f"of x {x.shape}")
    y, cache = rms_norm_forward(x.data, None if weight is None else weight.data, eps)
    return fused_op(rms_norm_backward, y, cache, x, weight)
