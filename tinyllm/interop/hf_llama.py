"""Llama-family weights in Hugging Face's layout (Llama 2/3, SmolLM, Qwen2, Mistral,
Mixtral), in and out.

tinyllm's GPT with ``norm="rmsnorm", pos="rope", mlp="swiglu", bias=False`` *is*
``LlamaForCausalLM``: pre-RMSNorm blocks, rotary q/k in Hugging Face's "rotate half" convention (so
no permutation is needed), SwiGLU feed-forward, grouped-query attention. The four architectures
differ in a few switches:

    architecture         config.json                      tinyllm GPTConfig
    LlamaForCausalLM     rope_theta, rope_scaling llama3  rope_theta, rope_scaling
    Qwen2ForCausalLM     q/k/v projections have biases    qkv_bias=True
    MistralForCausalLM   sliding_window W                 block_size ≤ W (see below)
    MixtralForCausalLM   num_local_experts, _per_tok      mlp="moe", n_expert, expert_top_k

and the names map like this (HF ``model.layers.{i}.`` → tinyllm ``blocks.{i}.``; every weight is
(out, in) in both, so nothing is transposed; q, k and v are stacked into tinyllm's one ``qkv``
matrix):

    model.embed_tokens.weight                   (V, C)         wte.weight
    self_attn.{q,k,v}_proj.{weight,bias}        (H·D, C) …     attn.qkv.{weight,bias}  [q | k | v] rows
    self_attn.o_proj.weight                     (C, C)         attn.proj.weight
    input_layernorm.weight                      (C,)           ln_1.weight
    post_attention_layernorm.weight             (C,)           ln_2.weight
    mlp.{gate,up,down}_proj.weight              (H, C) …       mlp.{gate,up,proj}.weight
    block_sparse_moe.gate.weight                (E, C)         mlp.router.weight                (Mixtral)
    block_sparse_moe.experts.{e}.w{1,3,2}.weight               mlp.experts.{gate,up,proj}.weight[e]
    model.norm.weight                           (C,)           ln_f.weight
    lm_head.weight                              (V, C)         lm_head.weight (absent when tied)

Mixtral's router is softmax → top-k → renormalise the k probabilities, which is tinyllm's ``moe``
routing for k > 1 (for k = 1 tinyllm keeps the raw probability, so such a Mixtral is refused).

Sliding-window attention (Mistral): a query sees only the W keys before it. When the context never
exceeds W the window masks nothing, so the import sets
``block_size = min(max_position_embeddings, W)`` and the model refuses longer sequences with a
message naming block_size: exact results, never a silent difference.

A model is refused before any tensor is read when float32 copies of its weights (the file's tensors
and the model's, twice its parameter count × 4 bytes) would not fit in the memory available. Nothing
is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import backend
from ..files import atomic_write_json, read_json
from ..model import GPT, GPTConfig
from ..safetensors import read_header
from .hf_gpt2 import HF_CONFIG, HF_INDEX, HF_WEIGHTS, read_hf_tensors, write_hf_weights

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
# buffers some older checkpoints contain
_SKIPPED = ("rotary_emb.inv_freq",)


# ------------------------------------------------------------------------------------------- config


def architecture_of(hf: dict) -> str | None:
    """The Llama-family architecture a config.json names (its ``architectures`` list), or None."""
    names = hf.get("architectures") or []
    return next((name for name in names if name in ARCHITECTURES), None)


def _rope_from_hf(hf: dict, where: str) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling)
    from either transformers 4's keys or transformers 5's ``rope_parameters``."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (
        params if params.get("rope_type", "default") != "default" else None
    )
    if scaling is None:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"{where}: rope_scaling type {kind!r} is not supported (tinyllm "
                         "implements 'llama3')")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return float(theta), {"rope_type": "llama3", **{key: scaling.get(key) for key in keys}}


def _refuse_unless(hf: dict, where: str, checks: dict) -> None:
    for key, (allowed, why) in checks.items():
        if key in hf and hf[key] not in allowed:
            raise ValueError(f"{where}: {key}={hf[key]!r} is not supported ({why})")


def config_from_hf(hf: dict, where: str = HF_CONFIG) -> tuple[GPTConfig, str]:
    """(GPTConfig, architecture) of a Llama-family ``config.json``;
    ValueError naming what cannot be computed."""
    arch = architecture_of(hf)
    if arch is None:
        raise ValueError(f"{where}: architectures {hf.get('architectures')!r} names none of "
                         f"{', '.join(ARCHITECTURES)}")
    missing = [key for key in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size") if key not in hf]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = n_embd // n_head if n_embd % n_head == 0 else None
    _refuse_unless(hf, where, {
        "hidden_act": (("silu",), "tinyllm's SwiGLU uses SiLU"),
        "head_dim": ((None, head_dim),
                     f"tinyllm's heads are hidden_size / num_attention_heads = {head_dim} wide"),
        "attention_bias": ((False,), "only Qwen2's q/k/v biases are implemented"),
        "mlp_bias": ((False,), "the SwiGLU layers have no biases"),
        "partial_rotary_factor": ((1, 1.0), "rotary embeddings rotate every channel of a head"),
    })
    theta, scaling = _rope_from_hf(hf, where)
    block_size = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    if window and (arch != "Qwen2ForCausalLM" or hf.get("use_sliding_window")):
        # exact: the window never masks anything
        block_size = min(block_size, int(window))
    moe = {"mlp": "swiglu"}
    if arch == "MixtralForCausalLM":
        top_k = hf.get("num_experts_per_tok", 2)
        if top_k < 2:
            raise ValueError(f"{where}: num_experts_per_tok={top_k}: Mixtral renormalises a single "
                             "expert's weight to 1, tinyllm's moe keeps the router probability; "
                             "only k >= 2 computes the same")
        moe = dict(mlp="moe", n_expert=hf.get("num_local_experts", 8), expert_top_k=top_k,
                   aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.01)))
    try:
        config = GPTConfig(vocab_size=hf["vocab_size"], block_size=block_size,
                           n_layer=hf["num_hidden_layers"],
                           n_head=n_head, n_embd=n_embd,
                           n_kv_head=hf.get("num_key_value_heads") or n_head,
                           mlp_hidden=hf["intermediate_size"], dropout=0.0, bias=False,
                           tie_weights=bool(hf.get("tie_word_embeddings",
                                                   False)), norm="rmsnorm", pos="rope",
                           norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=theta,
                           rope_scaling=scaling, qkv_bias=arch == "Qwen2ForCausalLM", **moe)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return config, arch


def architecture_for(config: GPTConfig, wanted: str | None = None) -> str:
    """The HF architecture a tinyllm Llama-style config is written as (``wanted``
    "MistralForCausalLM" for a Llama-shaped model that came from a Mistral); ValueError for other
    configs."""
    if (config.norm, config.pos, config.bias) != ("rmsnorm", "rope", False) or config.mlp == "gelu":
        raise ValueError("only Llama-style models (norm='rmsnorm', pos='rope', mlp='swiglu' or "
                         "'moe', bias=False) can be written in Llama's layout; this one has "
                         f"norm={config.norm!r}, pos={config.pos!r}, mlp={config.mlp!r}, "
                         f"bias={config.bias}")
    if config.mlp == "moe":
        if config.shared_expert or config.expert_top_k < 2 or config.qkv_bias:
            raise ValueError("a Mixtral has no shared expert, no q/k/v biases and routes each "
                             "token to >= 2 experts")
        return "MixtralForCausalLM"
    if config.qkv_bias:
        return "Qwen2ForCausalLM"
    if wanted == "MistralForCausalLM" and not config.rope_scaling:
        return "MistralForCausalLM"
    return "LlamaForCausalLM"


def hf_config_from(config: GPTConfig, bos_token_id=None, eos_token_id=None,
                   architecture=None) -> dict:
    """The ``config.json`` (transformers 4 keys, which transformers 5 also reads) for a tinyllm
    config. A Mistral's sliding window is written as the context itself (block_size), which it never
    exceeds."""
    arch = architecture_for(config, architecture)
    hf = {
        "architectures": [arch], "model_type": arch.removesuffix("ForCausalLM").lower(),
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd,
        "intermediate_size": config.hidden_size,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads, "head_dim": config.head_size, "hidden_act": "silu",
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling,
        "tie_word_embeddings": config.tie_weights, "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "float32",
        "use_cache": True,
    }
    if arch == "LlamaForCausalLM":
        hf.update(attention_bias=False, mlp_bias=False)
    if arch == "MistralForCausalLM":
        hf.update(sliding_window=config.block_size)
    if arch == "MixtralForCausalLM":
        hf.update(num_local_experts=config.n_expert, num_experts_per_tok=config.expert_top_k,
                  router_aux_loss_coef=config.aux_loss_coef, sliding_window=None)
    if arch == "Qwen2ForCausalLM":
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


# ------------------------------------------------------------------------------------------- names


def _layer_shapes(config: GPTConfig, arch: str, i: int) -> dict[str, tuple[int, ...]]:
    c, d, hidden = config.n_embd, config.head_size, config.hidden_size
    q_rows, kv_rows = config.n_head * d, config.kv_heads * d
    p = f"model.layers.{i}."
    shapes = {p + "self_attn.q_proj.weight": (q_rows, c),
              p + "self_attn.k_proj.weight": (kv_rows, c),
              p + "self_attn.v_proj.weight": (kv_rows, c), p + "self_attn.o_proj.weight": (c, c),
              p + "input_layernorm.weight": (c,), p + "post_attention_layernorm.weight": (c,)}
    if config.qkv_bias:
        shapes.update({p + "self_attn.q_proj.bias": (q_rows,),
                       p + "self_attn.k_proj.bias": (kv_rows,),
                       p + "self_attn.v_proj.bias": (kv_rows,)})
    if arch == "MixtralForCausalLM":
        shapes[p + "block_sparse_moe.gate.weight"] = (config.n_expert, c)
        for e in range(config.n_expert):
            for w, shape in (("w1", (hidden, c)), ("w2", (c, hidden)), ("w3", (hidden, c))):
                shapes[p + f"block_sparse_moe.experts.{e}.{w}.weight"] = shape
    else:
        shapes.update({p + "mlp.gate_proj.weight": (hidden, c),
                       p + "mlp.up_proj.weight": (hidden, c),
                       p + "mlp.down_proj.weight": (c, hidden)})
    return shapes


def hf_shapes(config: GPTConfig, arch: str) -> dict[str, tuple[int, ...]]:
    """Every tensor a HF checkpoint of this architecture and shape holds, with its shape."""
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.n_embd)}
    for i in range(config.n_layer):
        shapes.update(_layer_shapes(config, arch, i))
    shapes["model.norm.weight"] = (config.n_embd,)
    if not config.tie_weights:
        shapes["lm_head.weight"] = (config.vocab_size, config.n_embd)
    return shapes


def check_tensors(tensors: dict, expected: dict, source: dict, what: str) -> None:
    """ValueError naming the file and the tensor for an unexpected, mis-shaped,
    non-float or missing tensor."""
    for name, array in tensors.items():
        where = source.get(name, HF_WEIGHTS)
        if name not in expected:
            raise ValueError(f"{where}: unexpected tensor {name!r}: it is not part of {what}")
        if tuple(array.shape) != expected[name]:
            raise ValueError(f"{where}: tensor {name!r} has shape {tuple(array.shape)}, "
                             f"but {what} needs "
                             f"{expected[name]}")
        if array.dtype.kind != "f":
            raise ValueError(f"{where}: tensor {name!r} has dtype {array.dtype}; weights must be "
                             "floating point")
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"missing tensor(s) {', '.join(map(repr, missing[:3]))}{more} for {what}")


def hf_to_tinyllm_state(tensors: dict, config: GPTConfig, arch: str,
                        source: dict | None = None) -> dict:
    """HF tensors → a tinyllm state dict for ``GPT(config)``;
    every tensor checked by name and shape."""
    source = source or {}
    tensors = {name: array for name, array in tensors.items() if not name.endswith(_SKIPPED)
               # tied: HF ties it on loading too
               and not (name == "lm_head.weight" and config.tie_weights)}
    what = (f"a {arch} with this config.json (n_layer={config.n_layer}, "
            f"hidden_size={config.n_embd}, "
            f"tie_word_embeddings={config.tie_weights})")
    check_tensors(tensors, hf_shapes(config, arch), source, what)
    t = {name: np.asarray(array, dtype=backend.dtype) for name, array in tensors.items()}
    state = {"wte.weight": t["model.embed_tokens.weight"], "ln_f.weight": t["model.norm.weight"]}
    if not config.tie_weights:
        state["lm_head.weight"] = t["lm_head.weight"]
    for i in range(config.n_layer):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        qkv = [p + f"self_attn.{x}_proj." for x in "qkv"]
        state[b + "attn.qkv.weight"] = np.concatenate([t[name + "weight"] for name in qkv])
        if config.qkv_bias:
            state[b + "attn.qkv.bias"] = np.concatenate([t[name + "bias"] for name in qkv])
        state[b + "attn.proj.weight"] = t[p + "self_attn.o_proj.weight"]
        state[b + "ln_1.weight"] = t[p + "input_layernorm.weight"]
        state[b + "ln_2.weight"] = t[p + "post_attention_layernorm.weight"]
        if arch == "MixtralForCausalLM":
            moe = p + "block_sparse_moe."
            state[b + "mlp.router.weight"] = t[moe + "gate.weight"]
            for ours, w in (("gate", "w1"), ("up", "w3"), ("proj", "w2")):
                experts = [t[moe + f"experts.{e}.{w}.weight"] for e in range(config.n_expert)]
                state[b + f"mlp.experts.{ours}.weight"] = np.stack(experts)          # (E, out, in)
        else:
            for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("proj", "down_proj")):
                state[b + f"mlp.{ours}.weight"] = t[p + f"mlp.{theirs}.weight"]
    return state


def tinyllm_to_hf_state(model) -> dict[str, np.ndarray]:
    """``model``'s weights under HF names, float32 (the inverse of ``hf_to_tinyllm_state``)."""
    config, arch = model.config, architecture_for(model.config)
    w = {name: backend.to_numpy(array).astype(np.float32)
         for name, array in model.state_dict().items()}
    out = {"model.embed_tokens.weight": w["wte.weight"], "model.norm.weight": w["ln_f.weight"]}
    if not config.tie_weights:
        out["lm_head.weight"] = w["lm_head.weight"]
    q_rows, kv_rows = config.n_head * config.head_size, config.kv_heads * config.head_size
    splits = (q_rows, q_rows + kv_rows)
    for i in range(config.n_layer):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias") if config.qkv_bias else ("weight",):
            for x, part in zip("qkv", np.split(w[b + f"attn.qkv.{kind}"], splits)):
                out[p + f"self_attn.{x}_proj.{kind}"] = part
        out[p + "self_attn.o_proj.weight"] = w[b + "attn.proj.weight"]
        out[p + "input_layernorm.weight"] = w[b + "ln_1.weight"]
        out[p + "post_attention_layernorm.weight"] = w[b + "ln_2.weight"]
        if arch == "MixtralForCausalLM":
            out[p + "block_sparse_moe.gate.weight"] = w[b + "mlp.router.weight"]
            for ours, theirs in (("gate", "w1"), ("up", "w3"), ("proj", "w2")):
                for e, expert in enumerate(w[b + f"mlp.experts.{ours}.weight"]):
                    out[p + f"block_sparse_moe.experts.{e}.{theirs}.weight"] = expert
        else:
            for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("proj", "down_proj")):
                out[p + f"mlp.{theirs}.weight"] = w[b + f"mlp.{ours}.weight"]
    return {name: np.ascontiguousarray(array) for name, array in out.items()}


