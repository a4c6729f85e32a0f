"""Making a trained model smaller: int8 weights used as int8, float16 storage, magnitude pruning.

**int8, symmetric, per output channel.** Each row ``w`` of a Linear weight (out, in) (one output
channel) or of an Embedding table (one token's vector) gets its own scale::

    scale = max|w| / 127          q = clip(round(w / scale), -127, 127)  (int8)          w ≈ q · scale

Symmetric: zero maps to 0 exactly and no offset is stored. Per row: one large weight in one row does
not blur every other row's precision. The rounding error of each weight is at most scale/2, i.e. at
most 1/254 of its row's largest magnitude. -128 is left unused so that the range is symmetric. A row
of zeros gets scale 0 and q = 0. Biases and LayerNorm parameters are tiny and sensitive, so they
stay float.

``quantize_model`` swaps every ``Linear`` for an ``Int8Linear`` and every ``Embedding`` for an
``Int8Embedding``; both hold an ``Int8Weight`` (the int8 matrix + its scales) and compute with it
directly (``functional.int8``: row blocks widened inside the product, never a float copy of W), so
the model takes about a quarter of the memory. A tied output head reads the int8 token table the
same way (``attend``). In a state dict and in ``model.safetensors`` the two arrays are ``NAME.int8``
(int8, the weight's shape) and ``NAME.scale`` (one per row), with ``"quantization": "int8"`` in
config.json; ``checkpoint.load_pretrained`` sees that key and calls ``load_quantized_weights``,
which builds the int8 layers straight from the file. A float32 weight takes 4 bytes, its int8 form 1
byte plus 4 bytes per row: the file shrinks almost 4×. int8 weights cannot train (a step smaller
than a scale step rounds away): such a model is finetuned with LoRA, whose adapters are float
(QLoRA-style; ``tinyllm.lora``).

**float16 storage.** Every float tensor written as F16 (2 bytes: half the file). ``load_pretrained``
upcasts to float32 as it loads, so nothing else changes. float16 keeps 11 significant bits (a
relative rounding error ≤ 2⁻¹¹ ≈ 0.05%) and overflows past ±65504, which is checked.

**Global magnitude pruning.** Zero the fraction ``sparsity`` of all Linear weights with the smallest
|w|, ranked across all layers at once (so layers with many small weights lose more). Embeddings,
biases and norms are kept. This saves nothing, stored or at run time: the file stays dense (a zero
takes as much room as any other number) and so do the matmuls; only a sparse format and sparse
kernels would gain from it. ``tinyllm.pruning`` removes whole heads and channels instead, which does
shrink the matrices.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import backend
from . import functional as F
from .files import read_json
from .nn import Embedding, Linear, Module, Parameter
from .safetensors import load_file, load_metadata

INT8_SUFFIX, SCALE_SUFFIX = ".int8", ".scale"
QMAX = 127


# -------------------------------------------------------------------------------------- int8


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 of ``weight``'s shape, scale float32 (rows,)) with
    ``weight ≈ q * scale[:, None]``."""
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"int8 quantization is per row of a 2-D weight, got shape {weight.shape}")
    scale = np.abs(weight).max(axis=1) / np.float32(QMAX)                  # (rows,)
    # an all-zero row stays zero
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(weight / safe[:, None]), -QMAX, QMAX).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 ``q * scale`` per row: the inverse of ``quantize_int8`` up to rounding."""
    return q.astype(np.float32) * scale.astype(np.float32)[:, None]


def quantizable_names(model) -> list[str]:
    """Parameter names of every Linear and Embedding weight (the matrices; not biases, not
    norms)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, (Linear, Embedding)):
            names.append(f"{module_name}.weight" if module_name else "weight")
    params = dict(model.named_parameters())
    return [name for name in names if name in params]              # a tied head appears once


# -------------------------------------------------------------------------------------- int8 layers


