"""The GPT: token and position embeddings, a stack of pre-LayerNorm transformer blocks, and a
language-model head that scores every vocabulary entry as the next token.

    idx (B, T) ──wte──► (B, T, C) + wpe(0…T-1) ──► [Block] × n_layer ──► ln_f ──► x Wteᵀ ──► logits (B, T, V)

    Block:  x = x + attn(ln_1(x))      every position mixes information from the positions before it
            x = x + mlp(ln_2(x))       every position thinks on its own

Initialisation follows GPT-2: weights N(0, 0.02²), biases 0, and the two projections that write into
the residual stream (attn.proj, mlp.proj) N(0, (0.02/√(2·n_layer))²) so the residual's variance does
not grow with depth.

One class covers GPT-2 and Llama-style stacks; ``GPTConfig`` picks the parts (defaults = GPT-2):

    norm   "layernorm" | "rmsnorm"            ln_1, ln_2, ln_f
    pos    "learned" (wpe table added to the input) | "rope" (q and k rotated by position; no wpe)
    mlp    "gelu" (fc → GELU → proj) | "swiglu" (proj(silu(gate) ⊙ up)) | "moe" (router + experts)
    n_kv_head < n_head                        grouped-query attention (a smaller KV cache)
    bias=False                                no biases in Linear and LayerNorm layers (Llama)

Llama (Touvron et al. 2023) = rmsnorm + rope + swiglu + bias=False (+ GQA in its larger models);
Mixtral = that with mlp="moe". Parameter names stay GPT-2's where the part is the same
(``blocks.{i}.attn.qkv``, ``attn.proj``, ``ln_1``, ``ln_2``, ``ln_f``); SwiGLU adds ``mlp.gate``,
``mlp.up``, ``mlp.proj``; MoE has ``mlp.router``, ``mlp.experts.{gate,up,proj}`` (stacked (E, ·, ·)
weights) and optionally ``mlp.shared.*``.

Generation (``tinyllm.generate``) calls ``next_token_logits(idx, mask, positions, cache)``: with a
``KVCache`` (``tinyllm.kv_cache``) each attention layer appends the new keys and values and attends
over all cached ones, so a step costs one position's work; ``positions`` lets a left-padded row
count only its real tokens.

Training with ``checkpoint_activations`` set (``tinyllm.checkpointing.enable_checkpointing``) keeps
only each block's input and recomputes the block in the backward: the same gradients for less
memory.

A ``prompt_adapter`` (``tinyllm.prompt_tuning``: a soft prompt or per-layer key/value prefixes)
steers a frozen model from in front of the text: ``hidden_states`` lets it extend the input and
hands each block its layer's prefix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from . import backend
from . import functional as F
from .autograd import Tensor, no_grad
from .checkpointing import checkpoint
from .functional.moe import check_expert_top_k
from .functional.rope import check_rope_scaling, rope_cos_sin
from .nn import (CausalSelfAttention, Dropout, Embedding, LayerNorm, Linear, MLP, MoE, Module,
                 Parameter, RMSNorm, SwiGLU, init_rng)

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu", "moe")


def swiglu_hidden(n_embd: int, multiple_of: int = 32) -> int:
    """Llama's SwiGLU width: 2/3 of GPT-2's 4C (three matrices instead of two, so about the same
    parameters), rounded up to a multiple of ``multiple_of`` for tidy matmuls. Llama rounds to 256
    (4096 → 11008); tiny models here round to 32 (64 → 192, 192 → 512, 768 → 2048)."""
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * -(-hidden // multiple_of)


@dataclasses.dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024     # the longest context the model can see
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True          # biases in Linear and LayerNorm layers
    tie_weights: bool = True   # the output head reuses the token embedding matrix
    # Llama-style options (the defaults are GPT-2, so config.json files from before they existed
    # still load)
    norm: str = "layernorm"    # "layernorm" | "rmsnorm"
    pos: str = "learned"       # "learned" (wpe) | "rope" (rotary q/k, no wpe)
    mlp: str = "gelu"          # "gelu" | "swiglu" | "moe"
    n_kv_head: int | None = None   # key/value heads; None = n_head, fewer = grouped-query attention
    # feed-forward width (per expert for moe); None = 4C (gelu), swiglu_hidden(C)
    mlp_hidden: int | None = None
    n_expert: int = 4          # mlp="moe": experts per layer
    expert_top_k: int = 2      # mlp="moe": experts per token
    shared_expert: bool = False    # mlp="moe": also one always-on SwiGLU expert
    # mlp="moe": weight of the load-balancing loss in the training loss
    aux_loss_coef: float = 0.01
    rope_theta: float = 10000.0    # pos="rope": base of the rotary frequencies
    norm_eps: float = 1e-5     # ε of the norms
    qkv_bias: bool = False     # biases on the q/k/v projection even when bias=False (Qwen2)
    # pos="rope": frequency scaling, e.g. Llama 3's {"rope_type": "llama3", ...}
    rope_scaling: dict | None = None
    # width of one attention head; None = n_embd / n_head (fewer after head pruning)
    head_dim: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise ValueError("GPTConfig.head_dim must be a positive integer or None, got "
                             f"{self.head_dim!r}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} (or "
                             "set head_dim)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, choices in (("norm", NORMS), ("pos", POSITIONS), ("mlp", MLPS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"GPTConfig.{name} must be one of "
                                 f"{', '.join(map(repr, choices))}, got {getattr(self, name)!r}")
        if self.n_kv_head is not None:
            if not isinstance(self.n_kv_head, int) or self.n_kv_head < 1:
                raise ValueError("GPTConfig.n_kv_head must be a positive integer or None, got "
                                 f"{self.n_kv_head!r}")
            if self.n_head % self.n_kv_head:
                raise ValueError(f"n_head={self.n_head} must be divisible by "
                                 f"n_kv_head={self.n_kv_head} (each key/value head serves an equal "
                                 "group of query heads)")
        if self.pos == "rope" and self.head_size % 2:
            width = (f"n_embd={self.n_embd} / n_head={self.n_head} = "
                     f"{self.head_size}" if self.head_dim is None
                     else f"head_dim={self.head_dim}")
            raise ValueError(f"pos='rope' needs an even head dimension, but {width} (rotary "
                             "embeddings rotate channels in pairs)")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden,
                                                           int) or self.mlp_hidden < 1):
            raise ValueError("GPTConfig.mlp_hidden must be a positive integer or None, got "
                             f"{self.mlp_hidden!r}")
        if self.mlp == "moe":
            if not isinstance(self.n_expert, int) or self.n_expert < 1:
                raise ValueError("GPTConfig.n_expert must be a positive integer, got "
                                 f"{self.n_expert!r}")
            check_expert_top_k(self.expert_top_k, self.n_expert)
            if self.aux_loss_coef < 0:
                raise ValueError(f"aux_loss_coef must be >= 0, got {self.aux_loss_coef}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"rope_theta and norm_eps must be positive, got {self.rope_theta} and "
                             f"{self.norm_eps}")
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling)

    @property
    def head_size(self) -> int:
        """The width D of one attention head: head_dim, else n_embd / n_head."""
        return self.n_embd // self.n_head if self.head_dim is None else self.head_dim

    @property
    def kv_heads(self) -> int:
        """Key/value heads (n_kv_head, or n_head when it is None)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden_size(self) -> int:
        """The feed-forward width: mlp_hidden, else 4C for GELU and swiglu_hidden(C) for SwiGLU and
        MoE."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 4 * self.n_embd if self.mlp == "gelu" else swiglu_hidden(self.n_embd)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys: {', '.join(unknown)}")
        return cls(**d)


# Shapes by name. vocab_size and block_size of the small ones are defaults that callers override
# with their tokenizer's vocabulary and the context they train on.
LLAMA = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False)
PRESETS = {
    "nano": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "mini": dict(n_layer=6, n_head=6, n_embd=192, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    # Llama-style: RMSNorm, rotary positions, SwiGLU, no biases, grouped-query attention (2 query
    # heads per kv head)
    "llama-nano": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64, **LLAMA),
    "llama-mini": dict(n_layer=6, n_head=6, n_kv_head=3, n_embd=192, block_size=256, **LLAMA),
    # Mixtral-style: the Llama block with a mixture of 4 SwiGLU experts, 2 per token
    "moe-nano": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64, n_expert=4,
                     expert_top_k=2, **{**LLAMA, "mlp": "moe"}),
    "moe-mini": dict(n_layer=6, n_head=6, n_kv_head=3, n_embd=192, block_size=256, n_expert=4,
                     expert_top_k=2, **{**LLAMA, "mlp": "moe"}),
}


def preset(name: str, **overrides) -> GPTConfig:
    """A ``GPTConfig`` for a named shape, with any field overridden:
    ``preset("mini", vocab_size=4096)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})


