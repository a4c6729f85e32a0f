"""Layers: a ``Module`` holds ``Parameter``s and other modules; its ``forward`` calls fused ops.

Registration is automatic and has no magic: ``named_parameters()`` walks the attributes of a module
in the order they were set, yielding every ``Parameter`` and recursing into every ``Module`` (and
into lists of modules, named by their index: ``blocks.0.attn.qkv.weight``).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from . import functional as F
from .autograd import Tensor, is_grad_enabled
from .functional.attention import check_heads, multi_head_attention_forward, split_qkv
from .functional.moe import check_expert_top_k
from .functional.prefix import mask_with_prefix, prepend_forward
from .functional.rope import apply_rotary


class Parameter(Tensor):
    """A Tensor that is learned: it requires grad, and modules find it by walking their
    attributes."""

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)


class Module:
    training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ the tree of modules
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def get_submodule(self, dotted: str) -> "Module":
        """The module at a dotted path such as ``blocks.0.attn.qkv`` ("" is this module)."""
        module = self
        for part in dotted.split(".") if dotted else ():
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        return module

    def set_submodule(self, dotted: str, value: "Module") -> None:
        """Put ``value`` at a dotted path in place of the module there (to swap one kind of layer
        for another)."""
        parent_path, _, last = dotted.rpartition(".")
        parent = self.get_submodule(parent_path)
        if last.isdigit():
            parent[int(last)] = value
        else:
            setattr(parent, last, value)

    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs, each parameter once (a tied weight appears under its first
        name)."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return int(sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only))

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True):
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------------ weights in and out
    def state_dict(self) -> dict:
        """name → array (the parameters' own arrays, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters. Names must match exactly (unless ``strict=False``, which
        skips missing and unexpected names) and shapes always; the error lists every offending
        name."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        mis_shaped = [f"{name}: checkpoint {tuple(state[name].shape)} vs model {params[name].shape}"
                      for name in params if name in state
                      and tuple(state[name].shape) != params[name].shape]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mis_shaped:
            problems.append(f"shape mismatches: {'; '.join(mis_shaped)}")
        if problems:
            raise ValueError("load_state_dict: " + " | ".join(problems))
        for name, p in params.items():
            if name in state:
                p.data[...] = backend.xp.asarray(state[name], dtype=p.dtype)


def init_rng(seed: int) -> np.random.Generator:
    """The generator a model draws its initial weights from: NumPy's, on the host. The draws are
    copied to the device, so one seed gives the same weights on every device."""
    return np.random.default_rng(seed)


def _normal(shape, std, generator):
    """N(0, std²) initial weights from ``generator`` (``init_rng``'s, or a device generator)."""
    generator = generator if generator is not None else backend.global_rng()
    return backend.asarray(generator.standard_normal(shape, dtype=backend.dtype)
                           * backend.dtype.type(std))


