"""The GPT: token and position embeddings, a stack of pre-LayerNorm transformer blocks, and a language-model
head that scores every vocabulary entry as the next token.

    idx (B, T) ──wte──► (B, T, C) + wpe(0…T-1) ──► [Block] × n_layer ──► ln_f ──► x Wteᵀ ──► logits (B, T, V)

    Block:  x = x + attn(ln_1(x))      every position mixes information from the positions before it
            x = x + mlp(ln_2(x))       every position thinks on its own

Initialisation follows GPT-2: weights N(0, 0.02²), biases 0, and the two projections that write into the
residual stream (attn.proj, mlp.proj) N(0, (0.02/√(2·n_layer))²) so the residual's variance does not grow
with depth.

Generation (``tinyllm.generate``) calls ``next_token_logits(idx, mask, positions, cache)``: with a ``KVCache``
(``tinyllm.kv_cache``) each attention layer appends the new keys and values and attends over all cached ones,
so a step costs one position's work; ``positions`` lets a left-padded row count only its real tokens.
"""

from __future__ import annotations

import dataclasses
import math

from . import backend
from . import functional as F
from .autograd import no_grad
from .nn import CausalSelfAttention, Dropout, Embedding, LayerNorm, Linear, MLP, Module


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

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys: {', '.join(unknown)}")
        return cls(**d)


# Shapes by name. vocab_size and block_size of the small ones are defaults that callers override with their
# tokenizer's vocabulary and the context they train on.
PRESETS = {
    "nano": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "mini": dict(n_layer=6, n_head=6, n_embd=192, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
}


def preset(name: str, **overrides) -> GPTConfig:
    """A ``GPTConfig`` for a named shape, with any field overridden: ``preset("mini", vocab_size=4096)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})


class Block(Module):
    def __init__(self, config: GPTConfig, generator):
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)
        c = config.n_embd
        self.ln_1 = LayerNorm(c, config.bias)
        self.attn = CausalSelfAttention(c, config.n_head, config.bias, config.dropout, 0.02, proj_std, generator)
        self.ln_2 = LayerNorm(c, config.bias)
        self.mlp = MLP(c, 4 * c, config.bias, config.dropout, 0.02, proj_std, generator)

    def forward(self, x, mask=None, cache=None):              # (B, T, C) → (B, T, C)
        x = x + self.attn(self.ln_1(x), mask, cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(Module):
    def __init__(self, config: GPTConfig, seed: int = 0):
        self.config = config
        generator = backend.rng(seed)
        self.wte = Embedding(config.vocab_size, config.n_embd, 0.02, generator)
        self.wpe = Embedding(config.block_size, config.n_embd, 0.02, generator)
        self.drop = Dropout(config.dropout)
        self.blocks = [Block(config, generator) for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd, config.bias)
        self.lm_head = None if config.tie_weights else Linear(config.n_embd, config.vocab_size, False, 0.02, generator)

    @property
    def head_weight(self):
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, idx, mask=None, positions=None, cache=None):
        """The final normalised hidden state of every position: (B, T) ids → (B, T, C).

        ``positions`` (B, T) or (T,): the position of each token, 0 … T-1 by default (continuing after the
        cached ones when there is a cache). A left-padded batch passes each row's own: the number of real
        tokens before it. ``cache``: a ``KVCache`` to attend over and append to (generation, no gradients).
        """
        xp = backend.xp
        idx = xp.asarray(getattr(idx, "data", idx))
        if idx.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, time), got shape {idx.shape}")
        time = idx.shape[1]
        start = 0 if cache is None else cache.length
        if start + time > self.config.block_size:
            cached = f" after {start} cached positions" if start else ""
            raise ValueError(f"sequence of length {time}{cached} is longer than the model's block_size {self.config.block_size}")
        if positions is None:
            positions = xp.arange(start, start + time)       # (T,), the same for every row
        else:
            positions = xp.asarray(positions)
            if positions.shape not in ((time,), idx.shape):
                raise ValueError(f"positions of shape {positions.shape} do not match token ids of shape {idx.shape}")
        x = self.wte(idx) + self.wpe(positions)               # (B, T, C) + (B or 1, T, C)
        x = self.drop(x)
        layer_caches = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer_cache in zip(self.blocks, layer_caches):
            x = block(x, mask, layer_cache)
        return self.ln_f(x)

    def forward(self, idx, targets=None, mask=None, positions=None, cache=None):
        """idx (B, T) token ids → (logits (B, T, V), mean cross-entropy against ``targets`` (B, T) or None)."""
        logits = F.linear(self.hidden_states(idx, mask, positions, cache), self.head_weight)   # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def next_token_logits(self, idx, mask=None, positions=None, cache=None):
        """What generation calls: the scores of the token after the last position of each row, as a raw
        array (B, V). Builds no graph, and applies the output head to the last position only (in a prefill
        of T tokens that saves a (T × C) @ (C × V) matmul)."""
        with no_grad():
            hidden = self.hidden_states(idx, mask, positions, cache)          # (B, T, C)
            return F.linear(hidden[:, -1], self.head_weight).data            # (B, V)
