"""Making a trained model smaller for deployment: int8 weights, float16 storage, magnitude pruning.

All three keep the model a plain tinyllm ``GPT`` once loaded (weights are turned back into floats at load
time), so ``generate``, ``eval``, ``chat`` and finetuning need nothing new. What they buy is a smaller
file, at the price of a little accuracy; ``tinyllm compress`` measures both.

**int8, symmetric, per output channel.** Each row ``w`` of a Linear weight (out, in) (one output
channel) or of an Embedding table (one token's vector) gets its own scale::

    scale = max|w| / 127          q = clip(round(w / scale), -127, 127)  (int8)          w ≈ q · scale

Symmetric: zero maps to 0 exactly and no offset is stored. Per row: one large weight in one row does not
blur every other row's precision. The rounding error of each weight is at most scale/2, i.e. at most
1/254 of its row's largest magnitude. -128 is left unused so that the range is symmetric. A row of zeros
gets scale 0 and q = 0. Biases and LayerNorm parameters are tiny and sensitive, so they stay float32.
Stored as ``NAME.int8`` (int8, the shape of the weight) and ``NAME.scale`` (float32, one per row) in
``model.safetensors``, with ``"quantization": "int8"`` in config.json; ``checkpoint.load_pretrained``
sees that key and calls ``load_quantized_weights``. A float32 weight takes 4 bytes, its int8 form 1 byte
plus 4 bytes per row, so the file shrinks almost 4×. (Dequantizing at load time keeps the code honest
and simple; it does not make the model faster or smaller in memory — int8 matmul kernels would.)

**float16 storage.** Every float tensor written as F16 (2 bytes: half the file). ``load_pretrained``
upcasts to float32 as it loads, so nothing else changes. float16 keeps 11 significant bits (a relative
rounding error ≤ 2⁻¹¹ ≈ 0.05%) and overflows past ±65504, which is checked.

**Global magnitude pruning.** Zero the fraction ``sparsity`` of all Linear weights with the smallest
|w|, ranked across all layers at once (so layers with many small weights lose more). Embeddings, biases
and norms are kept. The file stays dense (zeros take as much room as other numbers); the gain would come
from a sparse format or kernel, and the table shows the accuracy it costs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import backend
from .files import atomic_write_json, read_json
from .nn import Embedding, Linear
from .safetensors import load_file, load_metadata, save_file

INT8_SUFFIX, SCALE_SUFFIX = ".int8", ".scale"
QMAX = 127


# ---------------------------------------------------------------------------------------------- int8


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 of ``weight``'s shape, scale float32 (rows,)) with ``weight ≈ q * scale[:, None]``."""
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"int8 quantization is per row of a 2-D weight, got shape {weight.shape}")
    scale = np.abs(weight).max(axis=1) / np.float32(QMAX)                  # (rows,)
    safe = np.where(scale > 0, scale, np.float32(1))                       # an all-zero row stays zero
    q = np.clip(np.rint(weight / safe[:, None]), -QMAX, QMAX).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 ``q * scale`` per row: the inverse of ``quantize_int8`` up to rounding."""
    return q.astype(np.float32) * scale.astype(np.float32)[:, None]


def quantizable_names(model) -> list[str]:
    """Parameter names of every Linear and Embedding weight (the matrices; not biases, not norms)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, (Linear, Embedding)):
            names.append(f"{module_name}.weight" if module_name else "weight")
    params = dict(model.named_parameters())
    return [name for name in names if name in params]              # a tied head appears once


def int8_state(model) -> dict[str, np.ndarray]:
    """The tensors of an int8 checkpoint: ``NAME.int8`` + ``NAME.scale`` for each quantizable weight, the
    other parameters as float32."""
    quantize = set(quantizable_names(model))
    state = {}
    for name, array in model.state_dict().items():
        array = backend.to_numpy(array)
        if name in quantize:
            state[name + INT8_SUFFIX], state[name + SCALE_SUFFIX] = quantize_int8(array)
        else:
            state[name] = array.astype(np.float32, copy=False)
    return state


def dequantize_state(tensors: dict[str, np.ndarray], file="model.safetensors") -> dict[str, np.ndarray]:
    """An int8 checkpoint's tensors → an ordinary float32 state dict (ValueError naming file and tensor)."""
    state = {}
    for name, array in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            if name[: -len(SCALE_SUFFIX)] + INT8_SUFFIX not in tensors:
                raise ValueError(f"{file}: tensor {name!r} has no {name[: -len(SCALE_SUFFIX)] + INT8_SUFFIX!r} to scale")
            continue
        if not name.endswith(INT8_SUFFIX):
            state[name] = array
            continue
        base = name[: -len(INT8_SUFFIX)]
        scale = tensors.get(base + SCALE_SUFFIX)
        if scale is None:
            raise ValueError(f"{file}: int8 tensor {name!r} has no scale tensor {base + SCALE_SUFFIX!r}")
        if array.dtype != np.int8 or array.ndim != 2:
            raise ValueError(f"{file}: tensor {name!r} must be a 2-D int8 matrix, got {array.dtype} {array.shape}")
        if scale.shape != (array.shape[0],) or scale.dtype.kind != "f":
            raise ValueError(f"{file}: scale {base + SCALE_SUFFIX!r} must be float of shape ({array.shape[0]},), "
                             f"got {scale.dtype} {scale.shape}")
        state[base] = dequantize_int8(array, scale)
    return state


