"""Linear layer, embedding lookup, GELU, SiLU/SwiGLU and dropout.

Each op is a pair on raw ``xp`` arrays, ``name_forward(inputs) -> (out, cache)`` and
``name_backward(dout, cache, needs) -> one gradient per input`` (``needs[i]``: does input i want
one), written as the derivation reads, then a few lines that make it a Tensor op
(``autograd.fused_op``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd import Tensor, fused_op

# ------------------------------------------------------------------------------------------- linear

def linear_forward(x, w, b):
    """y = x Wᵀ + b over the last axis: x (..., C_in), w (C_out, C_in) — PyTorch's layout —, b
    (C_out,)."""
    x2d = x.reshape(-1, x.shape[-1])                         # (N, C_in)
    y = x2d @ w.T                                            # (N, C_out)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[0]), (x2d, w, x.shape)


def linear_backward(dy, cache, needs=(True, True, True)):
    x2d, w, x_shape = cache
    dy2d = dy.reshape(-1, w.shape[0])                        # (N, C_out)
    dx = (dy2d @ w).reshape(x_shape) if needs[0] else None   # undoes y = x Wᵀ:  dX = dY W
    dw = dy2d.T @ x2d if needs[1] else None                  #                   dW = dYᵀ X
    db = dy2d.sum(axis=0) if needs[2] else None              # undoes y += b:    db = Σ_n dY[n]
    return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b (see ``linear_forward``); saves nothing beyond its inputs."""
    c_out, c_in = weight.shape
    if x.shape[-1] != c_in:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1]} features "
                         "but the weight "
                         f"{weight.shape} expects {c_in}")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"linear: bias of shape {bias.shape} does not match the weight's "
                         f"{c_out} outputs")
    y, cache = linear_forward(x.data, weight.data, None if bias is None else bias.data)
    return fused_op(linear_backward, y, cache, x, weight, bias)


# ---------------------------------------------------------------------------------------- embedding

def embedding_forward(idx, w):
    """y[..., :] = W[idx[...], :], a row lookup: idx (...) integers in [0, V), w (V, C) → y
    (..., C)."""
    return w[idx], (idx, w.shape)


def embedding_backward(dy, cache, needs=(False, True)):
    """Each row of W gets the sum of the output gradients of every position that looked it up:
    dW[v] = Σ_{n: idx[n]=v} dY[n], a scatter-add (a row may be looked up many times)."""
    idx, (vocab, channels) = cache
    dw = backend.xp.zeros((vocab, channels), dtype=dy.dtype)
    backend.xp.add.at(dw, idx.reshape(-1), dy.reshape(-1, channels))
    return None, dw


def embedding(idx, weight: Tensor) -> Tensor:
    """Look up rows of ``weight``; out-of-range ids are an error (checked first: on a GPU, CuPy
    would wrap them around), for free when the ids are on the host."""
    idx = idx.data if isinstance(idx, Tensor) else idx
    idx = idx if hasattr(idx, "dtype") else np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    vocab = weight.shape[0]
    lowest, highest = backend.host_min_max(idx) if idx.size else (0, 0)
    if lowest < 0 or highest >= vocab:
        bad = lowest if lowest < 0 else highest
        raise ValueError(f"embedding: index {bad} is out of range for a table of {vocab} rows")
    y, cache = embedding_forward(backend.xp.asarray(idx), weight.data)
    return fused_op(embedding_backward, y, cache, idx, weight)


# --------------------------------------------------------------------------------------------- GELU

GELU_SCALE = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """GPT-2's GELU, tanh form: y = x s,  s = ½ (1 + tanh u),  u = √(2/π) (x + 0.044715 x³)."""
    u = GELU_SCALE * (x + 0.044715 * x * x * x)
    s = 0.5 * (1.0 + backend.xp.tanh(u))
    return x * s, (x, s)


def gelu_backward(dy, cache, needs=(True,)):
    """dy/dx = s + x ds/dx  (product rule on y = x s), with
    ds/dx = ½ (1 - tanh²u) du/dx = 2 s (1 - s) du/dx  (as 1 - tanh²u = 4 s (1 - s)),
    du/dx = √(2/π) (1 + 3 · 0.044715 x²)."""
    x, s = cache
    du_dx = GELU_SCALE * (1.0 + 3 * 0.044715 * x * x)
    ds_dx = 2.0 * s * (1.0 - s) * du_dx
    return (dy * (s + x * ds_dx),)


