"""Structured pruning: remove whole attention heads and whole MLP channels, so the matrices
themselves shrink.

Unstructured pruning (``quantize.prune_global``) zeroes single weights and saves nothing: the
matrices keep their shape. Removing a unit removes rows and columns. Head h of a layer is D rows of
each of q, k and v in ``attn.qkv`` and D columns of ``attn.proj``; MLP channel j is row j of
``mlp.fc`` (of ``mlp.gate`` and ``mlp.up`` for SwiGLU) and column j of ``mlp.proj``. Without them
every matmul of the layer is smaller: fewer parameters, a smaller KV cache (fewer heads), faster
steps.

**Which units.** The one that writes least into the residual stream on a little calibration text.
Head h adds Y_h W_hᵀ to the stream, Y_h (N, D) its outputs on N tokens and W_h (C, D) its columns of
``attn.proj``; channel j adds X_j W_jᵀ, the rank-one product of its activations X_j (N, 1) and its
column W_j of ``mlp.proj``. The score of a unit is the Frobenius norm of what it adds,

    ‖Y_u W_uᵀ‖_F² = Σ_{d,e} G_u[d, e] (W_uᵀ W_u)[d, e]        with G_u = Y_uᵀ Y_u (D × D)

so only the small Gram matrices G_u are accumulated over the calibration batches (for a channel, D =
1 and the score is ‖X_j‖ · ‖W_j‖). This is the weight × activation rule of Wanda (Sun et al. 2023)
applied to whole units; weight norms alone would ignore that some heads hardly fire.

**How many.** The same number in every layer, the lowest-scoring ones of each layer, so that one
``GPTConfig`` still describes the model: ``n_head`` (and ``n_kv_head``) fewer with ``head_dim``
keeping the heads' width (H·D is then less than C), ``mlp_hidden`` the new MLP width. With
grouped-query attention the unit is a key/value head together with the query heads that read it. The
pruned model is a new ``GPT`` built from that config with the kept rows and columns loaded: it
saves, loads and generates like any other. Pruning costs perplexity; a short finetune (a few
pretraining steps: ``tinyllm compress --finetune-steps``) recovers part.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from . import backend
from .autograd import no_grad
from .nn import Linear, Module


class _InputGrams(Module):
    """Wraps a Linear layer and, as data flows through, adds up the Gram matrix of each unit of its
    input: the input's last axis holds U units of width D side by side; ``grams`` is (U, D, D)."""

    def __init__(self, layer, width: int):
        self.layer, self.width, self.grams = layer, width, 0.0

    def forward(self, x):
        units = backend.to_numpy(x.data).astype(np.float64).reshape(-1, x.shape[-1] // self.width,
                                                                    self.width)
        # Σ_n y_u y_uᵀ, (U, D, D)
        self.grams = self.grams + np.einsum("nud,nue->ude", units, units)
        return self.layer(x)


def unit_scores(grams, weight, width: int) -> np.ndarray:
    """‖Y_u W_uᵀ‖_F of each unit u from its input Gram G_u (U, D, D) and the layer's weight (C,
    U·D)."""
    w = backend.to_numpy(weight).astype(np.float64)
    # (C, U, D): W_u side by side
    columns = w.reshape(w.shape[0], -1, width)
    squared = np.einsum("ude,cud,cue->u", grams, columns, columns)              # Σ G_u ⊙ W_uᵀ W_u
    return np.sqrt(np.maximum(squared, 0.0))


def importance(model, calibration, batch_size: int = 8) -> dict:
    """Scores of every head (n_layer, n_head) and MLP channel (n_layer, hidden) on ``calibration``
    token ids (B, T) — see the module docstring. The model is left as it was."""
    calibration = np.asarray(calibration)
    if calibration.ndim != 2 or calibration.shape[0] == 0:
        raise ValueError("calibration data must be token ids of shape (batch, time), got shape "
                         f"{calibration.shape}")
    config = model.config
    recorders = []
    for i, block in enumerate(model.blocks):
        recorders.append((f"blocks.{i}.attn.proj", _InputGrams(block.attn.proj, config.head_size)))
        if config.mlp != "moe":
            recorders.append((f"blocks.{i}.mlp.proj", _InputGrams(block.mlp.proj, 1)))
    was_training = model.training
    for name, recorder in recorders:
        model.set_submodule(name, recorder)
    try:
        model.eval()
        with no_grad():
            for start in range(0, len(calibration), batch_size):
                model(calibration[start:start + batch_size])
    finally:
        for name, recorder in recorders:
            model.set_submodule(name, recorder.layer)
        model.train(was_training)
    scores = {name: unit_scores(r.grams, r.layer.weight.data, r.width) for name, r in recorders}
    heads = np.stack([scores[f"blocks.{i}.attn.proj"] for i in range(config.n_layer)])
    mlp = None if config.mlp == "moe" else np.stack([scores[f"blocks.{i}.mlp.proj"]
                                                     for i in range(config.n_layer)])
    return {"heads": heads, "mlp": mlp}


def _columns(units, width: int, offset: int = 0) -> np.ndarray:
    """The indices of the channels of ``units`` (each ``width`` wide) along an axis, after
    ``offset``."""
    return np.concatenate([offset + np.arange(u * width, (u + 1) * width) for u in units])