class Int8Weight(Module):
    """A weight matrix kept as int8 rows and one float scale per row, W ≈ int8 · scale[:, None]. Its
    parameters are named ``int8`` and ``scale``, so a layer's state dict holds ``….weight.int8`` and
    ``….weight.scale``: the int8 file format itself. Frozen (no gradient reaches it)."""

    def __init__(self, q, scale, dtype=None):
        self.int8 = Parameter(q, requires_grad=False)                      # (out, in) int8
        self.scale = Parameter(scale, requires_grad=False, dtype=dtype)    # (out,) float

    shape = property(lambda self: self.int8.shape)
    dtype = property(lambda self: self.scale.dtype,
                     doc="the float dtype it computes in (a float W's dtype)")

    @classmethod
    def of(cls, weight):
        """The int8 form of a float weight matrix (a Parameter), its scales in the weight's
        dtype."""
        return cls(*quantize_int8(backend.to_numpy(weight.data)), dtype=weight.dtype)

    @classmethod
    def empty(cls, shape, dtype):
        """Zeros of the given (out, in) shape, for a state dict to be loaded into."""
        return cls(np.zeros(shape, dtype=np.int8), np.zeros(shape[0]), dtype=dtype)

    def dequantize(self):
        """The float matrix q · s: a full copy, for merging LoRA into and for export, never for the
        forward."""
        return self.int8.data.astype(self.dtype) * self.scale.data[:, None]


class Int8Linear(Module):
    """A ``Linear`` whose weight is an ``Int8Weight``: y = x (q·s)ᵀ + b computed from the int8
    numbers (``functional.int8``); the bias stays float."""

    def __init__(self, weight: Int8Weight, bias=None):
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return F.int8_linear(x, self.weight.int8, self.weight.scale, self.bias)


class Int8Embedding(Module):
    """An ``Embedding`` whose table is an ``Int8Weight``: a lookup widens only the rows it
    returns."""

    def __init__(self, weight: Int8Weight):
        self.weight = weight

    def forward(self, ids):                                             # (...) → (..., C)
        rows = F.embedding(ids, self.weight.int8)                       # (..., C) int8
        scales = F.embedding(ids, self.weight.scale.reshape(-1, 1))     # (..., 1)
        return rows * scales

    def attend(self, x):
        """x (..., C) → (..., V) = x Wᵀ: a tied output head, from the int8 table."""
        return F.int8_linear(x, self.weight.int8, self.weight.scale)


def _swap_in_int8(model, layer_name: str, weight: Int8Weight, file=None) -> None:
    """Replace the Linear or Embedding at ``layer_name`` by its int8 counterpart holding
    ``weight``."""
    try:
        layer = model.get_submodule(layer_name)
    except (AttributeError, IndexError):
        layer = None
    if isinstance(layer, Linear):
        model.set_submodule(layer_name, Int8Linear(weight, layer.bias))
    elif isinstance(layer, Embedding):
        model.set_submodule(layer_name, Int8Embedding(weight))
    else:
        where = f"{file}: " if file else ""
        raise ValueError(f"{where}int8 weights for {layer_name!r}, but the model has no Linear or "
                         "Embedding layer there (it has "
                         f"{type(layer).__name__ if layer is not None else 'nothing'})")


def quantize_model(model):
    """Make every Linear and Embedding layer int8 (``Int8Linear``, ``Int8Embedding``), in place; the
    float weights are dropped. Returns the model. LoRA adapters must be merged first."""
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("the model has LoRA adapters: merge them first (tinyllm.lora.merge_lora)")
    for name, module in list(model.named_modules()):
        if isinstance(module, (Linear, Embedding)):
            _swap_in_int8(model, name, Int8Weight.of(module.weight))
    return model


def int8_layers(model) -> list[str]:
    """The names of the model's int8 weights (``Int8Weight`` modules)."""
    return [name for name, module in model.named_modules() if isinstance(module, Int8Weight)]


