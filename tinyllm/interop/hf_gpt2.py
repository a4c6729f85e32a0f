"""GPT-2 weights in Hugging Face's layout, read into a tinyllm ``GPT`` and written back out.

tinyllm's GPT *is* GPT-2 (pre-LayerNorm blocks, learned positions, tanh GELU, tied output head), so
moving weights between the two is renaming plus one transpose. A Hugging Face GPT-2 directory holds

    config.json          {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768,
                          "n_positions": 1024, "vocab_size": 50257, "layer_norm_epsilon": 1e-05,
                          "activation_function": "gelu_new", ...}
    model.safetensors    the tensors below (or model.safetensors.index.json + shards)

and the names map like this (``transformer.`` in front of every HF name is optional: the original
files have none, ``save_pretrained`` writes it):

    HF name                      shape          tinyllm name                  shape
    wte.weight                   (V, C)         wte.weight                    (V, C)
    wpe.weight                   (T, C)         wpe.weight                    (T, C)
    h.{i}.ln_1.{weight,bias}     (C,)           blocks.{i}.ln_1.{weight,bias} (C,)
    h.{i}.attn.c_attn.weight     (C, 3C)   ᵀ    blocks.{i}.attn.qkv.weight    (3C, C)
    h.{i}.attn.c_attn.bias       (3C,)          blocks.{i}.attn.qkv.bias      (3C,)
    h.{i}.attn.c_proj.weight     (C, C)    ᵀ    blocks.{i}.attn.proj.weight   (C, C)
    h.{i}.ln_2.{weight,bias}     (C,)           blocks.{i}.ln_2.{weight,bias}
    h.{i}.mlp.c_fc.weight        (C, 4C)   ᵀ    blocks.{i}.mlp.fc.weight      (4C, C)
    h.{i}.mlp.c_proj.weight      (4C, C)   ᵀ    blocks.{i}.mlp.proj.weight    (C, 4C)
    ln_f.{weight,bias}           (C,)           ln_f.{weight,bias}
    lm_head.weight               (V, C)         lm_head.weight (only when untied)

ᵀ: GPT-2 was written in TensorFlow, and its ``Conv1D`` layers store weights as (in, out) and compute
``x @ W + b``; tinyllm's ``Linear`` stores (out, in) as PyTorch does and computes ``x @ Wᵀ + b``, so
those four matrices are transposed. Both split the 3C outputs of ``c_attn``/``qkv`` as [q | k | v],
each C wide with the heads side by side, so no reshuffling is needed inside. The buffers
``h.{i}.attn.bias`` (the causal mask) and ``h.{i}.attn.masked_bias`` are not weights and are
skipped. The output head is tied to ``wte`` unless the config says ``"tie_word_embeddings": false``.

"gelu_new" (GPT-2's tanh approximation, 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))) is exactly
tinyllm's GELU; another activation is refused rather than silently computed differently. LayerNorm's
epsilon is set in the config (``norm_eps``), so a run directory keeps it (tinyllm's default 1e-5 is
GPT-2's).

Half-precision files (F16, or BF16, which ``tinyllm.safetensors`` widens exactly) load into the
default float dtype. Nothing is unpickled: a directory with only ``pytorch_model.bin`` is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import backend
from ..files import atomic_write_json, read_json
from ..model import GPT, GPTConfig
from ..safetensors import load_file, save_file

HF_CONFIG, HF_WEIGHTS, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
# written beside vocab.json so a round trip keeps the split pattern
TINYLLM_TOKENIZER = "tinyllm_tokenizer.json"
PREFIX = "transformer."
# two names HF uses for the same tanh formula
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
DEFAULT_EPS = 1e-5
# causal-mask buffers some checkpoints contain
_BUFFERS = (".attn.bias", ".attn.masked_bias")
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")   # the (in, out) layers
# HF layer → tinyllm layer, inside block i
_LAYER_NAMES = {
    "ln_1": "ln_1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
    "ln_2": "ln_2", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj",
}


# ------------------------------------------------------------------------------------------ config


def config_from_hf(hf: dict, where: str = HF_CONFIG) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 ``config.json`` dict.

    ValueError (naming ``where`` and the key) for what tinyllm's GPT cannot compute the same way.
    """
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{where}: model_type is {model_type!r}; only 'gpt2' checkpoints "
                         "can be imported")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"{where}: activation_function {activation!r} is not supported; tinyllm's GELU is "
            f"GPT-2's tanh form, which HF calls {' or '.join(map(repr, SUPPORTED_ACTIVATIONS))}"
        )
    for key, needed in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
        if hf.get(key, needed) != needed:
            raise ValueError(f"{where}: {key}={hf[key]!r} is not supported (tinyllm's attention "
                             f"needs {needed})")
    missing = [key for key in ("n_layer", "n_head", "n_embd", "vocab_size") if key not in hf]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    n_embd = hf["n_embd"]
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise ValueError(f"{where}: n_inner={n_inner} is not supported (tinyllm's MLP is 4 × "
                         f"n_embd = {4 * n_embd} wide)")
    block_size = hf.get("n_positions", hf.get("n_ctx"))
    if block_size is None:
        raise ValueError(f"{where}: missing n_positions")
    eps = hf.get("layer_norm_epsilon", DEFAULT_EPS)
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{where}: layer_norm_epsilon must be a positive number, got {eps!r}")
    try:
        config = GPTConfig(vocab_size=hf["vocab_size"], block_size=block_size,
                           n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=n_embd, dropout=0.0, bias=True,
                           tie_weights=bool(hf.get("tie_word_embeddings", True)),
                           norm_eps=float(eps))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return config