# ------------------------------------------------------------------------------------------- files


def _weight_files(directory: Path) -> list[Path]:
    if (directory / HF_WEIGHTS).exists():
        return [directory / HF_WEIGHTS]
    if (directory / HF_INDEX).exists():
        weight_map = read_json(directory / HF_INDEX,
                               what="safetensors index").get("weight_map") or {}
        return [directory / name for name in dict.fromkeys(weight_map.values())]
    return []


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable),
    or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits_in_memory(directory, itemsize: int = 4) -> int:
    """The parameter count of the safetensors files in ``directory`` (headers only); MemoryError
    when two copies at ``itemsize`` bytes each (the file's tensors and the model's) exceed the
    memory available."""
    count = sum(int(np.prod(info.shape, dtype=np.int64)) for file in _weight_files(Path(directory))
                for info in read_header(file).tensors.values())
    needed, available = 2 * count * itemsize, available_memory()
    if available is not None and needed > available:
        raise MemoryError(f"'{directory}' holds {count:,} parameters: loading them as "
                          f"{itemsize * 8}-bit floats needs about {needed / 2**30:.1f} GiB (the "
                          f"file's tensors and the model's), but only {available / 2**30:.1f} GiB "
                          "of memory is available")
    return count


def load_hf_llama(path, dtype=None) -> tuple[GPT, str]:
    """(tinyllm GPT, architecture) from a Hugging Face Llama/Qwen2/Mistral/Mixtral directory.

    ``dtype``: "float32" (default) or "float64"; F16 and BF16 files are widened to it."""
    directory = Path(path)
    if not (directory / HF_CONFIG).exists():
        raise FileNotFoundError(f"'{directory}' has no {HF_CONFIG}, so it is not a Hugging Face "
                                "model directory")
    config, arch = config_from_hf(read_json(directory / HF_CONFIG, what="Hugging Face config"),
                                  str(directory / HF_CONFIG))
    dtype = np.dtype(dtype or backend.dtype)
    check_fits_in_memory(directory, dtype.itemsize)
    tensors, source = read_hf_tensors(directory)
    with backend.default_dtype(dtype):
        state = hf_to_tinyllm_state(tensors, config, arch, source)
        del tensors
        model = GPT(config)
        model.load_state_dict(state)
    return model.eval(), arch


