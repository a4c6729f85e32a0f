"""Prompt tuning and prefix tuning: steer a frozen model with a few learned vectors in front of the
text.

Prompt tuning (Lester et al. 2021): P *virtual tokens* — free vectors of the embedding width C, not
rows of the vocabulary — go in front of every input's token embeddings, and only they learn:

    ids (B, T) ──wte (+ wpe)──► (B, T, C) ───┐
    soft prompt (P, C) ──────────────────────┴─prepend─► (B, P + T, C) ──blocks──► keep the last T ──► ln_f

Prefix tuning (Li & Liang 2021): every attention layer gets P learned keys and values of its own,
which every query sees in front of the text's:

    layer l:   K = [K_l ; x W_k],   V = [V_l ; x W_v]            K_l, V_l: (H_kv, P, D)

Prompt tuning trains P·C numbers, prefix tuning 2·n_layer·P·H_kv·D; the adapter file
(``lora.save_adapter``, the same two files as LoRA's) is kilobytes. Neither folds into the weights:
the model runs with them.

How the two relate. Under the causal mask a virtual token sees only virtual tokens, so its keys and
values at every layer depend on the soft prompt alone, the same for every input: a soft prompt *is*
a key/value prefix (``virtual_keys_values`` computes it), one whose layers are tied together through
the frozen model, where prefix tuning sets them free. Generation uses this: a soft prompt runs
through the model once per prefill and is then a per-layer prefix beside the KV cache, which keeps
the text's positions only (so the decoder's masks and sliding window know nothing of it). Prefix
tuning starts from the keys and values of a soft prompt (Li & Liang start from real words'
activations), so at step 0 the two compute the same thing.

Positions. The virtual tokens sit before the text. With learned positions the text keeps positions 0
… T-1 and the virtual tokens get no position vector (a free vector learns whatever one would add);
with rotary positions the virtual tokens take 0 … P-1 and the text P … P+T-1 (a rotation matters
only through the distance between a query and a key). No slot of the learned position table is spent
on them.

Starting point: the embeddings of P tokens sampled from the vocabulary, which Lester et al. found
better than random vectors. The gradient reaching the soft prompt (or a prefix) is that of
``functional.prefix.prepend``: its part of the output gradient, summed over the batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import numbers

import numpy as np

from . import backend
from .autograd import Tensor, no_grad
from .functional.prefix import mask_with_prefix, prepend
from .functional.rope import rope_cos_sin
from .kv_cache import KVCache
from .nn import Module, Parameter

KINDS = ("prompt", "prefix")


class SoftPrompt(Module):
    """``weight`` (P, C): P virtual token embeddings in front of every text."""

    def __init__(self, embeddings):
        self.weight = Parameter(embeddings)

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def extend(self, model, x, positions, mask, cache):
        """What ``GPT.hidden_states`` runs its blocks on: (x, rotary positions, mask, each layer's
        prefix)."""
        n = self.length
        # generation: the virtual tokens as a key/value prefix, once per prefill
        if cache is not None:
            if cache.length == 0 or cache.prefixes is None:
                cache.prefixes = virtual_keys_values(model, self.weight.data)
            return x, _rotary_positions(positions, n), mask, cache.prefixes
        x = prepend(self.weight, x, axis=1)                  # (B, P + T, C)
        positions = _rotary_positions(positions, n, virtual=True)
        return x, positions, mask_with_prefix(mask, n, n), [None] * len(model.blocks)


class LayerPrefix(Module):
    """One attention layer's learned ``key`` and ``value`` prefix, each (H_kv, P, D)."""

    def __init__(self, keys, values):
        self.key = Parameter(keys)
        self.value = Parameter(values)


class KeyValuePrefix(Module):
    """``layers[l]``: layer l's key/value prefix (prefix tuning)."""

    def __init__(self, keys_values):
        self.layers = [LayerPrefix(keys, values) for keys, values in keys_values]

    @property
    def length(self) -> int:
        return self.layers[0].key.shape[1]

    def extend(self, model, x, positions, mask, cache):
        """The text unchanged (each attention layer puts its prefix in front of its keys and
        values)."""
        prefixes = [(layer.key, layer.value) for layer in self.layers]
        return x, _rotary_positions(positions, self.length), mask, prefixes


def _rotary_positions(positions, n_virtual: int, virtual: bool = False):
    """The text's positions moved after the virtual tokens, with the virtual tokens' 0 … P-1 in
    front when they run through the blocks too (only rotary embeddings read these: learned positions
    are added before)."""
    lib = np if isinstance(positions, np.ndarray) else backend.xp
    shifted = positions + n_virtual
    if not virtual:
        return shifted
    front = lib.broadcast_to(lib.arange(n_virtual), shifted.shape[:-1] + (n_virtual,))
    return lib.concatenate([front, shifted], axis=-1)


def virtual_keys_values(model, embeddings) -> list:
    """Each layer's (keys, values), (H_kv, P, D) each, of P embeddings (P, C) run through ``model``
    as the first positions of a text (in eval mode, without gradients): the key/value prefix that a
    soft prompt amounts to."""
    config = model.config
    n = embeddings.shape[0]
    cache = KVCache(config.n_layer, 1, config.kv_heads, n, config.head_size, embeddings.dtype)
    rope = None
    if model.wpe is None:
        rope = rope_cos_sin(np.arange(n), config.head_size, config.rope_theta, embeddings.dtype,
                            config.rope_scaling)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            x = Tensor(embeddings[None], dtype=embeddings.dtype)           # (1, P, C)
            for block, layer in zip(model.blocks, cache.layers):
                x, _ = block(x, None, layer, rope)            # (the routing is not needed)
    finally:
        model.train(was_training)
    return [(layer.keys[0].copy(), layer.values[0].copy()) for layer in cache.layers]


