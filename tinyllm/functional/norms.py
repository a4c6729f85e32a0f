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
    rows = x.data.reshape(-1, channels)                       # (N, C)
    x_hat, y = xp.empty_like(rows), xp.empty_like(rows)       # (N, C)
    rstd = xp.empty((rows.shape[0], 1), dtype=rows.dtype)     # (N, 1)

    # Reductions: row sums and Σ of products as einsum (2–3× faster than .mean(axis=-1), no temporary); the
    # column sum db as 1ᵀ dY, a BLAS matrix-vector product.
    def row_mean(a):                                          # (n, C) → (n, 1)
        return xp.einsum("nc->n", a)[:, None] / channels

    def forward_block(rows, x_hat, rstd, y):
        xp.subtract(rows, row_mean(rows), out=x_hat)          # x - μ
        var = xp.einsum("nc,nc->n", x_hat, x_hat)[:, None] / channels    # (n, 1), no (n, C) temporary
        xp.sqrt(var + eps, out=rstd)
        xp.divide(1.0, rstd, out=rstd)
        x_hat *= rstd
        if weight is not None:
            xp.multiply(x_hat, weight.data, out=y)
        else:
            y[...] = x_hat
        if bias is not None:
            y += bias.data

    need_dw = weight is not None and weight.requires_grad
    need_db = bias is not None and bias.requires_grad

    def backward_block(dy, x_hat, rstd, dx):
        """dx for these rows, written into dx; returns this block's partial sums Σ dy·x̂ and Σ dy."""
        dw = xp.einsum("nc,nc->c", dy, x_hat) if need_dw else None
        db = xp.ones(len(dy), dy.dtype) @ dy if need_db else None
        if x.requires_grad:
            g = dx                                            # g = dy · w, built in dx, then turned into dx
            if weight is not None:
                xp.multiply(dy, weight.data, out=g)
            else:
                g[...] = dy
            mean_g = row_mean(g)
            mean_g_xhat = xp.einsum("nc,nc->n", g, x_hat)[:, None] / channels
            g -= mean_g
            g -= x_hat * mean_g_xhat
            g *= rstd
        return dw, db

    def backward(dy):
        dx = xp.empty_like(x_hat)
        partials = backend.parallel_rows(backward_block, dy.reshape(-1, channels), x_hat, rstd, dx)
        return (dx.reshape(x.shape) if x.requires_grad else None,
                sum(p[0] for p in partials) if need_dw else None,
                sum(p[1] for p in partials) if need_db else None)

    backend.parallel_rows(forward_block, rows, x_hat, rstd, y)
    y = y.reshape(x.shape)

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
        dw = None
        if weight is not None and weight.requires_grad:        # Σ over every axis but the last, no temporary
            dw = xp.einsum("nc,nc->c", dy.reshape(-1, channels), x_hat.reshape(-1, channels))
        dx = None
        if x.requires_grad:
            g = dy * weight.data if weight is not None else dy.copy()
            mean_g_xhat = xp.einsum("...c,...c->...", g, x_hat)[..., None] / channels
            g -= x_hat * mean_g_xhat
            g *= rstd
            dx = g
        return (dx, dw) if weight is not None else (dx,)

    return Tensor._make(y, (x,) if weight is None else (x, weight), backward)
