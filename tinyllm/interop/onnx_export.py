"""A tinyllm GPT as an ONNX graph: the forward of ``model.py`` written out in ONNX operators, so
onnxruntime (or any ONNX runtime: TensorRT, DirectML, a browser's onnxruntime-web) runs the model
without Python or tinyllm.

Both styles of ``GPTConfig`` export: GPT-2 (learned positions, LayerNorm, GELU, biases) and Llama
(RoPE, RMSNorm, SwiGLU, grouped-query attention, Qwen2's q/k/v biases, Llama 3's rope scaling). The
graph reads like the model, one function per module; its inputs and outputs are named as in Hugging
Face's ONNX exports:

    input_ids                   int64 (batch, sequence)
    attention_mask              int64 (batch, past_sequence + sequence)    1 = a real token, 0 = padding
    position_ids                int64 (batch, sequence)                     each token's position, < block_size
    past_key_values.{i}.key     (batch, kv_heads, past_sequence, head_size) }  kv_cache=True only: layer i's
    past_key_values.{i}.value   (batch, kv_heads, past_sequence, head_size) }  cached keys (rotated) and values
  →
    logits                      (batch, sequence, vocab)
    present.{i}.key / .value    (batch, kv_heads, past_sequence + sequence, head_size)   kv_cache=True only

With the cache, a prefill passes past tensors of length 0 and each decode step passes back the
``present`` of the step before: the cache lives outside the graph, as ``tinyllm.kv_cache`` does
inside tinyllm. Padding and positions come from the caller, as in ``tinyllm.generate``: a
left-padded row has zeros in attention_mask and counts its positions from its first real token.

Choices:
- opset 17: every operator here has had its current meaning since then (LayerNormalization is new in
  17), and every runtime of the last years runs it. RMSNorm, GELU's tanh form and the rotation are
  written out in elementwise operators, so the graph also shows how they work.
- Linear weights are stored transposed, (in, out) as ``NAME.weight.T``, so ``y = x W + b`` is one
  MatMul; a tied output head is a Transpose of ``wte.weight`` (which runtimes fold once at load),
  not a second copy.
- Grouped-query attention broadcasts instead of copying: queries are viewed as (B, H_kv, G, T, D)
  and the keys as (B, H_kv, 1, T_k, D), so MatMul pairs each kv head with its G query heads
  (tinyllm's own trick).
- float16: weights, activations, cache and logits are float16; the norms' statistics and the softmax
  run in float32 (LayerNormalization's stash_type, explicit Casts elsewhere), as Hugging Face's half
  models do.
- Masked scores are set to the lowest finite float, not -inf, so a fully masked row (a padding
  query) gives finite numbers (tinyllm gives zeros there; both are logits nobody reads).
- A model whose weights exceed protobuf's 2 GiB limit keeps them in ``NAME.onnx.data`` beside the
  graph (ONNX's external data), written first; both files are written atomically.

Not exported (a clear error instead): mixture-of-experts layers, and any GPTConfig option this file
does not know. The ``onnx`` package is needed (``pip install 'tinyllm[onnx]'``); ``onnxruntime``
only to run the result (``onnx_run.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np

from .. import backend
from ..files import atomic_write, atomic_write_with
from ..functional.dense import GELU_SCALE
from ..functional.rope import rope_frequencies
from ..model import GPT, GPTConfig
from ..nn import CausalSelfAttention, LayerNorm, Linear, MLP, RMSNorm, SwiGLU

OPSET = 17
DTYPES = ("float32", "float16")
# bytes of weights kept inside the .onnx file (protobuf refuses more than 2 GiB)
INLINE_LIMIT = 1_800_000_000
# GPTConfig fields the graph implements (or that do not change inference: dropout, the MoE-only
# fields when mlp is not "moe", which is checked on its own). Any other field must keep its default
# value.
EXPORTED_FIELDS = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias",
                   "tie_weights",
                   "norm", "pos", "mlp", "n_kv_head", "mlp_hidden", "n_expert", "expert_top_k",
                   "shared_expert",
                   "aux_loss_coef", "rope_theta", "norm_eps", "qkv_bias", "rope_scaling"}


def require_onnx():
    """The ``onnx`` module, or a RuntimeError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx package: pip install 'tinyllm[onnx]' "
                           "(or pip install onnx)") from None
    return onnx


