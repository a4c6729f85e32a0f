"""Gradient (activation) checkpointing: keep a block's input, not its insides,
and recompute in the backward.

A training step normally keeps every intermediate array that some backward needs until the backward
has used it: per transformer block the normalised inputs, q/k/v, the attention probabilities (B, H,
T, T), the MLP's hidden activations (B, T, 4C or 3 × H wide)... — tens of C-sized arrays per
position per layer. Finetuning a 0.5B model on a laptop runs out of memory on those, not on the
weights.

``checkpoint(function, x, parameters)`` runs ``function(x)`` (one block) without recording a graph,
so none of that is kept: only x, the block's input. Its backward runs the block's forward again,
this time recording the graph, and backpropagates dy through it at once: the gradients of x and of
the parameters are returned like any op's (so data-parallel threads collect them in their own
tables). Memory: the n_layer block inputs plus one block's intermediates at a time, instead of all
n_layer blocks' intermediates; cost: one more forward per block (≈ a third more compute).

The recomputation must compute exactly what the first forward did. Dropout would draw new random
masks, and a mixture-of-experts block's load-balancing loss is read from its first forward, so both
are refused.
"""

from __future__ import annotations

from . import autograd
from .autograd import Tensor


def checkpoint(function, x: Tensor, parameters) -> Tensor:
    """``function(x)`` whose intermediates are recomputed in the backward instead of kept.

    ``parameters``: the Parameters ``function`` uses (this node returns their gradients from its
    backward, and make the result require a gradient even when x does not:
    LoRA on frozen embeddings).

    The first forward runs on a detached copy of x and only its output array is kept, so the graph
    it built (and every array that graph saved) is freed as soon as the block returns. (``no_grad``
    would say the same thing, but it is a process-wide switch and finetuning runs forwards on
    several threads at once.)
    """
    if not autograd.is_grad_enabled():
        return function(x)
    trainable = [p for p in parameters if p.requires_grad]
    # the block's graph dies here: nothing is kept
    out = function(x.detach()).data

    def backward(dy):
        # a fresh leaf for the recompute
        inner = Tensor(x.data, dtype=x.dtype, requires_grad=x.requires_grad)
        y = function(inner)
        if not y.requires_grad:
            raise RuntimeError("checkpoint: the recomputed block built no graph; run the backward "
                               "with gradients "
                               "enabled (not inside no_grad)")
        leaf_grads = {}
        # the recomputed block's leaves: x and its parameters
        y.backward(dy, leaf_grads=leaf_grads)
        grads = tuple(leaf_grads.pop(id(t), (None, None))[1] for t in (inner, *trainable))
        for leaf, grad in leaf_grads.values():           # a parameter the caller did not list
            leaf._accumulate(grad)
        return grads

    return Tensor._make(out, (x, *trainable), backward)


def check_checkpointable(model) -> None:
    """ValueError when recomputing a block would not reproduce its first forward (dropout,
    experts)."""
    config = model.config
    if config.dropout > 0:
        raise ValueError("--checkpoint-activations needs dropout 0 (the model has "
                         f"{config.dropout}): the recomputed "
                         "forward would draw different dropout masks")
    if config.mlp == "moe" and config.aux_loss_coef > 0:
        raise ValueError("--checkpoint-activations does not support mixture-of-experts blocks with "
                         "a load-balancing "
                         "loss (it is taken from the forward that the recomputation replaces)")


def enable_checkpointing(model, enabled: bool = True):
    """Make ``model``'s training forwards recompute each block in the backward;
    returns the model."""
    if enabled:
        check_checkpointable(model)
    model.checkpoint_activations = enabled
    return model


__all__ = ["checkpoint", "enable_checkpointing", "check_checkpointable"]