def dequantize_model(model):
    """Turn every int8 layer back into a float Linear or Embedding (W = q · s), in place; returns
    the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, (Int8Linear, Int8Embedding)):
            plain_class = Linear if isinstance(module, Int8Linear) else Embedding
            plain = plain_class.__new__(plain_class)
            plain.weight = Parameter(module.weight.dequantize(), dtype=module.weight.dtype)
            if isinstance(module, Int8Linear):
                plain.bias = module.bias
            model.set_submodule(name, plain)
    return model


def check_trainable(model, run="the model") -> None:
    """ValueError when ``model`` holds int8 weights and is about to be trained as a whole."""
    if int8_layers(model):
        raise ValueError(f"{run} holds int8 weights, which cannot take gradient steps (a step "
                         "smaller than a rounding step is lost): train LoRA adapters on it instead "
                         "(--lora-rank 8, QLoRA-style), or train the float run it was compressed "
                         "from")


# -------------------------------------------------------------------------------------- int8 files


def int8_pairs(tensors: dict, file="model.safetensors") -> dict[str, tuple]:
    """{weight name: (q, scale)} of an int8 checkpoint's ``NAME.int8`` + ``NAME.scale`` tensors,
    checked (ValueError naming file and tensor)."""
    pairs = {}
    for name, array in tensors.items():
        if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] + INT8_SUFFIX not in tensors:
            raise ValueError(f"{file}: tensor {name!r} has no "
                             f"{name[: -len(SCALE_SUFFIX)] + INT8_SUFFIX!r} to scale")
        if not name.endswith(INT8_SUFFIX):
            continue
        base = name[: -len(INT8_SUFFIX)]
        scale = tensors.get(base + SCALE_SUFFIX)
        if scale is None:
            raise ValueError(f"{file}: int8 tensor {name!r} has no scale tensor "
                             f"{base + SCALE_SUFFIX!r}")
        if array.dtype != np.int8 or array.ndim != 2:
            raise ValueError(f"{file}: tensor {name!r} must be a 2-D int8 matrix, got "
                             f"{array.dtype} {array.shape}")
        if scale.shape != (array.shape[0],) or scale.dtype.kind != "f":
            raise ValueError(f"{file}: scale {base + SCALE_SUFFIX!r} must be float of shape "
                             f"({array.shape[0]},), got {scale.dtype} {scale.shape}")
        pairs[base] = (array, scale)
    return pairs


def load_quantized_weights(model, path, method: str = "int8") -> int:
    """Load an int8 ``model.safetensors`` (or a run directory holding one) into ``model``, whose
    layers named in the file become int8 layers (the weights stay int8 in memory); returns the step.

    ``method``: the run config's "quantization" value; only "int8" exists.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if method != "int8":
        raise ValueError(f"{file.parent / 'config.json'}: quantization {method!r} is not supported "
                         "(tinyllm knows 'int8')")
    tensors = load_file(file)
    params = dict(model.named_parameters())
    for name in int8_pairs(tensors, file):
        if name not in params:
            raise ValueError(f"{file}: int8 tensors for {name!r}, which is not a weight of the "
                             "model")
        # the config's shape: the file's
        empty = Int8Weight.empty(params[name].shape, params[name].dtype)
        _swap_in_int8(model, name.rpartition(".")[0], empty, file)       # is checked as it loads
    try:
        model.load_state_dict(tensors)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    return int(load_metadata(file).get("step", 0))


# -------------------------------------------------------------------------------------- fp16


def float16_state(model) -> dict[str, np.ndarray]:
    """Every float parameter as float16 (int8 ones stay int8); ValueError naming the tensor if a
    value would overflow to infinity."""
    state = {}
    for name, array in model.state_dict().items():
        array = backend.to_numpy(array)
        if array.dtype.kind != "f":
            state[name] = array
            continue
        with np.errstate(over="ignore"):        # overflow is checked just below
            half = array.astype(np.float16)
        if not np.isfinite(half).all() and np.isfinite(array).all():
            raise ValueError(f"parameter {name!r} has values beyond float16's ±65504; it cannot be "
                             "stored as float16")
        state[name] = half
    return state