def check_exportable(model) -> None:
    """ValueError naming the option when ``model`` has a part the ONNX graph does not implement."""
    if not isinstance(model, GPT):
        raise ValueError(f"ONNX export takes a tinyllm GPT (decoder), not a {type(model).__name__}")
    config = model.config
    if config.mlp == "moe":
        raise ValueError("ONNX export does not support mixture-of-experts models (mlp='moe'): "
                         "export a dense GPT-2- or Llama-style model")
    defaults = GPTConfig()
    for field in dataclasses.fields(GPTConfig):
        value = getattr(config, field.name)
        if field.name not in EXPORTED_FIELDS and value != getattr(defaults, field.name):
            raise ValueError(f"ONNX export does not implement GPTConfig.{field.name}={value!r}")


# ---------------------------------------------------------------------------------------- the graph


class Graph:
    """The nodes and weights of one ONNX graph, added in forward order; each ``op`` returns its
    output's name. ``scope`` prefixes node names (``/blocks.0/MatMul_12``) so a graph viewer shows
    which block is which."""

    def __init__(self, onnx, dtype: str):
        self.onnx, self.dtype = onnx, np.dtype(dtype)
        self.elem_type = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        # weights: name → NumPy array, in the order they were added
        self.nodes, self.weights = [], {}
        self.scope = ""
        self._ids = itertools.count()

    def op(self, op_type: str, *inputs: str, out: str | None = None, outputs: int = 1,
           **attributes):
        name = f"{self.scope}/{op_type}_{next(self._ids)}"
        names = [out] if out else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, name=name,
                                                     **attributes))
        return names[0] if outputs == 1 else names

    def weight(self, name: str, array, dtype=None) -> str:
        """A weight (a NumPy copy in the graph's dtype, or ``dtype``), checked to fit that dtype."""
        source = np.asarray(array)
        with np.errstate(over="ignore"):      # checked just below
            array = np.ascontiguousarray(source, dtype=dtype or self.dtype)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            if not np.isfinite(source).all():
                raise ValueError(f"weight {name} holds NaN or infinite values: the run itself is "
                                 "broken")
            raise ValueError(f"weight {name} has values too large for {array.dtype} (it holds "
                             f"magnitudes up to {np.finfo(array.dtype).max:g}): export it as "
                             "float32")
        self.weights[name] = array
        return name

    def constant(self, values, dtype=np.int64) -> str:
        """A small constant (a shape, an axis list, a scalar), stored as a weight named const_N."""
        return self.weight(f"const_{next(self._ids)}", np.asarray(values, dtype=dtype), dtype)

    def scalar(self, value: float) -> str:
        return self.constant(value, self.dtype)

    def to_float32(self, x: str) -> str:
        return x if self.dtype == np.float32 else self.op("Cast", x, to=self.onnx.TensorProto.FLOAT)

    def from_float32(self, x: str) -> str:
        return x if self.dtype == np.float32 else self.op("Cast", x, to=self.elem_type)


def _param(parameter) -> np.ndarray:
    return backend.to_numpy(parameter.data)


def _linear(g: Graph, x: str, linear: Linear, name: str) -> str:
    """x (…, in) → x Wᵀ + b (…, out), with Wᵀ stored as ``name.weight.T``."""
    if type(linear) is not Linear:   # e.g. LoRALinear: its adapter would be silently dropped
        raise ValueError(f"ONNX export reads {name} as a plain Linear layer, but it is a "
                         f"{type(linear).__name__} (merge LoRA adapters into the weights first)")
    y = g.op("MatMul", x, g.weight(f"{name}.weight.T", _param(linear.weight).T))
    return y if linear.bias is None else g.op("Add", y,
                                              g.weight(f"{name}.bias", _param(linear.bias)))


def _norm(g: Graph, x: str, norm, name: str) -> str:
    """LayerNorm (ONNX's own operator) or RMSNorm written out: x / √(mean(x²) + ε) · w, in
    float32."""
    weight = g.weight(f"{name}.weight", _param(norm.weight))
    if isinstance(norm, LayerNorm):
        bias = [] if norm.bias is None else [g.weight(f"{name}.bias", _param(norm.bias))]
        return g.op("LayerNormalization", x, weight, *bias, axis=-1, epsilon=norm.eps)
    if not isinstance(norm, RMSNorm):
        raise ValueError(f"ONNX export knows LayerNorm and RMSNorm, not {name}: "
                         f"{type(norm).__name__}")
    x32 = g.to_float32(x)
    mean_square = g.op("ReduceMean", g.op("Mul", x32, x32), axes=[-1], keepdims=1)        # (…, 1)
    rstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_square,
                                                g.constant(norm.eps, np.float32))))
    return g.op("Mul", g.from_float32(g.op("Mul", x32, rstd)), weight)


