"""Layers: a ``Module`` holds ``Parameter``s and other modules; its ``forward`` calls fused ops.

Registration is automatic and has no magic: ``named_parameters()`` walks the attributes of a module in the
order they were set, yielding every ``Parameter`` and recursing into every ``Module`` (and into lists of
modules, named by their index: ``blocks.0.attn.qkv.weight``).
"""

from __future__ import annotations

import math

from . import backend
from . import functional as F
from .autograd import Tensor, is_grad_enabled
from .functional.attention import attention_forward


class Parameter(Tensor):
    """A Tensor that is learned: it requires grad, and modules find it by walking their attributes."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)


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

    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs, each parameter once (a tied weight appears under its first name)."""
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
        """Copy arrays into the parameters. Names must match exactly (unless ``strict=False``, which skips
        missing and unexpected names) and shapes always; the error lists every offending name."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        mis_shaped = [f"{name}: checkpoint {tuple(state[name].shape)} vs model {params[name].shape}"
                      for name in params if name in state and tuple(state[name].shape) != params[name].shape]
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


def _normal(shape, std, generator):
    generator = generator if generator is not None else backend.global_rng()
    return generator.standard_normal(shape, dtype=backend.dtype) * backend.dtype.type(std)


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


class LayerNorm(Module):
    def __init__(self, dim, bias=True, eps=1e-5):
        self.weight = Parameter(backend.xp.ones(dim, dtype=backend.dtype))
        self.bias = Parameter(backend.xp.zeros(dim, dtype=backend.dtype)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


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

    def __init__(self, n_embd, hidden=None, bias=True, dropout=0.0, std=0.02, proj_std=0.02, generator=None):
        hidden = 4 * n_embd if hidden is None else hidden
        self.fc = Linear(n_embd, hidden, bias, std, generator)
        self.proj = Linear(hidden, n_embd, bias, proj_std, generator)
        self.dropout = Dropout(dropout)  # masks come from the global generator (tinyllm.manual_seed)

    def forward(self, x):                                     # (B, T, C)
        return self.dropout(self.proj(F.gelu(self.fc(x))))    # (B, T, 4C) inside


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: one linear layer makes queries, keys and values for all heads,
    fused attention mixes them over time, and a second linear layer projects the heads back to C."""

    def __init__(self, n_embd, n_head, bias=True, dropout=0.0, std=0.02, proj_std=0.02, generator=None):
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.qkv = Linear(n_embd, 3 * n_embd, bias, std, generator)
        self.proj = Linear(n_embd, n_embd, bias, proj_std, generator)
        self.dropout = Dropout(dropout)  # masks come from the global generator (tinyllm.manual_seed)

    def forward(self, x, mask=None, cache=None):              # (B, T, C)
        """``cache``: this layer's ``LayerKV`` when generating (see ``tinyllm.kv_cache``). The new keys and
        values are appended to it and the queries attend over everything cached; ``mask`` then covers all
        those keys: (B, 1, 1 or T, cached + T). Inference only: no gradient flows through the cache."""
        qkv = self.qkv(x)                                     # (B, T, 3C)
        if cache is None:
            y = F.self_attention(qkv, self.n_head, causal=True, mask=mask)  # (B, T, C)
        else:
            y = self._attend_cached(qkv.data, cache, mask)
            y = Tensor(y, dtype=y.dtype)
        return self.dropout(self.proj(y))

    def _attend_cached(self, qkv, cache, mask):
        if is_grad_enabled():
            raise RuntimeError("attention with a KV cache is for inference only: run it under tinyllm.no_grad()")
        batch, time, three_c = qkv.shape
        heads = qkv.reshape(batch, time, 3, self.n_head, three_c // (3 * self.n_head))
        q, k, v = (heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # each (B, H, T, D)
        keys, values = cache.append(k, v)                                      # (B, H, cached + T, D)
        # The same forward as training (one source of truth for the math). A single query sits after every
        # cached key, so it needs no causal mask.
        y, _, _ = attention_forward(q, keys, values, causal=time > 1, mask=mask)  # (B, H, T, D)
        return y.transpose(0, 2, 1, 3).reshape(batch, time, three_c // 3)     # (B, T, C)
