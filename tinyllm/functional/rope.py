"""Rotary position embedding (RoPE, Su et al. 2021): positions enter attention as rotations of q and k.

Instead of adding a learned vector per position to the input (GPT-2's ``wpe``), Llama rotates each query and
key by an angle proportional to its position. Split a head's D channels into D/2 pairs; pair i is a point in
a plane, rotated by the angle  p · ω_i  at position p, with frequencies  ω_i = θ^(-2i/D)  (θ = 10000 by
default: pair 0 turns by one radian per position, the last pair by ~1/θ, so the pairs measure offsets on
scales from a few tokens to ~θ tokens).

    (x1, x2) at position p  →  (x1 cos pω - x2 sin pω,  x2 cos pω + x1 sin pω)

Why it encodes *relative* position: a rotation R(a) is orthogonal and R(a)ᵀ R(b) = R(b - a), so a score
q_m · k_n = (R(mω) q)ᵀ (R(nω) k) = qᵀ R((n - m)ω) k depends on the positions only through n - m. And
position 0 is the identity rotation.

Pairing convention — "rotate half" (Hugging Face / GPT-NeoX, non-interleaved): channel i is paired with
channel i + D/2, i.e. x1 = x[..., :D/2] and x2 = x[..., D/2:]. Meta's original Llama code pairs neighbours
(2i, 2i+1) ("interleaved"); the two are the same model up to a fixed permutation of the q/k projection rows,
which is how HF's conversion script maps Meta checkpoints. tinyllm uses the HF convention, so HF Llama
weights load without a permutation.

Backward: y = R x with R a rotation (block-diagonal, orthogonal), so dx = Rᵀ dy = R(-angle) dy: the inverse
rotation of the output gradient — the same function with sin negated. Nothing is saved but the cos/sin tables.

The tables cos(pω_i), sin(pω_i) are computed once per (head size, θ, dtype, device), in float64 then cast,
for positions 0 … L-1, and grown (doubled) when a larger position is asked for; a forward gathers the rows
of its positions (T or B·T rows of D/2 values).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Tensor

_TABLES: dict = {}   # (head_dim, theta, dtype, device) → (cos, sin), each (L, D/2)


def _check_head_dim(head_dim):
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dimension (channels are rotated in pairs), got head_dim={head_dim}")


def rope_tables(head_dim: int, length: int, theta: float = 10000.0, dtype=None):
    """(cos, sin) of p · ω_i for positions p = 0 … at least ``length - 1``: two (L, D/2) arrays, cached."""
    _check_head_dim(head_dim)
    dtype = np.dtype(backend.dtype if dtype is None else dtype)
    key = (int(head_dim), float(theta), dtype.str, backend.device)
    tables = _TABLES.get(key)
    if tables is None or tables[0].shape[0] < length:
        size = 1 << max(int(length) - 1, 255).bit_length()   # a power of two ≥ length (at least 256)
        inv_freq = float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (D/2,) ω_i
        angles = np.arange(size, dtype=np.float64)[:, None] * inv_freq[None, :]             # (L, D/2)
        tables = (backend.xp.asarray(np.cos(angles), dtype=dtype), backend.xp.asarray(np.sin(angles), dtype=dtype))
        _TABLES[key] = tables
    return tables


def rope_cos_sin(positions, head_dim: int, theta: float = 10000.0, dtype=None):
    """The rotation of each position, ready to broadcast against (B, H, T, D/2) halves of q or k.

    ``positions``: integers ≥ 0 of shape (T,) (the same for every row) or (B, T) (a left-padded batch).
    Returns (cos, sin), each (T, D/2) or (B, 1, T, D/2).
    """
    xp = backend.xp
    positions = getattr(positions, "data", positions)
    positions = positions if hasattr(positions, "dtype") else np.asarray(positions)
    if positions.dtype.kind not in "iu" or positions.ndim not in (1, 2):
        raise ValueError(f"rotary embedding: positions must be integers of shape (T,) or (B, T), got dtype "
                         f"{positions.dtype} and shape {positions.shape}")
    lowest, highest = backend.host_min_max(positions) if positions.size else (0, 0)
    if lowest < 0:
        raise ValueError(f"rotary embedding: positions must be >= 0, got {lowest}")
    cos, sin = rope_tables(head_dim, highest + 1, theta, dtype)
    positions = xp.asarray(positions)
    cos, sin = cos[positions], sin[positions]                 # (T, D/2) or (B, T, D/2)
    if positions.ndim == 2:
        cos, sin = cos[:, None], sin[:, None]                 # (B, 1, T, D/2): one rotation for every head
    return cos, sin


def apply_rotary(x, cos, sin, inverse: bool = False):
    """Raw-array rotation of x (..., T, D) by the angles whose cos/sin broadcast to (..., T, D/2).

    Forward:  y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin   (x1, x2 the two halves of the last axis).
    ``inverse=True`` rotates by minus the angle (sin → -sin): the backward. Returns a new C-contiguous array.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = backend.xp.empty(x.shape, dtype=x.dtype)
    out1, out2 = out[..., :half], out[..., half:]
    backend.xp.multiply(x1, cos, out=out1)
    backend.xp.multiply(x2, cos, out=out2)
    if inverse:
        out1 += x2 * sin
        out2 -= x1 * sin
    else:
        out1 -= x2 * sin
        out2 += x1 * sin
    return out


def rotary_embedding(x: Tensor, positions, theta: float = 10000.0) -> Tensor:
    """Rotate queries or keys x (B, H, T, D) by their positions ((T,) or (B, T) integers).

    y = R(p ω) x pairwise (see the module docstring); dx = R(-p ω) dy. Saves the gathered cos/sin
    (T·D/2 or B·T·D/2 values each), no activations.
    """
    if x.ndim != 4:
        raise ValueError(f"rotary_embedding expects x of shape (B, H, T, D), got {x.shape}")
    _check_head_dim(x.shape[-1])
    positions = backend.xp.asarray(getattr(positions, "data", positions))
    if positions.shape not in ((x.shape[2],), (x.shape[0], x.shape[2])):
        raise ValueError(f"rotary_embedding: positions of shape {positions.shape} do not match x {x.shape} "
                         f"(expected ({x.shape[2]},) or ({x.shape[0]}, {x.shape[2]}))")
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta, x.dtype)
    y = apply_rotary(x.data, cos, sin)

    def backward(dy):
        return (apply_rotary(dy, cos, sin, inverse=True),)

    return Tensor._make(y, (x,), backward)
