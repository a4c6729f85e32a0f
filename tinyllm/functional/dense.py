"""Linear layer, embedding lookup, GELU, SiLU/SwiGLU and dropout."""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b, over the last axis of x.

    Shapes: x (..., C_in), weight (C_out, C_in) — PyTorch's layout — bias (C_out,), y (..., C_out).
    With x flattened to X (N, C_in) and dY (N, C_out):
        dX = dY W          (N, C_out) @ (C_out, C_in)
        dW = dYᵀ X         (C_out, N) @ (N, C_in)
        db = Σ_n dY[n]
    Saves nothing beyond its inputs (x and W are needed anyway). db is computed as 1ᵀ dY, a matrix-vector
    product, so BLAS sums the columns on every core.
    """
    c_out, c_in = weight.shape
    if x.shape[-1] != c_in:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1]} features but the weight {weight.shape} expects {c_in}")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"linear: bias of shape {bias.shape} does not match the weight's {c_out} outputs")
    x2d = x.data.reshape(-1, c_in)                            # (N, C_in)
    y = x2d @ weight.data.T                                   # (N, C_out)
    if bias is not None:
        def add_bias(rows):                                   # y += b, on row blocks in parallel
            rows += bias.data
        backend.parallel_rows(add_bias, y)

    def backward(dy):
        dy2d = dy.reshape(-1, c_out)                          # (N, C_out)
        dx = (dy2d @ weight.data).reshape(x.shape) if x.requires_grad else None
        dw = dy2d.T @ x2d if weight.requires_grad else None
        db = backend.xp.ones(len(dy2d), dy2d.dtype) @ dy2d if bias is not None and bias.requires_grad else None
        return dx, dw, db

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor._make(y.reshape(*x.shape[:-1], c_out), parents, backward)


def embedding(idx, weight: Tensor) -> Tensor:
    """y[..., :] = W[idx[...], :] — a row lookup.

    Shapes: idx (...) integers in [0, V), weight (V, C), y (..., C).
    Each row of W receives the sum of the output gradients of every position that looked it up (a row may be
    looked up many times), a scatter-add: dW[v] = Σ_{n: idx[n]=v} dY[n]. Saves the indices only.
    """
    xp = backend.xp
    idx = idx.data if isinstance(idx, Tensor) else idx
    idx = idx if hasattr(idx, "dtype") else np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    vocab, channels = weight.shape
    # Checked before the lookup: on a GPU, CuPy wraps an out-of-range index around instead of raising.
    lowest, highest = backend.host_min_max(idx) if idx.size else (0, 0)
    if lowest < 0 or highest >= vocab:
        bad = lowest if lowest < 0 else highest
        raise ValueError(f"embedding: index {bad} is out of range for a table of {vocab} rows")
    idx = xp.asarray(idx)

    def backward(dy):
        dw = xp.zeros_like(weight.data)
        xp.add.at(dw, idx.reshape(-1), dy.reshape(-1, channels))
        return (dw,)

    return Tensor._make(weight.data[idx], (weight,), backward)


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU, tanh form: y = x s,  s = ½ (1 + tanh u),  u = √(2/π) (x + 0.044715 x³).

    dy/dx = s + x · ds/dx, and with t = tanh u:  ds/dx = ½ (1 - t²) du/dx,  1 - t² = 4 s (1 - s),
    du/dx = √(2/π) (1 + 3·0.044715 x²). Together:
        dy/dx = s · (1 + x (1 - s) · 2√(2/π) (1 + 3·0.044715 x²))
    Saves x and s (two arrays of x's size). Both passes run on row blocks in parallel (``parallel_rows``),
    and fold the constants so that each is as few passes over memory as possible (8 forward, 9 backward).
    """
    xp = backend.xp
    a = x.data.reshape(-1)                                    # elementwise: any shape is a flat row of values
    s, y = xp.empty_like(a), xp.empty_like(a)

    def forward_block(a, s, y):
        xp.multiply(a, a, out=s)                              # one buffer reused: x² → u → tanh u → s
        s *= 0.044715 * _GELU_C
        s += _GELU_C
        s *= a                                                # u = √(2/π) x + √(2/π)·0.044715 x³
        xp.tanh(s, out=s)
        s *= 0.5
        s += 0.5                                              # s = ½ (1 + tanh u)
        xp.multiply(a, s, out=y)

    def backward_block(a, s, dy, dx):
        xp.multiply(a, a, out=dx)                             # s · (1 + x (1 - s) · 2√(2/π) (1 + 3·0.044715 x²))
        dx *= 6 * 0.044715 * _GELU_C
        dx += 2 * _GELU_C
        dx *= a
        one_minus_s = xp.subtract(1.0, s)
        dx *= one_minus_s
        dx += 1.0
        dx *= s
        dx *= dy

    def backward(dy):
        dx = xp.empty_like(a)
        backend.parallel_rows(backward_block, a, s, dy.reshape(-1), dx)
        return (dx.reshape(x.shape),)

    backend.parallel_rows(forward_block, a, s, y)
    return Tensor._make(y.reshape(x.shape), (x,), backward)