def _check_plain(model) -> None:
    for i, block in enumerate(model.blocks):
        layers = [("attn.qkv", block.attn.qkv), ("attn.proj", block.attn.proj)]
        if model.config.mlp != "moe":
            layers += [(f"mlp.{n}", getattr(block.mlp, n)) for n in ("fc", "gate", "up", "proj")
                       if hasattr(block.mlp, n)]
        for name, layer in layers:
            if type(layer) is not Linear:
                raise ValueError("structured pruning needs plain float Linear layers, but "
                                 f"blocks.{i}.{name} is a {type(layer).__name__}: prune first, "
                                 "then factor, quantize or add LoRA")


def _kept_groups(head_scores, n_kv_head: int, remove: int) -> list[int]:
    """The key/value groups one layer keeps: all but the ``remove`` whose query heads score lowest
    together."""
    # (H_kv, G): kv head j, its queries
    groups = head_scores.reshape(n_kv_head, -1)
    group_scores = np.sqrt((groups ** 2).sum(axis=1))
    return sorted(np.argsort(-group_scores, kind="stable")[: n_kv_head - remove].tolist())


def _check_amounts(config, heads, mlp_fraction) -> int:
    """The MLP width left after removing ``mlp_fraction`` of it; ValueError for amounts that cannot
    be."""
    if isinstance(heads, bool) or not isinstance(heads, numbers.Integral) or heads < 0:
        raise ValueError("the number of heads to prune must be a non-negative integer, got "
                         f"{heads!r}")
    if heads >= config.kv_heads:
        unit = "heads" if config.kv_heads == config.n_head else "key/value groups"
        raise ValueError(f"cannot prune {heads} {unit} per layer: each layer has {config.kv_heads} "
                         f"{unit}, and at least one must remain")
    if not isinstance(mlp_fraction, numbers.Real) or not 0.0 <= mlp_fraction < 1.0:
        raise ValueError("the fraction of MLP channels to prune must be in [0, 1), got "
                         f"{mlp_fraction!r}")
    if config.mlp == "moe" and mlp_fraction:
        raise ValueError("pruning MLP channels of a mixture-of-experts model is not supported "
                         "(prune its heads)")
    hidden = config.hidden_size - int(round(mlp_fraction * config.hidden_size))
    return max(hidden, 1)


def prune_structured(model, calibration, heads: int = 0, mlp_fraction: float = 0.0,
                     batch_size: int = 8):
    """A smaller copy of ``model`` without its ``heads`` least important heads per layer (key/value
    groups with grouped-query attention) and the ``mlp_fraction`` least important MLP channels per
    layer, scored on ``calibration`` token ids (B, T). Returns (pruned GPT, report); ``model`` is
    unchanged."""
    from .model import GPT
    config = model.config
    hidden = _check_amounts(config, heads, mlp_fraction)
    _check_plain(model)
    scores = importance(model, calibration, batch_size)
    state = {name: backend.to_numpy(array) for name, array in model.state_dict().items()}
    n_kv, d = config.kv_heads, config.head_size
    group = config.n_head // n_kv
    report = {"parameters_before": model.num_parameters(), "heads_kept": [], "mlp_kept": hidden}
    for i in range(config.n_layer):
        p = f"blocks.{i}."
        if heads:
            kv_keep = _kept_groups(scores["heads"][i], n_kv, heads)
            q_keep = [j * group + g for j in kv_keep for g in range(group)]
            rows = np.concatenate([_columns(q_keep, d), _columns(kv_keep, d, config.n_head * d),
                                   _columns(kv_keep, d, (config.n_head + n_kv) * d)])
            _take(state, p + "attn.qkv", rows, axis=0)
            _take(state, p + "attn.proj.weight", _columns(q_keep, d), axis=1)
            report["heads_kept"].append(q_keep)
        if hidden < config.hidden_size:
            keep = np.sort(np.argsort(-scores["mlp"][i], kind="stable")[:hidden])
            for name in ("mlp.fc", "mlp.gate", "mlp.up"):
                _take(state, p + name, keep, axis=0)
            _take(state, p + "mlp.proj.weight", keep, axis=1)
    new_config = dataclasses.replace(config,
                                     mlp_hidden=hidden if hidden < config.hidden_size
                                     else config.mlp_hidden)
    if heads:
        new_config = dataclasses.replace(new_config, n_head=(n_kv - heads) * group, head_dim=d,
                                         n_kv_head=None if config.n_kv_head is None else n_kv
                                         - heads)
    with backend.default_dtype(str(model.wte.weight.dtype)):
        pruned = GPT(new_config)
    pruned.load_state_dict(state)
    pruned.train(model.training)
    report["parameters_after"] = pruned.num_parameters()
    report["heads_removed_per_layer"] = int(heads)
    report["mlp_removed_per_layer"] = int(config.hidden_size - hidden)
    return pruned, report


def _take(state: dict, name: str, index, axis: int) -> None:
    """Keep ``index`` along ``axis`` of a weight (and, for a layer name, of its weight and bias if
    present)."""
    for key in ((name,) if name.endswith(".weight") else (name + ".weight", name + ".bias")):
        if key in state:
            state[key] = np.take(state[key], index, axis=axis)
