"""Rotary position embedding (RoPE, Su et al. 2021):
positions enter attention as rotations of q and k.

Instead of adding a learned vector per position to the input (GPT-2's ``wpe``), Llama rotates each
query and key by an angle proportional to its position. Split a head's D channels into D/2 pairs;
pair i is a point in a plane, rotated by the angle  p · ω_i  at position p, with frequencies
ω_i = θ^(-2i/D)  (θ = 10000 by default: pair 0 turns by one radian per position, the last pair by
~1/θ, so the pairs measure offsets on scales from a few tokens to ~θ tokens).

    (x1, x2) at position p  →  (x1 cos pω - x2 sin pω,  x2 cos pω + x1 sin pω)

Why it encodes *relative* position: a rotation R(a) is orthogonal and R(a)ᵀ R(b) = R(b - a), so a
score q_m · k_n = (R(mω) q)ᵀ (R(nω) k) = qᵀ R((n - m)ω) k depends on the positions only through n -
m. And position 0 is the identity rotation.

Pairing convention — "rotate half" (Hugging Face / GPT-NeoX, non-interleaved): channel i is paired
with channel i + D/2, i.e. x1 = x[..., :D/2] and x2 = x[..., D/2:]. Meta's original Llama code pairs
neighbours (2i, 2i+1) ("interleaved"); the two are the same model up to a fixed permutation of the
q/k projection rows, which is how HF's conversion script maps Meta checkpoints. tinyllm uses the HF
convention, so HF Llama weights load without a permutation.

In whole arrays, with cos and sin of each pair's angle written under both of its channels
(cos = [cos pω, cos pω], sin likewise, D wide) and rotate_half(x) = (-x2, x1):

    y = x · cos + rotate_half(x) · sin

the same numbers as the pairwise formula (Hugging Face writes it this way), computed as four passes
over whole rows instead of short strided half-rows.

Backward: y = R x with R a rotation (block-diagonal, orthogonal), so dx = Rᵀ dy = R(-angle) dy: the
inverse rotation of the output gradient — the same function with sin negated. Nothing is saved but
the cos/sin tables.

Frequency scaling (``scaling``, a config's ``rope_scaling``): Llama 3.1/3.2 stretch the slow pairs
to reach longer contexts ("llama3": pairs whose wavelength 2π/ω exceeds
original_max_position_embeddings / low_freq_factor turn ``factor`` times slower, those under … /
high_freq_factor are kept, and the ones between are interpolated smoothly); see
``rope_frequencies``.

The tables cos(pω_i), sin(pω_i) are computed once per (head size, θ, scaling, dtype, device), in
float64 then cast, for positions 0 … L-1 (D values a row: each pair's twice), and grown (doubled)
when a larger position is asked for; a forward gathers the rows of its positions (T or B·T rows).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Tensor, array_of, fused_op

_TABLES: dict = {}   # (head_dim, theta, scaling, dtype, device) → (cos, sin), each (L, D)
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _check_head_dim(head_dim):
    if head_dim % 2:
        raise ValueError("rotary embedding needs an even head dimension (channels are rotated in "
                         f"pairs), got head_dim={head_dim}")


def check_rope_scaling(scaling) -> None:
    """ValueError unless ``scaling`` is None, {"rope_type": "default"} or a complete "llama3"
    scaling."""
    if scaling is None or (isinstance(scaling, dict)
                           and scaling.get("rope_type", "default") == "default"):
        return
    if not isinstance(scaling, dict) or scaling.get("rope_type") != "llama3":
        raise ValueError(f"rope_scaling {scaling!r} is not supported; tinyllm implements rope_type "
                         "'default' and 'llama3'")
    missing = [key for key in LLAMA3_KEYS
               if not isinstance(scaling.get(key), (int, float)) or scaling[key] <= 0]
    if missing or scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError(f"llama3 rope_scaling needs positive {', '.join(LLAMA3_KEYS)} with "
                         f"high_freq_factor > low_freq_factor; got {scaling!r}")


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: dict | None = None):
    """ω_i = θ^(-2i/D) for the D/2 pairs (float64), with Llama 3's scaling applied when asked for.

    llama3: wavelength λ_i = 2π/ω_i against the original context L: λ > L/low → ω/factor (slow pairs
    stretched), λ < L/high → ω (fast pairs kept), between → (1 - s)·ω/factor + s·ω with
    s = (L/λ - low)/(high - low).
    """
    # (D/2,) ω_i
    inv_freq = float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    check_rope_scaling(scaling)
    if scaling is None or scaling.get("rope_type", "default") == "default":
        return inv_freq
    factor, low, high, context = (float(scaling[key]) for key in LLAMA3_KEYS)
    wavelength = 2 * np.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)
    scaled = np.where(wavelength > context / low, inv_freq / factor, inv_freq)
    between = (wavelength >= context / high) & (wavelength <= context / low)
    return np.where(between, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


def rope_tables(head_dim: int, length: int, theta: float = 10000.0, dtype=None,
                scaling: dict | None = None):
    """(cos, sin) of p · ω_i for positions p = 0 … at least ``length - 1``: two (L, D) arrays,
    cached; columns i and i + D/2 hold pair i's angle, as x's two halves hold the pair."""
    _check_head_dim(head_dim)
    dtype = np.dtype(backend.dtype if dtype is None else dtype)
    scaling_key = None if scaling is None else tuple(sorted(scaling.items()))
    key = (int(head_dim), float(theta), scaling_key, dtype.str, backend.device)
    tables = _TABLES.get(key)
    if tables is None or tables[0].shape[0] < length:
        # a power of two ≥ length (at least 256)
        size = 1 << max(int(length) - 1, 255).bit_length()
        # (D/2,) ω_i
        inv_freq = rope_frequencies(head_dim, theta, scaling)
        # (L, D/2), then (L, D): each pair's angle under both of its channels
        angles = np.arange(size, dtype=np.float64)[:, None] * inv_freq[None, :]
        angles = np.concatenate([angles, angles], axis=1)
        tables = (backend.xp.asarray(np.cos(angles), dtype=dtype),
                  backend.xp.asarray(np.sin(angles), dtype=dtype))
        _TABLES[key] = tables
    return tables


def rope_cos_sin(positions, head_dim: int, theta: float = 10000.0, dtype=None,
                 scaling: dict | None = None):
    """The rotation of each position, ready to broadcast against q or k (B, H, T, D).

    ``positions``: integers ≥ 0 of shape (T,) (the same for every row) or (B, T) (a left-padded
    batch).
    Returns (cos, sin), each (T, D) or (B, 1, T, D). ``scaling``: see ``rope_frequencies``.
    """
    xp = backend.xp
    positions = array_of(positions)
    positions = positions if hasattr(positions, "dtype") else np.asarray(positions)
    if positions.dtype.kind not in "iu" or positions.ndim not in (1, 2):
        raise ValueError("rotary embedding: positions must be integers of shape (T,) or (B, "
                         "T), got dtype "
                         f"{positions.dtype} and shape {positions.shape}")
    lowest, highest = backend.host_min_max(positions) if positions.size else (0, 0)
    if lowest < 0:
        raise ValueError(f"rotary embedding: positions must be >= 0, got {lowest}")
    cos, sin = rope_tables(head_dim, highest + 1, theta, dtype, scaling)
    positions = xp.asarray(positions)
    cos, sin = cos[positions], sin[positions]                 # (T, D) or (B, T, D)
    if positions.ndim == 2:
        # (B, 1, T, D): one rotation for every head
        cos, sin = cos[:, None], sin[:, None]
    return cos, sin


def rotate_half(x):
    """(x1, x2) → (-x2, x1) on the two halves of the last axis: every pair turned a quarter turn."""
    half = x.shape[-1] // 2
    return backend.xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, cos, sin, inverse: bool = False):
    """Raw-array rotation of x (..., T, D) by the angles whose cos/sin (``rope_cos_sin``) broadcast
    to (..., T, D):  y = x · cos + rotate_half(x) · sin, that is y1 = x1 cos - x2 sin and
    y2 = x2 cos + x1 sin. ``inverse=True`` rotates by minus the angle (sin → -sin): the backward."""
    if inverse:
        sin = -sin
    return x * cos + rotate_half(x) * sin


def rotary_embedding_forward(x, cos, sin):
    """y = R(p ω) x pairwise (see the module docstring): x (B, H, T, D), cos and sin of the angles
    broadcastable to (B, H, T, D) (``rope_cos_sin``)."""
    return apply_rotary(x, cos, sin), (cos, sin)


def rotary_embedding_backward(dy, cache, needs=(True,)):
    """R is orthogonal, so dx = Rᵀ dy = R(-p ω) dy: the same rotation with sin → -sin."""
    cos, sin = cache
    return (apply_rotary(dy, cos, sin, inverse=True),)        # undoes y = R(p ω) x


def rotary_embedding(x: Tensor, positions, theta: float = 10000.0) -> Tensor:
    """Rotate queries or keys x (B, H, T, D) by their positions ((T,) or (B, T) integers)
    (``rotary_embedding_forward``). Saves the gathered cos/sin (T·D or B·T·D values each),
    no activations."""
    if x.ndim != 4:
        raise ValueError(f"rotary_embedding expects x of shape (B, H, T, D), got {x.shape}")
    _check_head_dim(x.shape[-1])
    positions = backend.xp.asarray(array_of(positions))
    if positions.shape not in ((x.shape[2],), (x.shape[0], x.shape[2])):
        raise ValueError(f"rotary_embedding: positions of shape {positions.shape} do not match "
                         f"x {x.shape} (expected ({x.shape[2]},) or ({x.shape[0]}, {x.shape[2]}))")
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta, x.dtype)
    y, cache = rotary_embedding_forward(x.data, cos, sin)
    return fused_op(rotary_embedding_backward, y, cache, x)