def save_hf_llama(model, directory, tokenizer=None, dtype: str = "float32",
                  architecture=None) -> Path:
    """Write ``model`` as a HF directory (config.json, model.safetensors and, with a BPE tokenizer,
    tokenizer.json) that the architecture's ``from_pretrained`` loads. ``dtype``:
    float32/float16/bfloat16; ``architecture``: the one it was imported as (only
    "MistralForCausalLM" changes what is written)."""
    directory = write_hf_weights(tinyllm_to_hf_state(model), directory, dtype)
    special = getattr(tokenizer, "special_tokens", {}) if tokenizer is not None else {}
    bos = next((special[t] for t in ("<|begin_of_text|>", "<s>", "<|endoftext|>") if t in special),
               None)
    eos = next((special[t] for t in ("<|eot_id|>", "<|im_end|>", "</s>",
                                     "<|endoftext|>") if t in special), None)
    hf = hf_config_from(model.config, bos, eos, architecture)
    hf["torch_dtype"] = dtype
    atomic_write_json(directory / HF_CONFIG, hf)
    _write_tokenizer(tokenizer, directory)
    return directory


def _write_tokenizer(tokenizer, directory: Path) -> None:
    """tokenizer.json: an imported one as it was read, a tinyllm BPE one converted
    (``hf_tokenizer_json``)."""
    from ..tokenizer import BPETokenizer
    from ..tokenizer.hf_json import hf_tokenizer_json

    # read from a tokenizer.json: write it as read
    if hasattr(tokenizer, "_data"):
        tokenizer.save(directory / "tokenizer.json")
    elif isinstance(tokenizer, BPETokenizer):
        atomic_write_json(directory / "tokenizer.json", hf_tokenizer_json(tokenizer))


__all__ = ["ARCHITECTURES", "architecture_of", "config_from_hf", "hf_config_from", "hf_shapes",
           "hf_to_tinyllm_state", "tinyllm_to_hf_state", "load_hf_llama", "save_hf_llama",
           "check_fits_in_memory"]
