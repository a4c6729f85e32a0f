"""Fused ops: each keeps its forward, its hand-derived backward and the derivation in one place.

A fused op computes on raw ``xp`` arrays, saves only what its backward needs, and returns one Tensor whose
backward closure applies the derived formula, so a transformer layer is a handful of graph nodes rather than
hundreds of primitive ones. Every op here has a finite-difference test in ``tests/``.
"""

from .dense import linear, embedding, gelu, dropout
from .norms import layer_norm
from .losses import softmax, log_softmax, cross_entropy
from .attention import scaled_dot_product_attention, self_attention

__all__ = [
    "linear", "embedding", "gelu", "dropout", "layer_norm",
    "softmax", "log_softmax", "cross_entropy",
    "scaled_dot_product_attention", "self_attention",
]
