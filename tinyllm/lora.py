"""LoRA: finetune a big frozen weight through a small low-rank correction (Hu et al. 2021).

A frozen linear layer y = x Wᵀ + b (W is out × in) gets a trainable detour of rank r:

    y = x Wᵀ + b + s · (x Aᵀ) Bᵀ          A (r × in), B (out × r), s = alpha / r

    x (N, in) ──Wᵀ──────────────────────────────► (N, out) ──+──► y
        └─────Aᵀ──► u (N, r) ──Bᵀ──► (N, out) ──× s─────────┘

Only A and B learn: r·(in + out) numbers per layer instead of in·out, so AdamW keeps two moments for
a few percent of the model, and an adapter file is a few hundred KB. B starts at zero, so a fresh
LoRA model computes exactly what the base model computes, and training moves it away from there. A
starts Kaiming-uniform, as in Microsoft's ``loralib`` and Hugging Face's PEFT: U(−1/√in, 1/√in)
(``kaiming_uniform_(a=√5)`` on an (r × in) matrix), so u = x Aᵀ has roughly the scale of x.
s = alpha / r keeps the size of the update roughly independent of r, so a learning rate tuned for
one rank works for others.

``apply_lora(model, ...)`` swaps matching ``Linear`` layers for ``LoRALinear`` (same ``weight`` and
``bias`` Parameters, so the base state dict still loads by name) and freezes every other parameter;
``merge_lora(model)`` folds s·B A into W and puts plain ``Linear`` layers back; ``save_adapter`` /
``load_adapter`` / ``load_pretrained_with_adapter`` keep the adapter as its own small file next to a
base run (the same files hold prompt and prefix tuning's adapters: ``tinyllm.prompt_tuning``).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from . import backend
from .autograd import Tensor, fused_op
from .functional.dense import dropout_mask
from .functional.int8 import int8_linear_backward, int8_linear_forward
from .files import atomic_write_json, read_json
from .nn import Linear, Module, Parameter, init_rng
from .quantize import Int8Linear, Int8Weight, int8_layers

# Every Linear of attention and of the MLP, whichever the architecture has: GPT-2's mlp.fc, Llama's
# SwiGLU mlp.gate and mlp.up (an MoE model's experts are stacked weights, not Linear layers:
# attention only there).
DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.gate", "mlp.up", "mlp.proj")
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"


# ------------------------------------------------------------------------------------- the fused op

def lora_linear_forward(x, w, b, lora_a, lora_b, scale: float, mask=None, w_scale=None):
    """y = x Wᵀ + b + s · (x̃ Aᵀ) Bᵀ, with x̃ = x ⊙ M (the adapter's dropout mask M, or x itself
    when ``mask`` is None). x (..., in), w (out, in), b (out,) or None, A (r, in), B (out, r),
    s = ``scale``; y (..., out). With ``w_scale`` (out,), w is int8 q and W = q · s_w row by row
    (``functional.int8``)."""
    x2d = x.reshape(-1, x.shape[-1])                         # X (N, in)
    x_adapter = x2d if mask is None else x2d * mask          # x̃ = X ⊙ M
    u = x_adapter @ lora_a.T                                 # u = x̃ Aᵀ          (N, r)
    base_cache = None
    if w_scale is None:
        y = x2d @ w.T                                        # X Wᵀ              (N, out)
    else:
        y, base_cache = int8_linear_forward(x2d, w, w_scale, None)   # X (q · s_w)ᵀ
    y += (u @ lora_b.T) * x2d.dtype.type(scale)              # + s · u Bᵀ        (N, out)
    if b is not None:
        y += b                                               # + b
    cache = (x2d, x.shape, w, base_cache, lora_a, lora_b, scale, mask, x_adapter, u)
    return y.reshape(*x.shape[:-1], w.shape[0]), cache


def lora_linear_backward(dy, cache, needs=(True, False, False, True, True)):
    """One gradient per input (x, W, b, A, B), the chain rule through each product (dY (N, out)):
        dB = s · dYᵀ u                  (out, N) @ (N, r)
        du = s · dY B                   (N, out) @ (out, r)
        dA = duᵀ x̃                      (r, N) @ (N, in)
        dX = dY W + (du A) ⊙ M          (N, out) @ (out, in) + (N, r) @ (r, in)
        dW = dYᵀ X,  db = Σ_n dY[n]     only if W / b require grad — in LoRA they are frozen, so
                                        the (out × N) @ (N × in) product of a full finetune is
                                        skipped."""
    x2d, x_shape, w, base_cache, lora_a, lora_b, scale, mask, x_adapter, u = cache
    dy2d = dy.reshape(-1, w.shape[0])                        # dY (N, out)
    s = dy2d.dtype.type(scale)
    dB = (dy2d.T @ u) * s if needs[4] else None              # undoes y += s · u Bᵀ  (out, r)
    du = (dy2d @ lora_b) * s                                 # undoes y += s · u Bᵀ  (N, r)
    dA = du.T @ x_adapter if needs[3] else None              # undoes u = x̃ Aᵀ       (r, in)
    dx = None
    if needs[0]:
        dx_adapter = du @ lora_a                             # undoes u = x̃ Aᵀ       (N, in)
        if mask is not None:
            dx_adapter *= mask                               # undoes x̃ = X ⊙ M
        if base_cache is None:
            dx_base = dy2d @ w                               # undoes y = X Wᵀ: dY W
        else:
            dx_base = int8_linear_backward(dy2d, base_cache, (True, False, False, False))[0]
        dx = (dx_base + dx_adapter).reshape(x_shape)
    dW = dy2d.T @ x2d if needs[1] else None                  # undoes y = X Wᵀ: dYᵀ X
    db = dy2d.sum(axis=0) if needs[2] else None              # undoes y += b
    return dx, dW, db, dA, dB


def lora_linear(x: Tensor, weight: Tensor | Int8Weight, bias: Tensor | None, lora_a: Tensor,
                lora_b: Tensor, scale: float, dropout: float = 0.0, training: bool = False,
                generator=None) -> Tensor:
    """y = x Wᵀ + b + s · (x̃ Aᵀ) Bᵀ, with x̃ = dropout(x) on the adapter's path only (as in PEFT)
    (``lora_linear_forward``). Shapes: x (..., in), W (out, in), b (out,), A (r, in), B (out, r),
    y (..., out). Saves u = x̃ Aᵀ (N × r: small) and the dropout mask if any; x, W, A, B are inputs
    it keeps anyway.

    ``weight`` may be an ``Int8Weight`` (QLoRA-style, Dettmers et al. 2023: a frozen int8 base,
    float adapters): X Wᵀ and dY W then come from the int8 rows (``functional.int8``), and W never
    gets a gradient.
    """
    c_out, c_in = weight.shape
    rank = lora_a.shape[0]
    if x.shape[-1] != c_in:
        raise ValueError(f"lora_linear: input of shape {x.shape} has {x.shape[-1]} features but "
                         f"the weight {weight.shape} expects {c_in}")
    if lora_a.shape != (rank, c_in) or lora_b.shape != (c_out, rank):
        raise ValueError(f"lora_linear: A {lora_a.shape} and B {lora_b.shape} must be ({rank}, "
                         f"{c_in}) and ({c_out}, {rank}) for a weight of shape {weight.shape}")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"lora_linear: bias of shape {bias.shape} does not match the weight's "
                         f"{c_out} outputs")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora_linear: dropout must be in [0, 1), got {dropout}")
    mask = None
    if training and dropout > 0.0:
        generator = generator if generator is not None else backend.global_rng()
        mask = dropout_mask((x.size // c_in, c_in), dropout, x.dtype, generator)
    quantized = isinstance(weight, Int8Weight)
    base = weight.int8 if quantized else weight     # the graph's input for W (frozen when int8)
    y, cache = lora_linear_forward(x.data, base.data, None if bias is None else bias.data,
                                   lora_a.data, lora_b.data, scale, mask,
                                   weight.scale.data if quantized else None)
    return fused_op(lora_linear_backward, y, cache, x, base, bias, lora_a, lora_b)


# ---------------------------------------------------------------------------------------- the layer

class LoRALinear(Module):
    """A ``Linear`` with a frozen ``weight``/``bias`` (the very Parameters of the layer it wraps)
    and a trainable low-rank update ``lora_A`` (r × in), ``lora_B`` (out × r), scaled by
    alpha / r."""

    def __init__(self, base: Linear | Int8Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator=None):
        out_features, in_features = base.weight.shape
        self.weight = base.weight                             # a Parameter, or an Int8Weight
        self.bias = base.bias
        for p in base.parameters():
            p.requires_grad = False
        generator = generator if generator is not None else backend.global_rng()
        bound = 1.0 / math.sqrt(in_features)       # Kaiming-uniform with a = √5, as in PEFT
        a = generator.random((rank, in_features), dtype=backend.dtype) * (2 * bound) - bound
        self.lora_A = Parameter(backend.asarray(a, dtype=base.weight.dtype))
        self.lora_B = Parameter(backend.xp.zeros((out_features, rank), dtype=base.weight.dtype))
        self.rank, self.alpha, self.dropout = rank, float(alpha), float(dropout)
        self.scale = self.alpha / rank
        # dropout draws from the global generator (seeded by the training loop)
        self.generator = None

    def forward(self, x):
        return lora_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale,
                           self.dropout, self.training, self.generator)

    def delta_weight(self):
        """s · B A: the (out × in) matrix this adapter adds to W."""
        return (self.lora_B.data @ self.lora_A.data) * self.weight.dtype.type(self.scale)


# ------------------------------------------------------------------------------------ apply / merge

def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _selects(param_name: str, pattern: str) -> bool:
    """Whether ``pattern`` names this parameter, its module, or a module above it: "classifier"
    selects ``classifier.weight``, "blocks.5" selects everything in block 5, "ln_1" selects
    ``blocks.0.ln_1.weight`` in every block (a suffix of the module path, on whole name parts)."""
    module = param_name.rpartition(".")[0]
    return (param_name == pattern or param_name.startswith(pattern + ".")
            or module == pattern or module.endswith("." + pattern))


def freeze_all_but(model, trainable=()) -> tuple:
    """Freeze every parameter of ``model`` except those that ``trainable`` names (see
    ``_selects``); returns ``trainable`` as a tuple of names."""
    trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)
    for name, p in model.named_parameters():
        p.requires_grad = any(_selects(name, t) for t in trainable)
    return trainable


def _check_settings(rank, alpha, dropout, targets):
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, numbers.Real) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if isinstance(targets, str) or not targets:
        raise ValueError(f"LoRA targets must be a non-empty list of module-name suffixes such as "
                         f"{list(DEFAULT_TARGETS)}, got {targets!r}")


def apply_lora(model, rank: int = 8, alpha: float = 16, dropout: float = 0.0, targets=None,
               trainable=(), seed: int = 0, verbose: bool = False) -> dict:
    """Wrap every ``Linear`` whose module name ends with one of ``targets`` in a ``LoRALinear`` and
    freeze every other parameter, except those that ``trainable`` names (a module path or its
    suffix, e.g. ``("classifier",)`` to train a new classification head alongside the adapters, or
    ``("ln_1", "ln_2", "ln_f")`` for every layer norm).

    A target matches on whole name parts: "attn.qkv" matches ``blocks.3.attn.qkv`` but not
    ``xattn.qkv``. Every target given must match at least one ``Linear``. ``targets=None`` means
    those of ``DEFAULT_TARGETS`` that the model has (all of attention and the MLP, for GPT-2, Llama
    and MoE models alike). Returns ``{"wrapped": names, "trainable": n, "total": n, "fraction":
    n/n}`` (``verbose=True`` also prints it). The settings are stored on the model as
    ``model.lora_config`` for ``save_adapter``.
    """
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("this model already has LoRA adapters; merge_lora(model) first to add "
                         "new ones")
    linears = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (Linear, Int8Linear))]
    if targets is None:
        targets = tuple(t for t in DEFAULT_TARGETS
                        if any(_matches(name, t) for name, _ in linears)) or DEFAULT_TARGETS
    targets = tuple(targets) if not isinstance(targets, str) else targets
    _check_settings(rank, alpha, dropout, targets)
    unmatched = [t for t in targets if not any(_matches(name, t) for name, _ in linears)]
    if unmatched:
        suffixes = sorted({".".join(n.split(".")[-2:]) for n, _ in linears})
        raise ValueError(f"LoRA target(s) {unmatched} match no Linear layer of the model; "
                         f"its Linear layers end with: {', '.join(suffixes)}")
    trainable = freeze_all_but(model, trainable)
    generator = init_rng(seed)
    wrapped = []
    for name, linear in linears:
        if any(_matches(name, t) for t in targets):
            model.set_submodule(name, LoRALinear(linear, rank, alpha, dropout, generator))
            wrapped.append(name)
    model.lora_config = {"rank": int(rank), "alpha": float(alpha), "dropout": float(dropout),
                         "targets": list(targets), "trainable": list(trainable)}
    report = parameter_report(model)
    report["wrapped"] = wrapped
    if verbose:
        print(f"LoRA rank {rank}, alpha {alpha:g} on {len(wrapped)} layers: "
              f"{format_report(report)}")
    return report


def parameter_report(model) -> dict:
    """Trainable and total parameter counts of a model, and their ratio."""
    total = model.num_parameters()
    trainable = model.num_parameters(trainable_only=True)
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def format_report(report: dict) -> str:
    return (f"{report['trainable']:,} trainable of {report['total']:,} parameters "
            f"({100 * report['fraction']:.2f}%)")


def lora_layers(model):
    """(name, LoRALinear) for every adapted layer of the model."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model):
    """Fold each adapter into its weight (W ← W + s·B A) and put a plain ``Linear`` back in its
    place.

    The merged model computes the same function with no extra cost per token. Afterwards every
    parameter is trainable again (a plain model, as before ``apply_lora``), except int8 weights. An
    int8 base layer becomes a float Linear holding q·s + s·B A: rounding that back to int8 would
    round most of the update away.
    Returns the model.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("merge_lora: the model has no LoRA layers (apply_lora was not called, or "
                         "it was merged already)")
    for name, layer in layers:
        if isinstance(layer.weight, Int8Weight):
            weight = Parameter(layer.weight.dequantize() + layer.delta_weight(),
                               dtype=layer.weight.dtype)
        else:
            weight = layer.weight
            weight.data += layer.delta_weight()
        plain = Linear.__new__(Linear)
        plain.weight, plain.bias = weight, layer.bias
        model.set_submodule(name, plain)
    int8 = {id(p) for name in int8_layers(model) for p in model.get_submodule(name).parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) not in int8
    model.lora_config = None
    return model


# -------------------------------------------------------------------------------------------- files

def adapter_state(model) -> dict:
    """name → array of what the adapter training changed: every trainable parameter (A, B, and any
    ``trainable`` extras such as a classification head)."""
    return {name: p.data for name, p in model.named_parameters() if p.requires_grad}


# What an adapter directory can hold: the attribute its settings live on in a model, and the format
# name its adapter_config.json records (prompt and prefix tuning: ``tinyllm.prompt_tuning``).
ADAPTER_FORMATS = {"lora_config": "tinyllm-lora", "prompt_tuning_config": "tinyllm-prompt-tuning"}


def adapter_settings(model):
    """(format, settings) of the adapter ``model`` carries (LoRA, or prompt/prefix tuning), or
    (None, None)."""
    for attribute, name in ADAPTER_FORMATS.items():
        if getattr(model, attribute, None) is not None:
            return name, getattr(model, attribute)
    return None, None


def save_adapter(directory, model, base=None, extra_config: dict | None = None) -> Path:
    """Write ``adapter.safetensors`` (the trainable tensors) and ``adapter_config.json`` (the
    adapter's settings, the path of the ``base`` run and ``extra_config``) into ``directory``.
    Returns the weights' path. Works for LoRA and for prompt/prefix tuning
    (``tinyllm.prompt_tuning``) alike."""
    from .safetensors import save_file
    fmt, config = adapter_settings(model)
    if config is None:
        raise ValueError("save_adapter: the model has no adapter (call apply_lora or "
                         "apply_prompt_tuning first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: backend.to_numpy(array) for name, array in adapter_state(model).items()}
    save_file(weights, directory / ADAPTER_WEIGHTS, metadata={"format": fmt})
    record = {"format": fmt, **config, **(extra_config or {})}
    if base is not None:
        record["base"] = str(base)
    atomic_write_json(directory / ADAPTER_CONFIG, record)
    return directory / ADAPTER_WEIGHTS


def read_adapter_config(directory) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in '{directory}' (is it an adapter "
                                "directory?)")
    config = read_json(path, what="adapter config")
    if config.get("format") not in ADAPTER_FORMATS.values():
        raise ValueError(f"{path} is not a tinyllm adapter config (format "
                         f"{config.get('format')!r}; expected one of "
                         f"{', '.join(ADAPTER_FORMATS.values())})")
    return config


def load_adapter(model, directory) -> dict:
    """Apply the adapter saved in ``directory`` to ``model`` (LoRA with its settings, unless the
    model has LoRA already; or prompt/prefix tuning, which first checks that the model is the one it
    was trained on) and load its tensors. Every saved tensor must exist in the model with the same
    shape. Returns the adapter config."""
    from .safetensors import load_file
    config = read_adapter_config(directory)
    if config["format"] == ADAPTER_FORMATS["prompt_tuning_config"]:
        from .prompt_tuning import apply_saved_prompt_tuning
        apply_saved_prompt_tuning(model, config, Path(directory) / ADAPTER_CONFIG)
    elif getattr(model, "lora_config", None) is None:
        apply_lora(model, config["rank"], config["alpha"], config["dropout"], config["targets"],
                   config.get("trainable", ()))
    weights = load_file(Path(directory) / ADAPTER_WEIGHTS)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"{Path(directory) / ADAPTER_WEIGHTS}: tensors {unknown[:5]} are not "
                         "parameters of the model")
    model.load_state_dict(weights, strict=False)
    return config


def load_pretrained_with_adapter(directory, base=None):
    """(model, tokenizer) = the base run named in ``adapter_config.json`` (or ``base``) with the
    adapter in ``directory`` applied. A relative base path is tried as given, then relative to the
    adapter directory."""
    from .checkpoint import load_pretrained
    config = read_adapter_config(directory)
    base = base if base is not None else config.get("base")
    if base is None:
        raise ValueError(f"{Path(directory) / ADAPTER_CONFIG} names no base run; pass base=")
    base_path = Path(base)
    if not base_path.exists() and (Path(directory) / base_path).exists():
        base_path = Path(directory) / base_path
    model, tokenizer = load_pretrained(base_path)
    load_adapter(model, directory)
    return model, tokenizer
