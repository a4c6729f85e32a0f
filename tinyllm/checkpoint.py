"""Run directories: everything a run learns, in files other tools can read, written so a crash never
corrupts them.

    runs/NAME/
      config.json              {"model": GPTConfig fields, "tokenizer": "tokenizer.json", ...later stages' keys}
      model.safetensors        the weights, named like ``blocks.0.attn.qkv.weight``; metadata {"step": "N"}
      tokenizer.json           the tokenizer (BPE or char), human-readable
      train_state.safetensors  what ``--resume`` needs: AdamW's moments, plus metadata JSON with the
      step,
                               the random generators' states and the training settings
      log.jsonl, loss.svg      the training log and its picture

Every file is written atomically (temp file, fsync, rename: see ``tinyllm.files``). The weights and
the train state each record the step they belong to, and resuming checks that they agree. Nothing is
ever
unpickled: safetensors is a JSON header plus raw bytes, read with NumPy.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import backend
from .files import atomic_write_json, read_json
from .model import GPT, GPTConfig
from .safetensors import load_file, load_metadata, read_header, save_file

CONFIG, WEIGHTS = "config.json", "model.safetensors"
TOKENIZER, TRAIN_STATE = "tokenizer.json", "train_state.safetensors"


# config.json keys that say how layers are stored, beyond the model's GPTConfig (see
# ``layout_config``)
LAYOUT_KEYS = ("quantization", "low_rank")


def layout_config(model) -> dict:
    """What config.json must say, beyond GPTConfig, for the weights to load back into the same
    layers:
    ``"quantization": "int8"`` when some layers hold int8 weights (``tinyllm.quantize``),
    ``"low_rank": {layer: rank}`` for Linear layers factored in two (``tinyllm.low_rank``)."""
    from .low_rank import low_rank_ranks
    from .quantize import int8_layers
    layout = {"quantization": "int8"} if int8_layers(model) else {}
    ranks = low_rank_ranks(model)
    if ranks:
        layout["low_rank"] = ranks
    return layout


def save_model(run_dir, model, tokenizer=None, step: int = 0, extra_config: dict | None = None,
               tensors: dict | None = None) -> None:
    """Write the weights, the config (merged with ``extra_config``) and the tokenizer into
    ``run_dir``.
    ``tensors``: the arrays to write instead of the model's state dict (e.g. its float16 copies)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        tensors = {name: backend.to_numpy(array) for name, array in model.state_dict().items()}
    save_file(tensors, run_dir / WEIGHTS, metadata={"format": "tinyllm", "step": str(step)})
    config = read_json(run_dir / CONFIG) if (run_dir / CONFIG).exists() else {}
    config.update(extra_config or {})
    config["model"] = model.config.to_dict()
    for key in LAYOUT_KEYS:
        config.pop(key, None)
    config.update(layout_config(model))
    # "encoder" (tinyllm.encoder); a GPT writes no key
    if getattr(model, "architecture", None):
        config["architecture"] = model.architecture
    if tokenizer is not None:
        tokenizer.save(run_dir / TOKENIZER)
        config["tokenizer"] = TOKENIZER
    atomic_write_json(run_dir / CONFIG, config)


def save_train_state(run_dir, optimizer, state: dict) -> None:
    """Write the optimizer's moment arrays and ``state`` (JSON-able: step, RNG states, settings).
    ``optimizer``: the optimizer, or its ``state_dict()`` (taken already: ZeRO gathers it from every
    process)."""
    arrays, scalars = {}, {}
    optimizer_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    for key, value in optimizer_state.items():
        if hasattr(value, "shape"):
            arrays[f"optimizer.{key}"] = backend.to_numpy(value)
        else:
            scalars[key] = value
    metadata = {"format": "tinyllm-train-state", "state": json.dumps({**state,
                                                                      "optimizer": scalars})}
    save_file(arrays, Path(run_dir) / TRAIN_STATE, metadata=metadata)


def load_train_state(run_dir, optimizer) -> dict:
    """Restore the optimizer from ``run_dir`` and return the saved state dict (checked against the
    weights)."""
    run_dir = Path(run_dir)
    path = run_dir / TRAIN_STATE
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: no {TRAIN_STATE} in '{run_dir}' (was the run "
                                "saved with a training state?)")
    metadata = load_metadata(path)
    if metadata.get("format") != "tinyllm-train-state" or "state" not in metadata:
        raise ValueError(f"{path} is not a tinyllm training state (its metadata lacks "
                         "format/state)")
    state = json.loads(metadata["state"])
    weights_step = load_metadata(run_dir / WEIGHTS).get("step")
    if weights_step != str(state["step"]):
        raise ValueError(
            f"cannot resume: {WEIGHTS} is from step {weights_step} but {TRAIN_STATE} is from step "
            f"{state['step']} (a save was interrupted between the two files)"
        )
    arrays = {k[len("optimizer."):]: v for k, v in load_file(path).items()}
    optimizer.load_state_dict({**arrays, **state.pop("optimizer")})
    return state