def load_quantized_weights(model, path, method: str = "int8") -> int:
    """Load an int8 ``model.safetensors`` (or a run directory holding one) into ``model``; returns the step.

    ``method``: the run config's "quantization" value; only "int8" exists.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if method != "int8":
        raise ValueError(f"{file.parent / 'config.json'}: quantization {method!r} is not supported (tinyllm knows 'int8')")
    state = dequantize_state(load_file(file), file)
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    return int(load_metadata(file).get("step", 0))


# ---------------------------------------------------------------------------------------------- fp16


def float16_state(model) -> dict[str, np.ndarray]:
    """Every parameter as float16; ValueError naming the tensor if a value would overflow to infinity."""
    state = {}
    for name, array in model.state_dict().items():
        array = backend.to_numpy(array)
        with np.errstate(over="ignore"):        # overflow is checked just below
            half = array.astype(np.float16)
        if not np.isfinite(half).all() and np.isfinite(array).all():
            raise ValueError(f"parameter {name!r} has values beyond float16's ±65504; it cannot be stored as float16")
        state[name] = half
    return state


# ---------------------------------------------------------------------------------------------- pruning


def prunable_names(model) -> list[str]:
    """The weights of every Linear layer (the matrices the forward multiplies by; not embeddings)."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Linear)]


def prune_global(model, sparsity: float) -> dict:
    """Zero the ``sparsity`` fraction of smallest-|w| Linear weights, ranked across all layers; in place.

    Returns {"pruned": zeros made, "linear_weights": their count, "sparsity": zeros / count after pruning,
    "model_sparsity": zeros / all parameters}.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    params = dict(model.named_parameters())
    weights = [params[name] for name in prunable_names(model)]
    total = sum(int(w.size) for w in weights)
    count = int(round(sparsity * total))
    if count:
        magnitudes = np.concatenate([np.abs(backend.to_numpy(w.data)).ravel() for w in weights])   # (total,)
        smallest = np.argpartition(magnitudes, count - 1)[:count]        # exactly `count`, ties broken arbitrarily
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


# ---------------------------------------------------------------------------------------------- run dirs


def save_compressed(source_run, out_dir, model, method: str, sparsity: float = 0.0, tokenizer=None,
                    step: int = 0, details: dict | None = None) -> Path:
    """Write ``model`` compressed by ``method`` ("int8", "fp16" or "float32", after any pruning) as a run dir.

    The source run's config.json is copied (so templates and other settings travel), with the model section
    refreshed and a ``"compression"`` record; an int8 run also gets ``"quantization": "int8"``, which is what
    ``load_pretrained`` dispatches on.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "int8":
        tensors = int8_state(model)
    elif method == "fp16":
        tensors = float16_state(model)
    elif method == "float32":
        tensors = {name: backend.to_numpy(array).astype(np.float32, copy=False) for name, array in model.state_dict().items()}
    else:
        raise ValueError(f"unknown compression method {method!r}; expected 'int8', 'fp16' or 'float32'")
    metadata = {"format": "tinyllm", "step": str(step)}
    if method == "int8":
        metadata["quantization"] = "int8"
    save_file(tensors, out_dir / "model.safetensors", metadata=metadata)
    config = read_json(Path(source_run) / "config.json", what="run config") if source_run else {}
    config.pop("quantization", None)
    config["model"] = model.config.to_dict()
    if method == "int8":
        config["quantization"] = "int8"
    config["compression"] = {"method": method, "prune_sparsity": sparsity, "source": str(source_run), **(details or {})}
    if tokenizer is not None:
        tokenizer.save(out_dir / "tokenizer.json")
        config["tokenizer"] = "tokenizer.json"
    atomic_write_json(out_dir / "config.json", config)
    return out_dir


def file_size(path) -> int:
    """Bytes of a file, or of the model.safetensors in a run directory."""
    path = Path(path)
    return (path / "model.safetensors" if path.is_dir() else path).stat().st_size


def human_bytes(size: int) -> str:
    units = ["B", "KB", "MB", "GB"]
    power = min(int(math.log(max(size, 1), 1000)), len(units) - 1)
    return f"{size / 1000 ** power:.2f} {units[power]}" if power else f"{size} B"


__all__ = ["quantize_int8", "dequantize_int8", "int8_state", "dequantize_state", "load_quantized_weights",
           "float16_state", "prune_global", "prunable_names", "quantizable_names", "save_compressed",
           "file_size", "human_bytes"]
