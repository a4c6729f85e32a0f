"""Half-precision weight storage for inference: weights kept in float16 or bfloat16,
arithmetic in float32.

A 135M-parameter model is 540 MB in float32; its block matrices are most of that.
``store_half(model, dtype)`` keeps every block's weight matrices as 16-bit numbers (half the memory)
and, just before a block runs, widens that block's matrices back to float32 for its forward,
dropping them again afterwards. So at any moment only one block exists in float32, every matmul is
an ordinary float32 one, and the only change to the results is that each weight was rounded once to
16 bits:

    float16    1 sign, 5 exponent, 10 mantissa bits: ~3 significant digits, range ±65504
    bfloat16   1 sign, 8 exponent,  7 mantissa bits: ~2 digits, float32's range (the top half of a float32)

The price is the widening: every generated token converts all block weights (n_layer × ~12 C²
numbers) once, so decoding is slower than from float32 weights; this trades speed for memory, as the
README's table shows. The token embedding (also the tied output head), the norms and biases stay
float32. Inference only: a model treated this way has no trainable block weights.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .safetensors import bfloat16_bits_to_float32, float32_to_bfloat16_bits

DTYPES = ("float16", "bfloat16")


def _narrow(array, dtype: str):
    host = backend.to_numpy(array).astype(np.float32, copy=False)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            half = host.astype(np.float16)
        if not np.isfinite(half).all() and np.isfinite(host).all():
            raise ValueError("a weight is beyond float16's range (±65504); use --dtype bfloat16")
        return half
    return float32_to_bfloat16_bits(host)                     # uint16: bfloat16's bits


def _widen(stored, dtype: str):
    wide = stored.astype(np.float32) if dtype == "float16" else bfloat16_bits_to_float32(stored)
    return backend.xp.asarray(wide)


def store_half(model, dtype: str = "bfloat16"):
    """Keep ``model``'s block weight matrices in ``dtype`` ("float16" or "bfloat16"), widened to
    float32 one block at a time while it runs. Returns the model (for inference: ``model.eval()`` /
    ``no_grad``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if any(p.dtype.kind != "f" for p in model.parameters()):
        raise ValueError(f"the model holds int8 weights already (a quarter of float32); {dtype} "
                         "storage is for float ones")
    for block in model.blocks:
        matrices = [p for _, p in block.named_parameters() if p.ndim >= 2]
        stored = [_narrow(p.data, dtype) for p in matrices]
        placeholders = [
            backend.xp.broadcast_to(backend.xp.zeros((), dtype=p.dtype), p.shape) for p in matrices
        ]
        for p, empty in zip(matrices, placeholders):
            p.data, p.requires_grad = empty, False            # a zero-byte view of the right shape
        block.forward = _widening_forward(block.forward, matrices, stored, placeholders, dtype)
    model.half_storage = dtype
    return model


def _widening_forward(forward, matrices, stored, placeholders, dtype):
    def run(*args, **kwargs):
        for p, half in zip(matrices, stored):
            p.data = _widen(half, dtype)
        try:
            return forward(*args, **kwargs)
        finally:
            for p, empty in zip(matrices, placeholders):
                p.data = empty

    return run


def weight_bytes(model) -> int:
    """Bytes the model's weights occupy now (16-bit block matrices counted at 2 bytes each)."""
    total = 0
    for _, p in model.named_parameters():
        strides = getattr(p.data, "strides", None)
        # a placeholder of a half-stored matrix
        if strides is not None and 0 in strides and p.data.ndim:
            total += 2 * p.data.size
        else:
            total += p.data.nbytes
    return total


__all__ = ["store_half", "weight_bytes", "DTYPES"]