def require_gpt2_style(config: GPTConfig) -> None:
    """ValueError unless ``config`` is a GPT-2 stack
    (the Llama-style options have no GPT-2 file layout)."""
    gpt2_parts = {"norm": "layernorm", "pos": "learned", "mlp": "gelu"}
    different = [f"{key}={getattr(config, key)!r}"
                 for key, gpt2 in gpt2_parts.items() if getattr(config, key) != gpt2]
    if config.n_kv_head not in (None, config.n_head):
        different.append(f"n_kv_head={config.n_kv_head}")
    if different:
        raise ValueError("only GPT-2-style models can be written as Hugging Face GPT-2 files; "
                         f"this one has {', '.join(different)}")


def hf_config_from(config: GPTConfig, eos_token_id: int | None = None) -> dict:
    """The ``config.json`` Hugging Face's ``GPT2LMHeadModel`` needs for a tinyllm ``GPTConfig``."""
    require_gpt2_style(config)
    # None (null) when there is no tokenizer to name an end-of-text token
    eos = eos_token_id
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


# ------------------------------------------------------------------------------------------ names


def hf_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a HF GPT-2 checkpoint of this shape holds (without the prefix),
    with its HF shape."""
    c, v = config.n_embd, config.vocab_size
    shapes = {"wte.weight": (v, c), "wpe.weight": (config.block_size, c)}
    for i in range(config.n_layer):
        for norm in ("ln_1", "ln_2"):
            shapes[f"h.{i}.{norm}.weight"] = shapes[f"h.{i}.{norm}.bias"] = (c,)
        for layer, (fan_in, fan_out) in zip(_CONV1D, ((c, 3 * c), (c, c), (c, 4 * c), (4 * c, c))):
            shapes[f"h.{i}.{layer}.weight"] = (fan_in, fan_out)    # Conv1D: (in, out)
            shapes[f"h.{i}.{layer}.bias"] = (fan_out,)
    shapes["ln_f.weight"] = shapes["ln_f.bias"] = (c,)
    if not config.tie_weights:
        shapes["lm_head.weight"] = (v, c)
    return shapes


def tinyllm_name(hf_name: str) -> str:
    """``h.3.attn.c_attn.weight`` → ``blocks.3.attn.qkv.weight``
    (names outside the blocks are shared)."""
    if not hf_name.startswith("h."):
        return hf_name
    _, index, rest = hf_name.split(".", 2)
    layer, param = rest.rsplit(".", 1)
    return f"blocks.{index}.{_LAYER_NAMES[layer]}.{param}"


def _is_conv1d_weight(hf_name: str) -> bool:
    return hf_name.endswith(".weight") and any(f".{layer}." in hf_name for layer in _CONV1D)


# ------------------------------------------------------------------------------------------ loading


def read_hf_tensors(directory) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a HF directory (one file or an index of shards),
    and the file each came from."""
    directory = Path(directory)
    single, index = directory / HF_WEIGHTS, directory / HF_INDEX
    if single.exists():
        files = [single]
    elif index.exists():
        weight_map = read_json(index, what="safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: has no 'weight_map' object")
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
    else:
        pickles = [
            name for name in ("pytorch_model.bin", "tf_model.h5") if (directory / name).exists()
        ]
        hint = (f" (it has {', '.join(pickles)}, which tinyllm will not unpickle; convert it to "
                "safetensors with "
                "transformers' save_pretrained(..., safe_serialization=True))") if pickles else ""
        raise FileNotFoundError(f"no {HF_WEIGHTS} in '{directory}'{hint}")
    tensors, source = {}, {}
    for file in files:
        for name, array in load_file(file).items():   # its errors name the file and the tensor
            tensors[name], source[name] = array, str(file)
    return tensors, source