def make_norm(config: GPTConfig):
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return LayerNorm(config.n_embd, config.bias, config.norm_eps)


class MoEBalance(NamedTuple):
    """What one forward's mixture-of-experts layers report (``GPT.trunk``).

    ``loss``: aux_loss_coef × Σ_layers L_aux (``tinyllm.functional.moe``), a scalar Tensor for a
    training loss to add; None without experts, with aux_loss_coef 0, or in eval mode. ``load``:
    (n_layer, n_expert) array, each layer's share of (token, expert) assignments per expert; None
    without experts."""
    loss: Tensor | None = None
    load: object = None

    def added_to(self, loss):
        """``loss`` plus the balancing loss (``loss`` itself when there is none)."""
        return loss if self.loss is None else loss + self.loss


class Block(Module):
    def __init__(self, config: GPTConfig, generator):
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)
        c, hidden = config.n_embd, config.hidden_size
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(c, config.n_head, config.bias, config.dropout, 0.02,
                                        proj_std, generator, config.n_kv_head, config.head_dim)
        # Qwen2: q/k/v biases, none on the output projection
        if config.qkv_bias and self.attn.qkv.bias is None:
            self.attn.qkv.bias = Parameter(backend.xp.zeros(self.attn.qkv.weight.shape[0],
                                                            dtype=backend.dtype))
        self.ln_2 = make_norm(config)
        if config.mlp == "gelu":
            self.mlp = MLP(c, hidden, config.bias, config.dropout, 0.02, proj_std, generator)
        elif config.mlp == "swiglu":
            self.mlp = SwiGLU(c, hidden, config.bias, config.dropout, 0.02, proj_std, generator)
        else:
            self.mlp = MoE(c, hidden, config.n_expert, config.expert_top_k, config.shared_expert,
                           config.bias, config.dropout, 0.02, proj_std, generator)

    def forward(self, x, mask=None, cache=None, rope=None, prefix=None):
        """(B, T, C) → ((B, T, C), routing): routing is a MoE layer's (L_aux, load), None
        otherwise."""
        x = x + self.attn(self.ln_1(x), mask, cache, rope, prefix)
        if isinstance(self.mlp, MoE):
            y, aux_loss, load = self.mlp(self.ln_2(x))
            return x + y, (aux_loss, load)
        return x + self.mlp(self.ln_2(x)), None


