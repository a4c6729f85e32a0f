"""Normalisation layers: layer norm (GPT-2) and RMS norm (Llama)."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise the last axis (C channels) to mean 0, variance 1, then scale and shift.

    Forward:  μ = mean(x),  σ² = mean((x - μ)²),  r = 1/√(σ² + ε),  x̂ = (x - μ) r,  y = x̂ w + b.
    Backward, with g = dy · w:
        dx = r · (g - mean(g) - x̂ · mean(g · x̂))
        dw = Σ dy · x̂,   db = Σ dy          (sums over every axis but the last)
    The dx line follows from dx̂/dx = r (I - 1/C - x̂ x̂ᵀ/C): subtracting mean(g) removes the part along the
    all-ones direction (μ's dependence), and x̂ · mean(g x̂) the part along x̂ (σ's dependence).
    Saves x̂ (x's size) and r (one value per row).
    """
    xp = backend.xp
    channels = x.shape[-1]
    if weight is not None and weight.shape != (channels,):
        raise ValueError(f"layer_norm: weight of shape {weight.shape} does not match the {channels} channels of x {x.shape}")
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"layer_norm: bias of shape {bias.shape} does not match the {channels} channels of x {x.shape}")
    x_hat = x.data - x.data.mean(axis=-1, keepdims=True)     # (..., C)
    var = xp.einsum("...c,...c->...", x_hat, x_hat)[..., None] / channels   # (..., 1), no (..., C) temporary
    rstd = 1.0 / xp.sqrt(var + eps)                           # (..., 1)
    x_hat *= rstd
    y = x_hat * weight.data if weight is not None else x_hat.copy()
    if bias is not None:
        y += bias.data

    def backward(dy):
        reduce_axes = tuple(range(dy.ndim - 1))
        dw = (dy * x_hat).sum(axis=reduce_axes) if weight is not None and weight.requires_grad else None
        db = dy.sum(axis=reduce_axes) if bias is not None and bias.requires_grad else None
        dx = None
        if x.requires_grad:
            g = dy * weight.data if weight is not None else dy.copy()
            mean_g = g.mean(axis=-1, keepdims=True)
            mean_g_xhat = xp.einsum("...c,...c->...", g, x_hat)[..., None] / channels
            g -= mean_g
            g -= x_hat * mean_g_xhat
            g *= rstd
            dx = g
        return dx, dw, db

    parents = (x,) + tuple(t for t in (weight, bias) if t is not None)
    if weight is None or bias is None:  # keep the backward's outputs aligned with the parents given
        full_backward = backward
        def backward(dy):
            dx, dw, db = full_backward(dy)
            return (dx,) + tuple(d for d, t in ((dw, weight), (db, bias)) if t is not None)
    return Tensor._make(y, parents, backward)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Root-mean-square normalisation of the last axis (C channels), then a scale — Llama's norm.

    Forward:  r = 1/√(mean(x²) + ε),  x̂ = x r,  y = x̂ w.      (no mean subtraction and no bias, unlike
    layer_norm: a cheaper norm that only fixes each row's scale, Zhang & Sennrich 2019)
    Backward, with g = dy · w:
        dx = r · (g - x̂ · mean(g · x̂))
        dw = Σ dy · x̂                      (sum over every axis but the last)
    Derivation: ∂x̂_i/∂x_j = r δ_ij + x_i ∂r/∂x_j, and ∂r/∂x_j = -½ (mean(x²) + ε)^(-3/2) · 2 x_j / C
    = -r³ x_j / C, so ∂x̂_i/∂x_j = r (δ_ij - x̂_i x̂_j / C). Contracting with g: dx_j = r (g_j - x̂_j Σ_i g_i x̂_i / C).
    It is layer_norm's formula without the "- mean(g)" term, because nothing was subtracted in the forward.
    Saves x̂ (x's size) and r (one value per row).
    """
    xp = backend.xp
    channels = x.shape[-1]
    if weight is not None and weight.shape != (channels,):
        raise ValueError(f"rms_norm: weight of shape {weight.shape} does not match the {channels} channels of x {x.shape}")
    mean_square = xp.einsum("...c,...c->...", x.data, x.data)[..., None] / channels   # (..., 1), no (..., C) temporary
    rstd = 1.0 / xp.sqrt(mean_square + eps)                  # (..., 1)
    x_hat = x.data * rstd                                     # (..., C)
    y = x_hat * weight.data if weight is not None else x_hat.copy()

    def backward(dy):
        reduce_axes = tuple(range(dy.ndim - 1))
        dw = (dy * x_hat).sum(axis=reduce_axes) if weight is not None and weight.requires_grad else None
        dx = None
        if x.requires_grad:
            g = dy * weight.data if weight is not None else dy.copy()
            mean_g_xhat = xp.einsum("...c,...c->...", g, x_hat)[..., None] / channels
            g -= x_hat * mean_g_xhat
            g *= rstd
            dx = g
        return (dx, dw) if weight is not None else (dx,)

    return Tensor._make(y, (x,) if weight is None else (x, weight), backward)