def hf_to_tinyllm_state(tensors: dict, config: GPTConfig,
                        source: dict | str = HF_WEIGHTS) -> dict[str, np.ndarray]:
    """HF GPT-2 tensors (either naming) → a tinyllm state dict for ``GPT(config)``,
    checked name by name.

    ``source``: the file name used in errors (or a dict tensor name → file). Raises ValueError
    naming the file and the tensor for an unknown, missing, duplicated, mis-shaped or non-float
    tensor.
    """
    default = next(iter(source.values()), HF_WEIGHTS) if isinstance(source, dict) else source

    def where(name):
        return source.get(name, default) if isinstance(source, dict) else source

    expected = hf_shapes(config)
    # HF name without prefix → (name in file, array)
    found: dict[str, tuple[str, np.ndarray]] = {}
    for name, array in tensors.items():
        short = name[len(PREFIX):] if name.startswith(PREFIX) else name
        if short.endswith(_BUFFERS):
            continue
        if short == "lm_head.weight" and config.tie_weights:
            # tied: HF ties it to wte on loading as well
            continue
        if short not in expected:
            raise ValueError(f"{where(name)}: tensor {name!r} is not part of a GPT-2 with this "
                             f"config.json (n_layer={config.n_layer}, "
                             f"tie_word_embeddings={config.tie_weights})")
        if short in found:
            raise ValueError(f"{where(name)}: tensor {short!r} appears twice, as "
                             f"{found[short][0]!r} and {name!r}")
        if tuple(array.shape) != expected[short]:
            raise ValueError(f"{where(name)}: tensor {name!r} has shape {tuple(array.shape)}, but "
                             f"config.json (n_embd={config.n_embd}, "
                             f"vocab_size={config.vocab_size}, n_positions={config.block_size}) "
                             f"needs {expected[short]}")
        if array.dtype.kind != "f":
            raise ValueError(f"{where(name)}: tensor {name!r} has dtype {array.dtype}; weights "
                             "must be floating point")
        found[short] = (name, array)
    missing = [name for name in expected if name not in found]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{where(missing[0])}: missing tensor(s) "
                         f"{', '.join(map(repr, missing[:3]))}{more}")
    state = {}
    for short, (_, array) in found.items():
        array = array.T if _is_conv1d_weight(short) else array
        state[tinyllm_name(short)] = np.ascontiguousarray(array, dtype=backend.dtype)
    return state


