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


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Layer norm (``layer_norm_forward``); saves x̂ (x's size) and r (one value per row)."""
    channels = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"layer_norm: {name} of shape {t.shape} does not match the "
                             f"{channels} channels "
                             f"of x {x.shape}")
    y, cache = layer_norm_forward(x.data, None if weight is None else weight.data,
                                  None if bias is None else bias.data, eps)
    return fused_op(layer_norm_backward, y, cache, x, weight, bias)


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