# Fast path: the pair above with every step written into one buffer, so each line is one pass over
# memory and no temporaries are made. GELU runs on the MLP's 4C-wide activations, the largest
# elementwise arrays of a step. Tested equal to the plain pair (tests/test_fast_paths.py); what it
# saves on a whole training step: benchmarks/bench_fast_paths.py.

def gelu_forward_fast(x):
    """``gelu_forward`` in place: s = ½ (1 + tanh u), built in one buffer."""
    s = x * x                                                # x²
    s *= 0.044715 * GELU_SCALE
    s += GELU_SCALE                                          # √(2/π) (1 + 0.044715 x²)
    s *= x                                                   # u
    backend.xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5                                                 # s
    return x * s, (x, s)


def gelu_backward_fast(dy, cache, needs=(True,)):
    """``gelu_backward`` in place, as dx = dy · s (1 + 2 x (1 - s) du/dx): s + x ds/dx with
    ds/dx = 2 s (1 - s) du/dx and s factored out."""
    x, s = cache
    dx = x * x                                               # x²
    dx *= 2 * 3 * 0.044715 * GELU_SCALE
    dx += 2 * GELU_SCALE                                     # 2 du/dx
    dx *= x
    dx *= 1.0 - s                                            # 2 x (1 - s) du/dx
    dx += 1.0
    dx *= s
    dx *= dy
    return (dx,)


def gelu(x: Tensor) -> Tensor:
    """GELU (``gelu_forward``, run by its fast path); saves x and s."""
    y, cache = gelu_forward_fast(x.data)
    return fused_op(gelu_backward_fast, y, cache, x)


# ------------------------------------------------------------------------------------- SiLU, SwiGLU

def sigmoid(a):
    """σ(a) = 1/(1 + e^-a), as ½(1 + tanh(a/2)): the same function, without overflow in e^-a."""
    return 0.5 * (1.0 + backend.xp.tanh(0.5 * a))


def silu_derivative(x, sig):
    """d/dx [x σ(x)] = σ + x σ (1 - σ) = σ (1 + x (1 - σ))      (product rule, with σ' = σ (1 - σ))"""
    return sig * (1.0 + x * (1.0 - sig))


def silu_forward(x):
    """SiLU (swish): y = x σ(x)."""
    sig = sigmoid(x)
    return x * sig, (x, sig)


def silu_backward(dy, cache, needs=(True,)):
    x, sig = cache
    return (dy * silu_derivative(x, sig),)


def silu(x: Tensor) -> Tensor:
    """SiLU (``silu_forward``); saves x and σ(x)."""
    y, cache = silu_forward(x.data)
    return fused_op(silu_backward, y, cache, x)


def swiglu_forward(gate, up):
    """Llama's gated unit, y = silu(gate) ⊙ up (Shazeer 2020, "GLU variants"): the MLP is
    proj(silu(x W_gateᵀ) ⊙ (x W_upᵀ)), one projection gating the other elementwise. gate, up
    (..., H)."""
    sig = sigmoid(gate)
    return gate * sig * up, (gate, up, sig)


def swiglu_backward(dy, cache, needs=(True, True)):
    gate, up, sig = cache
    # undoes silu(gate), times up
    d_gate = dy * up * silu_derivative(gate, sig) if needs[0] else None
    # undoes the product: silu(gate)
    d_up = dy * gate * sig if needs[1] else None
    return d_gate, d_up


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU (``swiglu_forward``); saves σ(gate) besides its inputs."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {gate.shape} and up {up.shape} must have the same shape")
    y, cache = swiglu_forward(gate.data, up.data)
    return fused_op(swiglu_backward, y, cache, gate, up)


# ------------------------------------------------------------------------------------------ dropout

def dropout_mask(shape, p: float, dtype, generator):
    """m ∈ {0, 1/(1-p)}: each element dropped with probability p,
    the survivors scaled so E[m] = 1."""
    keep = generator.random(shape, dtype=dtype) >= p
    return keep.astype(dtype) * (1.0 / (1.0 - p))


def dropout_forward(x, mask):
    """Inverted dropout: y = x · m."""
    return x * mask, mask


def dropout_backward(dy, mask, needs=(True,)):
    return (dy * mask,)                                      # undoes y = x · m


def dropout(x: Tensor, p: float, training: bool = True, generator=None) -> Tensor:
    """Zero each element with probability p and scale the survivors by 1/(1-p); the identity when
    not training or p == 0. ``generator``: an ``xp`` random Generator (the backend's global one by
    default)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    generator = generator if generator is not None else backend.global_rng()
    y, mask = dropout_forward(x.data, dropout_mask(x.shape, p, x.dtype, generator))
    return fused_op(dropout_backward, y, mask, x)
