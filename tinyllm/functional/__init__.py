"""Fused ops: each keeps its forward, its hand-derived backward and the derivation in one place.

A fused op computes on raw ``xp`` arrays, saves only what its backward needs, and returns one Tensor
whose backward closure applies the derived formula, so a transformer layer is a handful of graph
nodes rather than hundreds of primitive ones. Every op here has a finite-difference test in
``tests/``.
"""

from .dense import linear, embedding, gelu, silu, swiglu, dropout
from .int8 import int8_linear
from .norms import layer_norm, rms_norm
from .rope import rotary_embedding
from .losses import softmax, log_softmax, cross_entropy
from .distillation import distillation_loss
from .attention import scaled_dot_product_attention, self_attention
from .prefix import prepend, mask_with_prefix
from .moe import moe, moe_experts, router_weights, load_balancing_loss, top_k_experts

__all__ = [
    "linear", "int8_linear", "embedding", "gelu", "silu", "swiglu", "dropout", "layer_norm",
    "rms_norm", "rotary_embedding", "softmax", "log_softmax", "cross_entropy", "distillation_loss",
    "scaled_dot_product_attention", "self_attention", "prepend", "mask_with_prefix",
    "moe", "moe_experts", "router_weights", "load_balancing_loss", "top_k_experts",
]