def check_resumable(run_dir) -> None:
    """FileNotFoundError saying why ``run_dir`` cannot be resumed, when it holds no checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume: there is no run directory '{run_dir}' (is the "
                                "path right? --resume continues the run in --out)")
    if not (run_dir / WEIGHTS).exists() or not (run_dir / CONFIG).exists():
        started = (" A run started there but stopped before its first "
                   "checkpoint.") if any(run_dir.iterdir()) else ""
        raise FileNotFoundError(f"cannot resume: '{run_dir}' holds no checkpoint ({WEIGHTS} + "
                                f"{CONFIG}).{started} Pretraining saves one at every evaluation, "
                                "at the end and on Ctrl-C; check the path, or start the run again "
                                "without --resume")


def load_config(path) -> dict:
    """The ``config.json`` of a run directory (or of the directory holding a ``model.safetensors``);
    for a run that keeps an adapter alone (LoRA without merged weights, prompt tuning), its
    ``adapter_config.json``."""
    run_dir = _run_dir(path)
    if _adapter_only(run_dir):
        from .lora import read_adapter_config
        return read_adapter_config(run_dir)
    return read_json(run_dir / CONFIG, what="run config")


def _adapter_only(run_dir: Path) -> bool:
    from .lora import ADAPTER_CONFIG
    return not (run_dir / CONFIG).exists() and (run_dir / ADAPTER_CONFIG).exists()


def _run_dir(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}' (expected a run directory or a "
                                f"{WEIGHTS} file)")
    return path.parent if path.is_file() else path


def _weights_file(path) -> Path:
    path = Path(path)
    file = path if path.is_file() else path / WEIGHTS
    if not file.exists():
        raise FileNotFoundError(f"no weights file at '{file}'")
    return file


def load_weights(model, path) -> int:
    """Load weights into ``model`` from a run directory or a ``.safetensors`` file; returns the
    saved step."""
    file = _weights_file(path)
    weights = load_file(file)                   # its errors name the file already
    try:
        model.load_state_dict(weights)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    return int(load_metadata(file).get("step", 0))


def load_weights_as_saved(model, path, config: dict) -> int:
    """Load weights into ``model`` after giving it the layers that the run's ``config`` (its
    config.json) describes beyond GPTConfig (``layout_config``): factored ones, int8 ones. Returns
    the saved step."""
    file = _weights_file(path)
    # written by `tinyllm compress --low-rank`: factored layers
    if config.get("low_rank"):
        from .low_rank import factored_layout
        factored_layout(model, config["low_rank"], _run_dir(file) / CONFIG)
    # written by `tinyllm compress --int8`: int8 weights + scales
    if "quantization" in config:
        from .quantize import load_quantized_weights
        return load_quantized_weights(model, file, config["quantization"])
    return load_weights(model, file)


def load_tokenizer_of(path):
    """The tokenizer saved in a run directory."""
    from .tokenizer import load_tokenizer
    run_dir = _run_dir(path)
    name = load_config(run_dir).get("tokenizer", TOKENIZER)
    return load_tokenizer(run_dir / name)


def load_pretrained(path, dtype=None, allow_encoder: bool = False):
    """(model, tokenizer) from a run directory (or its ``model.safetensors``), ready for any later
    stage.

    ``dtype``: "float32" or "float64"; by default the one the weights were saved in (float64 when
    they all are, else float32), so a float64 run is not silently rounded to float32 on loading. A
    run that keeps an adapter alone (``adapter_config.json``, no ``config.json``) loads as its base
    run with the adapter. An encoder run (``tinyllm.encoder``) loads only with
    ``allow_encoder=True``: every other stage needs a GPT.
    """
    run_dir = _run_dir(path)
    if _adapter_only(run_dir):                 # the base run it names, with the adapter applied
        from .lora import load_pretrained_with_adapter
        return load_pretrained_with_adapter(run_dir)
    config = load_config(run_dir)
    if "model" not in config:
        raise ValueError(f"{run_dir / CONFIG} has no 'model' section; is '{run_dir}' a tinyllm run "
                         "directory?")
    encoder = config.get("architecture") == "encoder"
    if encoder and not allow_encoder:
        raise ValueError(f"'{run_dir}' holds an encoder (BERT-style masked language model): it "
                         "fills in [MASK] tokens but cannot generate or score text left to right; "
                         f"use `tinyllm fill-mask --ckpt {run_dir}`, `tinyllm finetune classify` "
                         "or `tinyllm export-hf` with it")
    file = _weights_file(path)
    if dtype is None:
        saved = {info.dtype for info in read_header(file).tensors.values()}
        dtype = "float64" if saved == {"F64"} else "float32"
    with backend.default_dtype(dtype):
        if encoder:
            from .encoder import Encoder, EncoderConfig
            model = Encoder(EncoderConfig.from_dict(config["model"]))
        else:
            model = GPT(GPTConfig.from_dict(config["model"]))
        load_weights_as_saved(model, file, config)
    tokenizer = load_tokenizer_of(run_dir) if (run_dir / config.get("tokenizer",
                                                                    TOKENIZER)).exists() else None
    return model, tokenizer


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved vs current' for every key whose value differs (for resume and load errors)."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} (saved) vs {current.get(k)!r} (now)"
            for k in keys if saved.get(k) != current.get(k)]