class GPT(Module):
    def __init__(self, config: GPTConfig, seed: int = 0):
        self.config = config
        generator = init_rng(seed)
        self.wte = Embedding(config.vocab_size, config.n_embd, 0.02, generator)
        self.wpe = Embedding(config.block_size, config.n_embd, 0.02,
                             generator) if config.pos == "learned" else None
        self.drop = Dropout(config.dropout)
        self.blocks = [Block(config, generator) for _ in range(config.n_layer)]
        self.ln_f = make_norm(config)
        self.lm_head = None if config.tie_weights else Linear(config.n_embd, config.vocab_size,
                                                              False, 0.02, generator)

    @property
    def head_weight(self):
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden):
        """The output head: hidden states (..., C) → scores (..., V), hidden · Wᵀ with W the token
        embedding table (tied: ``wte.attend``) or lm_head's weight — float or int8
        (``tinyllm.quantize``) alike."""
        return self.wte.attend(hidden) if self.lm_head is None else self.lm_head(hidden)

    def hidden_states(self, idx, mask=None, positions=None, cache=None):
        """The final normalised hidden state of every position: (B, T) ids → (B, T, C) (``trunk``
        without its ``MoEBalance``: for inference and evaluation)."""
        return self.trunk(idx, mask, positions, cache)[0]

    def trunk(self, idx, mask=None, positions=None, cache=None):
        """(B, T) ids → (hidden states (B, T, C), ``MoEBalance`` of this forward).

        A training loss adds ``balance.loss`` (``balance.added_to(loss)``): the experts'
        load-balancing loss of this very forward, None for a model without experts or in eval mode.
        Returned rather than kept on the model, so threads may run forwards of different rows side
        by side.

        ``positions`` (B, T) or (T,): the position of each token, 0 … T-1 by default (continuing
        after the cached ones when there is a cache). A left-padded batch passes each row's own: the
        number of real tokens before it. With pos="learned" they index the ``wpe`` table; with
        pos="rope" the very same positions rotate every layer's queries and keys (so a slide's
        re-prefill from 0, or a left-padded row, behaves identically in both). ``cache``: a
        ``KVCache`` to attend over and append to (generation, no gradients). A ``prompt_adapter``
        (``tinyllm.prompt_tuning``) may put virtual tokens in front of the text, or give each layer
        key/value prefixes; the result has the text's positions only.
        """
        # (a NumPy array's .data is a memoryview)
        idx = idx.data if isinstance(idx, Tensor) else idx
        # host ids stay on the host until the lookup
        idx = idx if hasattr(idx, "ndim") else np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, time), got shape {idx.shape}")
        time = idx.shape[1]
        start = 0 if cache is None else cache.length
        if start + time > self.config.block_size:
            cached = f" after {start} cached positions" if start else ""
            raise ValueError(f"sequence of length {time}{cached} is longer than the model's "
                             f"block_size {self.config.block_size}")
        if positions is None:
            positions = np.arange(start, start + time)       # (T,), the same for every row
        else:
            positions = positions.data if isinstance(positions, Tensor) else positions
            positions = positions if hasattr(positions, "shape") else np.asarray(positions)
            if positions.shape not in ((time,), idx.shape):
                raise ValueError(f"positions of shape {positions.shape} do not match token ids of "
                                 f"shape {idx.shape}")
        x = self.wte(idx)                                     # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)                       # + (B or 1, T, C)
        prefixes = [None] * len(self.blocks)
        adapter = getattr(self, "prompt_adapter", None)
        # virtual tokens in front of x, or each layer's key/value prefix
        if adapter is not None:
            x, positions, mask, prefixes = adapter.extend(self, x, positions, mask, cache)
        # RoPE: the positions as rotations of q and k (once, for every layer)
        rope = None
        if self.wpe is None:
            rope = rope_cos_sin(positions, self.config.head_size, self.config.rope_theta,
                                self.wte.weight.dtype, self.config.rope_scaling)
        x, balance = self._run_blocks(self.drop(x), mask, cache, rope, prefixes)
        # the text only
        return self.ln_f(x[:, x.shape[1] - time:] if x.shape[1] > time else x), balance

    def _run_blocks(self, x, mask, cache, rope, prefixes):
        """x through every block → (x, ``MoEBalance`` of the MoE layers' routing)."""
        layer_caches = [None] * len(self.blocks) if cache is None else cache.layers
        routings = []                                          # (L_aux, load) of each MoE layer
        for block, layer_cache, prefix in zip(self.blocks, layer_caches, prefixes):
            # see tinyllm.checkpointing
            if getattr(self, "checkpoint_activations", False) and cache is None:
                x = checkpoint(lambda h, block=block,
                               prefix=prefix: block(h, mask, None, rope, prefix)[0],
                               x, block.parameters() + [t
                                                        for t in prefix or ()
                                                        if isinstance(t, Parameter)])
            else:
                x, routing = block(x, mask, layer_cache, rope, prefix)
                routings += [routing] if routing is not None else []
        if not routings:
            return x, MoEBalance()
        loss = None
        if self.training and self.config.aux_loss_coef > 0:   # aux_loss_coef × Σ_layers L_aux
            loss = routings[0][0]
            for aux_loss, _ in routings[1:]:
                loss = loss + aux_loss
            loss = loss * self.config.aux_loss_coef
        return x, MoEBalance(loss, backend.xp.stack([load for _, load in routings]))

    def forward(self, idx, targets=None, mask=None, positions=None, cache=None):
        """idx (B, T) token ids → (logits (B, T, V), loss or None).

        The loss is the mean cross-entropy against ``targets`` (B, T); for a mixture-of-experts
        model in training mode it also includes ``aux_loss_coef`` × the layers' load-balancing
        losses of this forward (``trunk``). In eval mode it is the cross-entropy alone, comparable
        across architectures."""
        hidden, balance = self.trunk(idx, mask, positions, cache)
        logits = self.logits(hidden)                          # (B, T, V)
        loss = None if targets is None else balance.added_to(F.cross_entropy(logits, targets))
        return logits, loss

    def moe_layers(self):
        return [block.mlp for block in self.blocks if isinstance(block.mlp, MoE)]

    def expert_load(self, idx) -> np.ndarray | None:
        """(n_layer, n_expert) NumPy array: the fraction of (token, expert) assignments each expert
        gets when the model routes the ids ``idx`` (B, T) (eval mode, no gradients), per MoE layer.
        Each row sums to 1; 1/n_expert everywhere is perfect balance. None for a model without
        experts."""
        if not self.moe_layers():
            return None
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                load = self.trunk(idx)[1].load
        finally:
            self.train(was_training)
        return None if load is None else backend.to_numpy(load)

    def active_parameters(self) -> int:
        """Parameters used per token: all of them, except that a MoE layer uses only
        ``expert_top_k`` of its ``n_expert`` experts (the rest of its expert weights sit idle for
        that token)."""
        total = self.num_parameters()
        for layer in self.moe_layers():
            expert = sum(p.size for p in layer.experts.parameters())
            total -= expert * (1 - layer.top_k / layer.experts.gate.weight.shape[0])
        return int(total)

    def next_token_logits(self, idx, mask=None, positions=None, cache=None):
        """What generation calls: the scores of the token after the last position of each row, as a
        raw array (B, V). Builds no graph, and applies the output head to the last position only (in
        a prefill of T tokens that saves a (T × C) @ (C × V) matmul)."""
        with no_grad():
            hidden = self.hidden_states(idx, mask, positions, cache)          # (B, T, C)
            return self.logits(hidden[:, -1]).data                          # (B, V)