class Linear(Module):
    """y = x Wᵀ + b. Weights start as N(0, std²); std defaults to 1/√in_features."""

    def __init__(self, in_features, out_features, bias=True, std=None, generator=None):
        std = 1.0 / math.sqrt(in_features) if std is None else std
        self.weight = Parameter(_normal((out_features, in_features), std, generator))
        self.bias = Parameter(backend.xp.zeros(out_features, dtype=backend.dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """A table of ``num_embeddings`` learned vectors; ``forward(ids)`` looks rows up."""

    def __init__(self, num_embeddings, embedding_dim, std=0.02, generator=None):
        self.weight = Parameter(_normal((num_embeddings, embedding_dim), std, generator))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def attend(self, x):
        """x (..., C) → (..., V): the dot product of x with every row, x Wᵀ (a tied output head)."""
        return F.linear(x, self.weight)


class LayerNorm(Module):
    def __init__(self, dim, bias=True, eps=1e-5):
        self.weight = Parameter(backend.xp.ones(dim, dtype=backend.dtype))
        self.bias = Parameter(backend.xp.zeros(dim, dtype=backend.dtype)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(Module):
    """Llama's norm: x / rms(x) · w (no mean subtraction, no bias); see ``functional.rms_norm``."""

    def __init__(self, dim, eps=1e-5):
        self.weight = Parameter(backend.xp.ones(dim, dtype=backend.dtype))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)


class Dropout(Module):
    def __init__(self, p=0.0, generator=None):
        self.p = p
        self.generator = generator

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.generator)


class GELU(Module):
    def forward(self, x):
        return F.gelu(x)


class MLP(Module):
    """The transformer's feed-forward block: Linear(C → 4C) → GELU → Linear(4C → C) → dropout."""

    def __init__(self, n_embd, hidden=None, bias=True, dropout=0.0, std=0.02, proj_std=0.02,
                 generator=None):
        hidden = 4 * n_embd if hidden is None else hidden
        self.fc = Linear(n_embd, hidden, bias, std, generator)
        self.proj = Linear(hidden, n_embd, bias, proj_std, generator)
        # masks come from the global generator (tinyllm.manual_seed)
        self.dropout = Dropout(dropout)

    def forward(self, x):                                     # (B, T, C)
        return self.dropout(self.proj(F.gelu(self.fc(x))))    # (B, T, 4C) inside


class SwiGLU(Module):
    """Llama's feed-forward block: proj(silu(gate(x)) ⊙ up(x)) → dropout, hidden width H.

    Three matrices instead of GPT-2's two, so for the same parameter count H is 2/3 of GPT-2's 4C
    (``tinyllm.model.swiglu_hidden``)."""

    def __init__(self, n_embd, hidden, bias=False, dropout=0.0, std=0.02, proj_std=0.02,
                 generator=None):
        self.gate = Linear(n_embd, hidden, bias, std, generator)
        self.up = Linear(n_embd, hidden, bias, std, generator)
        self.proj = Linear(hidden, n_embd, bias, proj_std, generator)
        self.dropout = Dropout(dropout)

    def forward(self, x):                                     # (B, T, C)
        return self.dropout(self.proj(F.swiglu(self.gate(x), self.up(x))))   # (B, T, H) inside


class ExpertLinear(Module):
    """The weights of one bias-free linear layer per expert, stacked: ``weight`` (E, out, in). It
    has no forward of its own: ``functional.moe_experts`` applies expert e's slice to the tokens
    routed to e."""

    def __init__(self, n_expert, in_features, out_features, std=0.02, generator=None):
        self.weight = Parameter(_normal((n_expert, out_features, in_features), std, generator))


class Experts(Module):
    """E SwiGLU experts' weights, stacked: ``gate``/``up`` (E, H, C) and ``proj`` (E, C, H)."""

    def __init__(self, n_expert, n_embd, hidden, std=0.02, proj_std=0.02, generator=None):
        self.gate = ExpertLinear(n_expert, n_embd, hidden, std, generator)
        self.up = ExpertLinear(n_expert, n_embd, hidden, std, generator)
        self.proj = ExpertLinear(n_expert, hidden, n_embd, proj_std, generator)


class MoE(Module):
    """Mixture-of-experts feed-forward block (see ``tinyllm.functional.moe``): a router picks
    ``top_k`` of ``n_expert`` SwiGLU experts per token and mixes their outputs by the router's
    weights; an optional shared expert (a plain SwiGLU every token goes through) is added.

    Parameters: ``router.weight`` (E, C); ``experts.gate.weight``, ``experts.up.weight`` (E, H, C);
    ``experts.proj.weight`` (E, C, H); ``shared.{gate,up,proj}.weight`` with a shared expert.
    ``forward`` returns the mixed output with what this very forward's routing did: its
    load-balancing loss (a scalar Tensor) and the fraction of assignments each expert received
    ((E,), an array on the device). Nothing is kept on the module, so threads may run it on
    different rows at once.
    """

    def __init__(self, n_embd, hidden, n_expert, top_k, shared_expert=False, bias=False,
                 dropout=0.0, std=0.02, proj_std=0.02, generator=None):
        check_expert_top_k(top_k, n_expert)
        self.top_k = top_k
        self.router = Linear(n_embd, n_expert, False, std, generator)
        self.experts = Experts(n_expert, n_embd, hidden, std, proj_std, generator)
        self.shared = SwiGLU(n_embd, hidden, bias, 0.0, std, proj_std,
                             generator) if shared_expert else None
        self.dropout = Dropout(dropout)

    def forward(self, x):                     # (B, T, C) → ((B, T, C), L_aux scalar, load (E,))
        e = self.experts
        y, aux_loss, load = F.moe(x, self.router.weight, e.gate.weight, e.up.weight, e.proj.weight,
                                  self.top_k)
        if self.shared is not None:
            y = y + self.shared(x)
        return self.dropout(y), aux_loss, load


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: one linear layer makes queries, keys and values for all
    heads, fused attention mixes them over time, and a second linear layer projects the heads back
    to C.

    ``n_kv_head`` < ``n_head`` makes it grouped-query attention: ``qkv`` then makes H query heads
    and only H_kv key and value heads (its output is (H + 2 H_kv)·D wide), and the KV cache holds
    H_kv heads. ``forward(..., rope=(cos, sin))`` rotates queries and keys by their positions
    (Llama). ``head_size``: D, by default C / H; H·D may then differ from C (heads pruned away:
    ``tinyllm.pruning``)."""

    def __init__(self, n_embd, n_head, bias=True, dropout=0.0, std=0.02, proj_std=0.02,
                 generator=None, n_kv_head=None, head_size=None):
        if head_size is None and n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.n_kv_head = check_heads(n_head, n_kv_head)
        head_size = n_embd // n_head if head_size is None else head_size
        self.qkv = Linear(n_embd, (n_head + 2 * self.n_kv_head) * head_size, bias, std, generator)
        self.proj = Linear(n_head * head_size, n_embd, bias, proj_std, generator)
        # masks come from the global generator (tinyllm.manual_seed)
        self.dropout = Dropout(dropout)

    def forward(self, x, mask=None, cache=None, rope=None, prefix=None):    # (B, T, C)
        """``cache``: this layer's ``LayerKV`` when generating (see ``tinyllm.kv_cache``). The new
        keys and values are appended to it and the queries attend over everything cached; ``mask``
        then covers all those keys: (B, 1, 1 or T, cached + T). Inference only: no gradient flows
        through the cache.
        ``rope``: (cos, sin) of this call's positions (``functional.rope.rope_cos_sin``), or None.
        ``prefix``: (keys, values), each (H_kv, P, D), that every query sees in front of the text's
        own (``tinyllm.prompt_tuning``), or None."""
        qkv = self.qkv(x)                                     # (B, T, (H + 2 H_kv)·D)
        if cache is None:
            y = F.self_attention(qkv, self.n_head, causal=True, mask=mask, n_kv_head=self.n_kv_head,
                                 rope=rope, prefix=prefix)
        else:
            y = self._attend_cached(qkv.data, cache, mask, rope, prefix)
            y = Tensor(y, dtype=y.dtype)
        return self.dropout(self.proj(y))                     # (B, T, C)

    def _attend_cached(self, qkv, cache, mask, rope=None, prefix=None):
        if is_grad_enabled():
            raise RuntimeError("attention with a KV cache is for inference only: run it under "
                               "tinyllm.no_grad()")
        batch, time, _ = qkv.shape
        # (B, H, T, D), (B, H_kv, T, D) × 2
        q, k, v = split_qkv(qkv, self.n_head, self.n_kv_head)
        # keys are cached rotated: a key's rotation depends only on its own position
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # (B, H_kv, cached + T, D)
        keys, values = cache.append(k, v)
        # (B, H_kv, P + cached + T, D)
        if prefix is not None:
            # (H_kv, P, D)
            prefix_k, prefix_v = (t.data if isinstance(t, Tensor) else t for t in prefix)
            keys, values = prepend_forward(prefix_k, keys, 2)[0], prepend_forward(prefix_v, values,
                                                                                  2)[0]
            mask = mask_with_prefix(mask, prefix_k.shape[1])
        # The same forward as training. A single query sits after every cached key: no causal mask
        # needed.
        y, _ = multi_head_attention_forward(q, keys, values, time > 1, mask)   # (B, H, T, D)
        return y.transpose(0, 2, 1, 3).reshape(batch, time, -1)              # (B, T, C)