# ----------------------------------------------------------------------------------------- apply

def apply_prompt_tuning(model, n_virtual: int, kind: str = "prompt", trainable=(),
                        seed: int = 0) -> dict:
    """Put a soft prompt (``kind="prompt"``) or per-layer key/value prefixes (``kind="prefix"``) of
    ``n_virtual`` positions in front of every input of ``model`` (a GPT or a ``GPTClassifier``), and
    freeze every parameter but them and those that ``trainable`` names (e.g. ``("classifier",)``:
    see ``lora.freeze_all_but``). Both start from the embeddings of ``n_virtual`` tokens drawn from
    the vocabulary with ``seed``. The settings are kept as ``model.prompt_tuning_config`` for
    ``lora.save_adapter``; returns the parameter report (``lora.parameter_report``)."""
    from .lora import freeze_all_but, parameter_report
    _check_settings(model, n_virtual, kind)
    trainable = freeze_all_but(model, trainable)
    ids = np.random.default_rng(seed).choice(model.config.vocab_size, size=n_virtual)
    embeddings = model.wte.weight.data[backend.asarray(ids)]                 # (P, C)
    if model.wpe is not None:                    # as if they were the first tokens of a text
        embeddings = embeddings + model.wpe.weight.data[:n_virtual]
    model.prompt_adapter = SoftPrompt(embeddings) if kind == "prompt" else \
        KeyValuePrefix(virtual_keys_values(model, embeddings))
    model.prompt_tuning_config = {"kind": kind, "virtual_tokens": int(n_virtual),
                                  "trainable": list(trainable), "base_model": base_identity(model)}
    return parameter_report(model)


def apply_saved_prompt_tuning(model, config: dict, where="the adapter") -> None:
    """Give ``model`` an empty adapter shaped as ``config`` (an adapter_config.json) says, for
    ``lora.load_adapter`` to fill: after checking that ``model`` is the model the adapter was
    trained on."""
    from .lora import freeze_all_but
    kind, n_virtual = config.get("kind"), config.get("virtual_tokens")
    _check_settings(model, n_virtual, kind)
    check_base_model(model, config.get("base_model", {}), f"{where} ({kind} tuning)")
    trainable = freeze_all_but(model, config.get("trainable", ()))
    dtype = model.wte.weight.dtype
    c = model.config
    if kind == "prompt":
        model.prompt_adapter = SoftPrompt(backend.xp.zeros((n_virtual, c.n_embd), dtype=dtype))
    else:
        shape = (c.kv_heads, n_virtual, c.head_size)
        zeros = backend.xp.zeros
        model.prompt_adapter = KeyValuePrefix([(zeros(shape, dtype=dtype),
                                                zeros(shape, dtype=dtype))
                                               for _ in range(c.n_layer)])
    model.prompt_tuning_config = {"kind": kind, "virtual_tokens": int(n_virtual),
                                  "trainable": list(trainable),
                                  "base_model": config.get("base_model")}


def _check_settings(model, n_virtual, kind) -> None:
    from .model import GPT
    if not isinstance(model, GPT):
        raise ValueError("prompt and prefix tuning need a GPT (a decoder: the virtual tokens go in "
                         f"front of the text under the causal mask); got {type(model).__name__}")
    if kind not in KINDS:
        raise ValueError(f"prompt tuning: kind must be one of {', '.join(map(repr, KINDS))}, got "
                         f"{kind!r}")
    block = model.config.block_size
    if (isinstance(n_virtual, bool) or not isinstance(n_virtual, numbers.Integral)
            or not 1 <= n_virtual < block):
        raise ValueError(f"{kind} tuning needs a number of virtual tokens in 1 … {block - 1} "
                         f"(below the model's block_size {block}), got {n_virtual!r}")
    if getattr(model, "prompt_adapter", None) is not None or getattr(model, "lora_config",
                                                                     None) is not None:
        raise ValueError("this model has an adapter already (prompt/prefix tuning or LoRA); start "
                         "from a plain model")


@contextlib.contextmanager
def without_prompt(model):
    """Inside the ``with`` block, ``model`` runs without its soft prompt or prefixes: the frozen
    base model."""
    adapter = getattr(model, "prompt_adapter", None)
    model.prompt_adapter = None
    try:
        yield model
    finally:
        model.prompt_adapter = adapter


# ----------------------------------------------------------------------------------------- identity

def base_identity(model) -> dict:
    """What an adapter records of the frozen model it was trained on: its shape, and a SHA-256 of
    its token embedding table (which tells apart two models of the same shape, though not a finetune
    that left the embeddings alone)."""
    c = model.config
    table = backend.to_numpy(model.wte.weight.data).astype(np.float32)
    return {"vocab_size": c.vocab_size, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_kv_head": c.kv_heads,
            "n_embd": c.n_embd, "pos": c.pos,
            "embedding_sha256": hashlib.sha256(table.tobytes()).hexdigest()}


def check_base_model(model, saved: dict, what: str) -> None:
    """ValueError unless ``model`` is the one ``saved`` (a ``base_identity``) describes."""
    from .checkpoint import config_differences
    current = base_identity(model)
    shape = [k for k in current if k != "embedding_sha256"]
    differences = config_differences({k: saved.get(k) for k in shape},
                                     {k: current[k] for k in shape})
    if differences:
        raise ValueError(f"{what} was trained on a different model: {'; '.join(differences)}. A "
                         "soft prompt or prefix only means something to the frozen model it was "
                         "trained with")
    if saved.get("embedding_sha256") != current["embedding_sha256"]:
        raise ValueError(f"{what} was trained on a different model of the same shape (its token "
                         "embeddings differ from this model's). A soft prompt or prefix only means "
                         "something to the frozen model it was trained with")