def _gelu(g: Graph, x: str) -> str:
    """GPT-2's GELU, tanh form: x · ½(1 + tanh(√(2/π)(x + 0.044715 x³)))
    (``functional.dense.gelu_forward``)."""
    cube = g.op("Mul", g.op("Mul", x, x), x)
    inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.scalar(0.044715))), g.scalar(GELU_SCALE))
    half = g.op("Mul", g.op("Add", g.op("Tanh", inner), g.scalar(1.0)), g.scalar(0.5))
    return g.op("Mul", x, half)


def _mlp(g: Graph, x: str, mlp, name: str) -> str:
    """GPT-2's fc → GELU → proj, or Llama's proj(silu(gate) ⊙ up)."""
    if isinstance(mlp, MLP):
        return _linear(g, _gelu(g, _linear(g, x, mlp.fc, f"{name}.fc")), mlp.proj, f"{name}.proj")
    gate, up = _linear(g, x, mlp.gate, f"{name}.gate"), _linear(g, x, mlp.up, f"{name}.up")
    silu = g.op("Mul", gate, g.op("Sigmoid", gate))
    return _linear(g, g.op("Mul", silu, up), mlp.proj, f"{name}.proj")


def _rotate(g: Graph, x: str, cos: str, sin: str, half: int) -> str:
    """RoPE on x (B, T, heads, D) with cos, sin (B, T, 1, D/2): (x1 cos - x2 sin, x2 cos + x1 sin),
    the "rotate half" pairing of ``functional.rope``."""
    x1, x2 = g.op("Split", x, g.constant([half, half]), axis=-1, outputs=2)
    y1 = g.op("Sub", g.op("Mul", x1, cos), g.op("Mul", x2, sin))
    y2 = g.op("Add", g.op("Mul", x2, cos), g.op("Mul", x1, sin))
    return g.op("Concat", y1, y2, axis=-1)