# -------------------------------------------------------------------------------------- pruning


def prunable_names(model) -> list[str]:
    """The weights of every Linear layer (the matrices the forward multiplies by; not
    embeddings)."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module,
                                                                                     Linear)]


def prune_global(model, sparsity: float) -> dict:
    """Zero the ``sparsity`` fraction of smallest-|w| Linear weights, ranked across all layers; in
    place.

    Returns {"pruned": zeros made, "linear_weights": their count, "sparsity": zeros / count after
    pruning,
    "model_sparsity": zeros / all parameters}.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    params = dict(model.named_parameters())
    weights = [params[name] for name in prunable_names(model)]
    total = sum(int(w.size) for w in weights)
    count = int(round(sparsity * total))
    if count:
        # (total,)
        magnitudes = np.concatenate([np.abs(backend.to_numpy(w.data)).ravel() for w in weights])
        # exactly `count`, ties broken arbitrarily
        smallest = np.argpartition(magnitudes, count - 1)[:count]
        keep = np.ones(total, dtype=bool)
        keep[smallest] = False
        start = 0
        for w in weights:
            w.data *= backend.asarray(keep[start:start + w.size].reshape(w.shape), dtype=w.dtype)
            start += w.size
    zeros = sum(int((backend.to_numpy(w.data) == 0).sum()) for w in weights)
    all_params = model.num_parameters()
    return {"pruned": count, "linear_weights": total, "sparsity": zeros / max(total, 1),
            "model_sparsity": zeros / max(all_params, 1)}


# -------------------------------------------------------------------------------------- run dirs


def save_compressed(source_run, out_dir, model, storage: str = "float32", tokenizer=None,
                    step: int = 0, details: dict | None = None) -> Path:
    """Write ``model`` (pruned, factored, int8: whatever was done to it) as a run directory, its
    float tensors stored as ``storage`` ("float32" or "fp16").

    The source run's config.json is copied (so templates and other settings travel), with the model
    section and the layout keys refreshed (``checkpoint.save_model``) and ``details`` as its
    ``"compression"`` record.
    """
    from .checkpoint import LAYOUT_KEYS, save_model
    if storage not in ("float32", "fp16"):
        raise ValueError(f"unknown storage {storage!r}; expected 'float32' or 'fp16'")
    config = read_json(Path(source_run) / "config.json", what="run config") if source_run else {}
    for key in ("model", "compression", *LAYOUT_KEYS):
        config.pop(key, None)
    config["compression"] = {"source": str(source_run), "storage": storage, **(details or {})}
    tensors = float16_state(model) if storage == "fp16" else None
    save_model(out_dir, model, tokenizer, step, extra_config=config, tensors=tensors)
    return Path(out_dir)


def model_bytes(model) -> int:
    """Bytes the model's parameters occupy in memory (each array once; int8 weights at 1 byte
    each)."""
    return int(sum(p.data.nbytes for p in model.parameters()))


def file_size(path) -> int:
    """Bytes of a file, or of the model.safetensors in a run directory."""
    path = Path(path)
    return (path / "model.safetensors" if path.is_dir() else path).stat().st_size


def human_bytes(size: int) -> str:
    units = ["B", "KB", "MB", "GB"]
    power = min(int(math.log(max(size, 1), 1000)), len(units) - 1)
    return f"{size / 1000 ** power:.2f} {units[power]}" if power else f"{size} B"


__all__ = ["quantize_int8", "dequantize_int8", "Int8Weight", "Int8Linear", "Int8Embedding",
           "quantize_model",
           "dequantize_model", "int8_layers", "check_trainable", "int8_pairs",
           "load_quantized_weights",
           "float16_state", "prune_global", "prunable_names", "quantizable_names",
           "save_compressed", "model_bytes", "file_size", "human_bytes"]
