"""A linear layer whose weight stays int8 in memory: W ≈ q · s, with q (C_out, C_in) int8 and one
float scale per output row s (C_out,) (``tinyllm.quantize.quantize_int8`` makes them).

Row o of W is q[o] · s[o], so output column o of y = x Wᵀ is

    y[:, o] = Σ_i x[:, i] q[o, i] s[o] = s[o] · (x q[o]ᵀ)

The scale comes out of the sum: multiply by the int8 rows first, scale the outputs afterwards. NumPy
has no int8 × float matrix product, so a block of q's rows at a time is widened to x's dtype just
for its product (``ROW_BLOCK`` weights: enough rows for an efficient matrix product, few beside a
large model's layers), and a float copy of W is never kept. Memory holds 1 byte per weight instead
of 4; each product pays for widening its blocks, which a large batch of rows (a prompt, a training
batch) amortises and a single generated token does not.

The backward needs only dL/dx (and dL/db): q and s are frozen, since an int8 number cannot take a
small gradient step. That is enough for LoRA on a quantised base (QLoRA-style, Dettmers et al.
2023): the adapter learns, and the gradient reaches the layers below through dX = dY W = (dY ⊙ s) q,
again row block by row block.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, fused_op

# weights widened to float at a time (4 MB as float32); fewer rows make thin, slow products
ROW_BLOCK = 1 << 20


def row_blocks(c_out: int, c_in: int) -> list[tuple[int, int]]:
    """(first row, end row) of each block of q's rows, at most ROW_BLOCK weights per block."""
    rows = max(1, ROW_BLOCK // c_in)
    return [(a, min(a + rows, c_out)) for a in range(0, c_out, rows)]


def int8_linear_forward(x, q, scale, b):
    """y = x (q · s)ᵀ + b over the last axis: x (..., C_in) float, q (C_out, C_in) int8, s (C_out,),
    b (C_out,)."""
    c_out, c_in = q.shape
    x2d = x.reshape(-1, c_in)                                        # (N, C_in)
    y = backend.xp.empty((x2d.shape[0], c_out), dtype=x.dtype)       # (N, C_out)
    for a, e in row_blocks(c_out, c_in):
        y[:, a:e] = x2d @ q[a:e].astype(x.dtype).T                   # Y[:, a:e] = X q[a:e]ᵀ
        y[:, a:e] *= scale[a:e]                                      #           ⊙ s[a:e]
    if b is not None:
        y += b                                                       # y += b
    return y.reshape(*x.shape[:-1], c_out), (q, scale, x.shape)


def int8_linear_backward(dy, cache, needs=(True, False, False, True)):
    """One gradient per input (x, q, s, b); q and s get none (frozen). With W = q · s:
        dX = dY W = Σ_blocks (dY[:, a:e] ⊙ s[a:e]) q[a:e]     undoes Y[:, a:e] = (X q[a:e]ᵀ) ⊙ s[a:e]
        db = Σ_n dY[n]                                         undoes y += b
    """
    q, scale, x_shape = cache
    c_out, c_in = q.shape
    dy2d = dy.reshape(-1, c_out)                                     # (N, C_out)
    dx = None
    if needs[0]:
        dx = backend.xp.zeros((dy2d.shape[0], c_in), dtype=dy.dtype)   # (N, C_in)
        # undoes Y[:, a:e] = (X q[a:e]ᵀ) ⊙ s[a:e]
        for a, e in row_blocks(c_out, c_in):
            dx += (dy2d[:, a:e] * scale[a:e]) @ q[a:e].astype(dy.dtype)
        dx = dx.reshape(x_shape)
    db = dy2d.sum(axis=0) if needs[3] else None                      # undoes y += b
    return dx, None, None, db


def int8_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x (q · s)ᵀ + b with int8 ``q`` (C_out, C_in) and float ``scale`` (C_out,) (see
    ``int8_linear_forward``); saves nothing beyond its inputs. Gradients flow to x and b only."""
    c_out, c_in = q.shape
    if q.dtype != "int8" or q.ndim != 2:
        raise ValueError(f"int8_linear: the weight must be a 2-D int8 matrix, got {q.dtype} "
                         f"{q.shape}")
    if scale.shape != (c_out,) or scale.dtype.kind != "f":
        raise ValueError(f"int8_linear: scale must be float of shape ({c_out},), got {scale.dtype} "
                         f"{scale.shape}")
    if x.shape[-1] != c_in:
        raise ValueError(f"int8_linear: input of shape {x.shape} has {x.shape[-1]} features but "
                         f"the weight {q.shape} expects {c_in}")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"int8_linear: bias of shape {bias.shape} does not match the weight's "
                         f"{c_out} outputs")
    y, cache = int8_linear_forward(x.data, q.data, scale.data, None if bias is None else bias.data)
    return fused_op(int8_linear_backward, y, cache, x, q, scale, bias)