def _attention(g: Graph, x: str, attn: CausalSelfAttention, name: str, config: GPTConfig, mask: str,
               rope, cache) -> str:
    """Causal (grouped-query) self-attention of x (B, T, C). ``mask`` (B, 1, 1, T, P + T) is True
    where a query may see a key; ``rope``: (cos, sin) or None. ``cache``: None, or the names of this
    layer's past keys and values (B, H_kv, P, D) and the names to give the present ones (B, H_kv, P
    + T, D)."""
    n_head, n_kv_head, head_size = config.n_head, config.kv_heads, config.head_size
    group = n_head // n_kv_head
    # (B, T, (H + 2 H_kv)·D)
    qkv = _linear(g, x, attn.qkv, f"{name}.qkv")
    heads = g.op("Reshape", qkv, g.constant([0, 0, n_head + 2 * n_kv_head, head_size]))
    # (B, T, ·, D)
    q, k, v = g.op("Split", heads, g.constant([n_head, n_kv_head, n_kv_head]), axis=2, outputs=3)
    if rope is not None:     # keys are cached rotated, as in tinyllm.kv_cache
        q, k = _rotate(g, q, *rope, head_size // 2), _rotate(g, k, *rope, head_size // 2)
    # (B, H_kv, T, D)
    k, v = (g.op("Transpose", t, perm=[0, 2, 1, 3]) for t in (k, v))
    if cache is not None:
        (past_keys, past_values), (present_keys, present_values) = cache
        # (B, H_kv, P + T, D)
        k = g.op("Concat", past_keys, k, axis=2, out=present_keys)
        v = g.op("Concat", past_values, v, axis=2, out=present_values)
    # scaled first, as tinyllm
    q = g.op("Mul", q, g.scalar(1.0 / math.sqrt(head_size)))
    q = g.op("Transpose", g.op("Reshape", q, g.constant([0, 0, n_kv_head, group, head_size])),
             # (B, H_kv, G, T, D)
             perm=[0, 2, 3, 1, 4])
    # (B,H_kv,1,D,Tk)
    keys_t = g.op("Transpose", g.op("Unsqueeze", k, g.constant([2])), perm=[0, 1, 2, 4, 3])
    # (B, H_kv, G, T, Tk)
    scores = g.to_float32(g.op("MatMul", q, keys_t))
    lowest = g.constant(np.finfo(np.float32).min, np.float32)
    probs = g.from_float32(g.op("Softmax", g.op("Where", mask, scores, lowest), axis=-1))
    # (B, H_kv, G, T, D)
    y = g.op("MatMul", probs, g.op("Unsqueeze", v, g.constant([2])))
    y = g.op("Reshape", g.op("Transpose", y, perm=[0, 3, 1, 2, 4]),
             g.constant([0, 0, n_head * head_size]))
    return _linear(g, y, attn.proj, f"{name}.proj")                                   # (B, T, C)


def _attention_mask(g: Graph) -> str:
    """(B, 1, 1, T, P + T) booleans: query i (at index P + i of the keys) may see key j when j ≤ P +
    i and attention_mask[b, j] is 1. Computed once from the input shapes; every layer uses it."""
    length = g.op("Squeeze", g.op("Shape", "input_ids", start=1, end=2))               # T
    total = g.op("Squeeze", g.op("Shape", "attention_mask", start=1, end=2))           # P + T
    zero, one = g.constant(0), g.constant(1)
    # (T,)  P … P + T - 1
    query_index = g.op("Range", g.op("Sub", total, length), total, one)
    # (Tk,) 0 … P + T - 1
    key_index = g.op("Range", zero, total, one)
    causal = g.op("LessOrEqual", g.op("Unsqueeze", key_index, g.constant([0])),
                  g.op("Unsqueeze", query_index, g.constant([1])))                    # (T, Tk)
    real = g.op("Cast", "attention_mask", to=g.onnx.TensorProto.BOOL)
    # (B, 1, 1, 1, Tk)
    real = g.op("Unsqueeze", real, g.constant([1, 2, 3]))
    return g.op("And", causal, real, out="attention_allowed")


def _rope_cos_sin(g: Graph, config: GPTConfig) -> tuple[str, str]:
    """cos, sin (B, T, 1, D/2) of each token's position: rows of (block_size, D/2) tables gathered
    by position_ids (the tables are ``functional.rope``'s, computed in float64 then rounded to the
    graph's dtype)."""
    angles = np.arange(config.block_size)[:, None] * rope_frequencies(config.head_size,
                                                                      config.rope_theta,
                                                                       config.rope_scaling)[None, :]
    rotation = []
    for name, table in (("rope.cos", np.cos(angles)), ("rope.sin", np.sin(angles))):
        gathered = g.op("Gather", g.weight(name, table), "position_ids", axis=0)      # (B, T, D/2)
        # (B, T, 1, D/2)
        rotation.append(g.op("Unsqueeze", gathered, g.constant([2])))
    return rotation[0], rotation[1]


# ---------------------------------------------------------------------------------------- the model


def _build(onnx, model: GPT, dtype: str, kv_cache: bool):
    """(graph, inputs, outputs) of ``model``'s forward, the way ``GPT.hidden_states`` and
    ``forward`` run it."""
    config, g = model.config, Graph(onnx, dtype)
    helper, int64 = onnx.helper, onnx.TensorProto.INT64
    total = "past_sequence + sequence" if kv_cache else "sequence"
    past_shape = ["batch", config.kv_heads, "past_sequence", config.head_size]
    present_shape = ["batch", config.kv_heads, total, config.head_size]
    inputs = [helper.make_tensor_value_info("input_ids", int64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", int64, ["batch", total]),
              helper.make_tensor_value_info("position_ids", int64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", g.elem_type,
                                             ["batch", "sequence", config.vocab_size])]
    mask = _attention_mask(g)
    # (B, T, C)
    x = g.op("Gather", g.weight("wte.weight", _param(model.wte.weight)), "input_ids", axis=0)
    rope = None
    if model.wpe is not None:
        wpe = g.weight("wpe.weight", _param(model.wpe.weight))
        # + (B, T, C)
        x = g.op("Add", x, g.op("Gather", wpe, "position_ids", axis=0))
    else:
        rope = _rope_cos_sin(g, config)
    for i, block in enumerate(model.blocks):
        g.scope, name = f"/blocks.{i}", f"blocks.{i}"
        cache = None
        if kv_cache:
            past = (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
            present = (f"present.{i}.key", f"present.{i}.value")
            inputs += [helper.make_tensor_value_info(n, g.elem_type, past_shape) for n in past]
            outputs += [helper.make_tensor_value_info(n, g.elem_type, present_shape)
                        for n in present]
            cache = past, present
        h = _norm(g, x, block.ln_1, f"{name}.ln_1")
        x = g.op("Add", x, _attention(g, h, block.attn, f"{name}.attn", config, mask, rope, cache))
        if not isinstance(block.mlp, (MLP, SwiGLU)):
            raise ValueError("ONNX export knows GELU and SwiGLU feed-forward blocks, not "
                             f"{name}.mlp: {type(block.mlp).__name__}")
        x = g.op("Add", x, _mlp(g, _norm(g, x, block.ln_2, f"{name}.ln_2"), block.mlp,
                                f"{name}.mlp"))
    g.scope = ""
    # (B, T, C)
    h = _norm(g, x, model.ln_f, "ln_f")
    head = (g.op("Transpose", "wte.weight", perm=[1, 0]) if model.lm_head is None
            # (C, V)
            else g.weight("lm_head.weight.T", _param(model.lm_head.weight).T))
    # (B, T, V)
    g.op("MatMul", h, head, out="logits")
    return g, inputs, outputs


def _write_external(weights: dict, path: Path, threshold: int = 1024) -> dict:
    """Write every weight of ``threshold`` bytes or more into ``path`` (each at a 4 KiB boundary, so
    runtimes can map it); returns name → (offset, length)."""
    layout, offset = {}, 0
    for name, array in weights.items():
        if array.nbytes >= threshold:
            offset = -(-offset // 4096) * 4096
            layout[name] = (offset, array.nbytes)
            offset += array.nbytes

    def write(file):
        for name, (start, _) in layout.items():
            file.seek(start)
            file.write(weights[name].tobytes())

    atomic_write_with(path, write)
    return layout


def _model_proto(onnx, g: Graph, inputs, outputs, config: GPTConfig, kv_cache: bool, layout=None,
                 location=None):
    from .. import __version__
    initializers = []
    for name, array in g.weights.items():
        if layout and name in layout:
            tensor = onnx.TensorProto(name=name,
                                      data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                      dims=array.shape)
            offset, length = layout[name]
            for key, value in (("location", location), ("offset", str(offset)),
                               ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
        else:
            tensor = onnx.numpy_helper.from_array(array, name)
        initializers.append(tensor)
    graph = onnx.helper.make_graph(g.nodes, "tinyllm", inputs, outputs, initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="tinyllm", producer_version=__version__)
    # the oldest IR that opset 17 needs: older runtimes load it too
    model.ir_version = 8
    onnx.helper.set_model_props(model, {"tinyllm_config": json.dumps(config.to_dict()),
                                        "kv_cache": json.dumps(kv_cache)})
    return model


def export_onnx(model: GPT, path, dtype: str = "float32", kv_cache: bool = True,
                inline_limit: int = INLINE_LIMIT) -> dict:
    """Write ``model`` as the ONNX file ``path``, checked by ``onnx.checker`` (see the module
    docstring for the graph's inputs and outputs). ``dtype``: "float32" or "float16"; ``kv_cache``:
    past keys and values in, present ones out. Weights of more than ``inline_limit`` bytes in all go
    to ``path`` + ".data". Returns {"path", "data_path" (or None), "bytes" (of weights),
    "nodes"}."""
    onnx = require_onnx()
    if dtype not in DTYPES:
        raise ValueError(f"ONNX export writes {' or '.join(DTYPES)}, not {dtype!r}")
    check_exportable(model)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"'{path}' is a directory; give the file to write, e.g. "
                         f"{path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    g, inputs, outputs = _build(onnx, model, dtype, kv_cache)
    weight_bytes = sum(array.nbytes for array in g.weights.values())
    data_path = path.with_name(path.name + ".data") if weight_bytes > inline_limit else None
    layout = _write_external(g.weights, data_path) if data_path else None
    proto = _model_proto(onnx, g, inputs, outputs, model.config, kv_cache, layout,
                         data_path and data_path.name)
    nodes, serialized = len(g.nodes), proto.SerializeToString()
    # only the serialized bytes stay: one copy of the weights, not three
    del g, proto
    if data_path is None:
        onnx.checker.check_model(serialized, full_check=True)
    atomic_write(path, serialized)
    if data_path is not None:          # the checker reads a model with external data from its file
        onnx.checker.check_model(str(path), full_check=True)
    return {"path": path, "data_path": data_path, "bytes": weight_bytes, "nodes": nodes}