def load_hf_gpt2(path, dtype=None) -> GPT:
    """A tinyllm ``GPT`` from a Hugging Face GPT-2 directory
    (``config.json`` + ``model.safetensors``).

    ``dtype``: "float32" or "float64" (default: tinyllm's current default dtype); half-precision
    files are widened to it. The model computes what ``GPT2LMHeadModel`` computes.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"no Hugging Face model directory at '{directory}'")
    config_file = directory / HF_CONFIG
    if not config_file.exists():
        raise ValueError(f"'{directory}' has no {HF_CONFIG}, so it is not a Hugging Face "
                         "model directory")
    config = config_from_hf(read_json(config_file, what="Hugging Face config"), str(config_file))
    tensors, source = read_hf_tensors(directory)
    with backend.default_dtype(dtype or backend.dtype):
        state = hf_to_tinyllm_state(tensors, config, source)
        del tensors
        model = GPT(config)
        model.load_state_dict(state)
    return model.eval()


# ------------------------------------------------------------------------------------------ saving


def tinyllm_to_hf_state(model) -> dict[str, np.ndarray]:
    """``model``'s weights under HF GPT-2 names (no ``transformer.`` prefix) in HF's layouts.

    A model built with ``bias=False`` gets zero biases: HF GPT-2 always has them, and a zero bias
    adds nothing, so the function is unchanged.
    """
    config = model.config
    require_gpt2_style(config)
    params = {name: backend.to_numpy(array) for name, array in model.state_dict().items()}
    state = {}
    for hf_name, shape in hf_shapes(config).items():
        name = tinyllm_name(hf_name)
        if name not in params:
            if not hf_name.endswith(".bias"):
                raise ValueError(f"the model has no parameter {name!r} for HF tensor {hf_name!r}")
            state[hf_name] = np.zeros(shape, dtype=np.float32)
            continue
        array = params[name].T if _is_conv1d_weight(hf_name) else params[name]
        state[hf_name] = np.ascontiguousarray(array)
    return state


def save_hf_gpt2(model, directory, tokenizer=None, dtype: str = "float32") -> Path:
    """Write ``model`` as a Hugging Face GPT-2 directory that ``GPT2LMHeadModel.from_pretrained``
    loads.

    Writes ``config.json`` and ``model.safetensors`` (``dtype``: "float32", "float16" or
    "bfloat16"). With a tokenizer, also ``tinyllm_tokenizer.json`` (tinyllm's own file, split
    pattern included, so that ``tinyllm import-hf`` gets exactly this tokenizer back; HF ignores it)
    and, for a ``BPETokenizer``, ``vocab.json`` + ``merges.txt`` (see ``gpt2_tokenizer.py``). Its
    "<|endoftext|>" id becomes the config's bos/eos token id. Returns the directory.
    """
    directory = write_hf_weights(tinyllm_to_hf_state(model), directory, dtype)
    eos = None
    if tokenizer is not None:
        from ..tokenizer import BPETokenizer
        from .gpt2_tokenizer import save_gpt2_tokenizer
        tokenizer.save(directory / TINYLLM_TOKENIZER)
        if isinstance(tokenizer, BPETokenizer):
            save_gpt2_tokenizer(tokenizer, directory)
        eos = tokenizer.special_tokens.get("<|endoftext|>")
    hf = hf_config_from(model.config, eos)
    hf["torch_dtype"] = dtype
    atomic_write_json(directory / HF_CONFIG, hf)
    return directory


def write_hf_weights(state: dict, directory, dtype: str = "float32") -> Path:
    """Write HF-named tensors as ``directory/model.safetensors`` in ``dtype`` ("float32", "float16"
    or "bfloat16"), creating the directory; returns it."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dtype == "float16":
        state = {name: _to_float16(name, array) for name, array in state.items()}
    else:
        state = {name: array.astype(np.float32, copy=False) for name, array in state.items()}
    save_file(state, directory / HF_WEIGHTS, metadata={"format": "pt"},
              bf16=state.keys() if dtype == "bfloat16" else ())
    return directory


def _to_float16(name: str, array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):            # overflow is checked just below
        half = array.astype(np.float16)
    if not np.isfinite(half).all() and np.isfinite(array).all():
        raise ValueError(f"tensor {name!r} has values beyond float16's range (±65504); save it as "
                         "float32 or bfloat16")
    return half


__all__ = ["load_hf_gpt2", "save_hf_gpt2", "config_from_hf", "hf_config_from",
           "hf_to_tinyllm_state",
           "tinyllm_to_hf_state", "read_hf_tensors", "hf_shapes", "tinyllm_name"]