def _sigmoid(a):
    """σ(a) = 1/(1 + e^-a), as ½(1 + tanh(a/2)): the same function without overflow in e^-a for very negative a."""
    s = a * 0.5
    backend.xp.tanh(s, out=s)
    s += 1.0
    s *= 0.5
    return s


def silu(x: Tensor) -> Tensor:
    """SiLU (a.k.a. swish): y = x σ(x), σ the logistic sigmoid.

    dy/dx = σ + x σ (1 - σ) = σ (1 + x (1 - σ))        (product rule, with σ' = σ (1 - σ))
    Saves σ (one array of x's size).
    """
    sig = _sigmoid(x.data)
    y = x.data * sig

    def backward(dy):
        dx = 1.0 - sig                                        # σ (1 + x (1 - σ)) dy, built in one buffer
        dx *= x.data
        dx += 1.0
        dx *= sig
        dx *= dy
        return (dx,)

    return Tensor._make(y, (x,), backward)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """The gated unit of Llama's feed-forward block: y = silu(gate) ⊙ up (Shazeer 2020, "GLU variants").

    The MLP is  proj( silu(x W_gateᵀ) ⊙ (x W_upᵀ) ):  two projections into the hidden width, one of them
    gating the other elementwise. This op fuses the silu and the product (one graph node, one output array).
    Shapes: gate and up (..., H), y (..., H). With σ = σ(gate) and s = gate σ = silu(gate):
        d_up   = dy ⊙ s
        d_gate = dy ⊙ up ⊙ σ (1 + gate (1 - σ))        (silu's derivative, see ``silu``)
    Saves σ (gate's size); gate and up are the inputs.
    """
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {gate.shape} and up {up.shape} must have the same shape")
    sig = _sigmoid(gate.data)
    y = gate.data * sig                                       # silu(gate)
    y *= up.data

    def backward(dy):
        d_up = None
        if up.requires_grad:
            d_up = gate.data * sig                            # silu(gate), recomputed (one multiply)
            d_up *= dy
        d_gate = None
        if gate.requires_grad:
            d_gate = 1.0 - sig
            d_gate *= gate.data
            d_gate += 1.0
            d_gate *= sig
            d_gate *= up.data
            d_gate *= dy
        return d_gate, d_up

    return Tensor._make(y, (gate, up), backward)


def dropout(x: Tensor, p: float, training: bool = True, generator=None) -> Tensor:
    """Zero each element with probability p and scale the survivors by 1/(1-p) (inverted dropout).

    y = x · m with m ∈ {0, 1/(1-p)}, so dx = dy · m. Saves the mask. The identity when not training or p == 0.
    ``generator`` is an ``xp`` random Generator (the backend's global one by default).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    generator = generator if generator is not None else backend.global_rng()
    mask = generator.random(x.shape, dtype=x.dtype) >= p
    mask = mask.astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return Tensor._make(x.data * mask, (x,), lambda dy: (dy * mask,))
