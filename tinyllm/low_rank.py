"""Low-rank factorisation: a Linear layer's weight W (out × in) replaced by two thinner matrices.

The singular value decomposition writes any W as a sum of rank-one matrices of decreasing weight,

    W = U Σ Vᵀ = Σ_i σ_i u_i v_iᵀ          σ_1 ≥ σ_2 ≥ … ≥ 0

and its first r terms W_r are the closest rank-r matrix to W (Eckart–Young): the error ‖W − W_r‖_F²
= Σ_{i>r} σ_i² is exactly the squared singular values ("energy") left out. So the rank of each layer
is chosen by an energy threshold e: the smallest r with Σ_{i≤r} σ_i² ≥ e · Σ_i σ_i² (e = 0.9 keeps
90% of ‖W‖_F²).

W_r is stored as two Linear layers, the singular values' square roots shared between them:

    down = √Σ_r V_rᵀ   (r × in)          up = U_r √Σ_r   (out × r)          W_r = up · down

so y = x W_rᵀ + b = (x downᵀ) upᵀ + b, with r·(in + out) weights and multiply-adds per token instead
of in·out. That pays only while r < in·out / (in + out) (half the side of a square W); a layer whose
rank would not be below that stays as it is. Trained weights are far from low rank, so a high
threshold saves little and a low one costs perplexity: the README's table shows both.

Only the blocks' attention and MLP layers are factored (not the embeddings, the head or a MoE
router). ``factorize_model`` works in place; config.json records the ranks as
``"low_rank": {layer: rank}`` (``checkpoint.layout_config``), from which ``factored_layout``
rebuilds the layers before the weights load.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import backend
from .nn import Linear, Module
from .quantize import int8_layers


class LowRankLinear(Module):
    """y = (x Aᵀ) Bᵀ + b: a Linear layer factored through rank r, A = ``down.weight`` (r, in) and
    B = ``up.weight`` (out, r), the bias on ``up``. Two ordinary linear ops, so it trains like any
    layer."""

    def __init__(self, in_features, out_features, rank, bias=True, generator=None):
        self.down = Linear(in_features, rank, False, None, generator)
        self.up = Linear(rank, out_features, bias, None, generator)

    rank = property(lambda self: self.down.weight.shape[0])

    def forward(self, x):                                     # (..., in) → (..., r) → (..., out)
        return self.up(self.down(x))


def check_energy(energy) -> float:
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0.0 < energy <= 1.0:
        raise ValueError("the energy threshold must be in (0, 1] (the share of Σσ² to keep), got "
                         f"{energy!r}")
    return float(energy)


def energy_rank(singular_values, energy: float) -> int:
    """The smallest r with σ_1² + … + σ_r² ≥ energy · Σ σ² (at least 1)."""
    energy = check_energy(energy)
    squared = np.asarray(singular_values, dtype=np.float64) ** 2
    total = squared.sum()
    if total == 0:
        return 1
    # kept[r - 1]: the share the first r keep
    kept = np.cumsum(squared) / total
    return int(min(np.searchsorted(kept, energy * (1 - 1e-12)) + 1, len(squared)))


def factorable_layers(model) -> list[tuple[str, Linear]]:
    """(name, layer) of every Linear of the blocks' attention and MLP (not a MoE router)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, Linear) and name.startswith("blocks.") and not name.endswith("router")]


def factorize_model(model, energy: float) -> dict:
    """Replace each factorable Linear whose energy rank saves weights by a ``LowRankLinear``, in
    place.

    Returns {layer: {"rank": r, "full_rank": min(out, in), "kept_energy": share of Σσ²}} for the
    factored ones.
    """
    energy = check_energy(energy)
    if getattr(model, "lora_config", None) is not None or int8_layers(model):
        raise ValueError("factor a plain float model: merge LoRA adapters first, and quantize to "
                         "int8 after factoring")
    report = {}
    for name, layer in factorable_layers(model):
        weight = backend.to_numpy(layer.weight.data).astype(np.float64)      # (out, in)
        u, sigma, vt = np.linalg.svd(weight, full_matrices=False)           # W = U Σ Vᵀ
        rank = energy_rank(sigma, energy)
        out_features, in_features = weight.shape
        if rank * (in_features + out_features) >= in_features * out_features:
            # two factors would be larger
            continue
        root = np.sqrt(sigma[:rank])                                          # √Σ_r
        factored = LowRankLinear(in_features, out_features, rank, layer.bias is not None)
        # √Σ_r V_rᵀ, U_r √Σ_r
        factors = {"down.weight": root[:, None] * vt[:rank], "up.weight": u[:, :rank] * root}
        if layer.bias is not None:
            factors["up.bias"] = layer.bias.data
        factored.load_state_dict(factors)
        model.set_submodule(name, factored)
        report[name] = {"rank": rank, "full_rank": int(len(sigma)),
                        "kept_energy": float((sigma[:rank] ** 2).sum() / max((sigma ** 2).sum(),
                                                                             1e-300))}
    return report


def low_rank_ranks(model) -> dict[str, int]:
    """{layer name: rank} of the model's factored layers."""
    return {name: int(m.rank) for name, m in model.named_modules() if isinstance(m, LowRankLinear)}


def factored_layout(model, ranks: dict, where="config.json") -> None:
    """Turn the Linear layers named in ``ranks`` into (untrained) ``LowRankLinear`` layers of those
    ranks, for a factored checkpoint to load into; ValueError naming ``where`` for a layer or rank
    that cannot be."""
    if not isinstance(ranks, dict):
        raise ValueError(f"{where}: 'low_rank' must map layer names to ranks, got {ranks!r}")
    for name, rank in ranks.items():
        try:
            layer = model.get_submodule(name)
        except (AttributeError, IndexError):
            layer = None
        if not isinstance(layer, Linear):
            raise ValueError(f"{where}: low_rank names {name!r}, which is not a Linear layer of "
                             "the model")
        out_features, in_features = layer.weight.shape
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(out_features,
                                                                                       in_features):
            raise ValueError(f"{where}: the rank of {name!r} must be an integer in "
                             f"[1, {min(out_features, in_features)}], got {rank!r}")
        model.set_submodule(name, LowRankLinear(in_features, out_features, rank,
                                                layer.bias is not None))
