"""The encoder (BERT): every position sees every other one,
and the model learns by filling in blanks.

    ids (B, T) ──wte──► + wpe(0…T-1) + wtype(segment) ──► ln_emb ──► [Block] × n_layer ──► (B, T, C)
    hidden ──MLM head──► logits (B, T, V)         the token each position holds (trained on masked ones)
    hidden[:, 0] ([CLS]) ──pooler──► (B, C)        a vector for the whole text (classification)

The blocks are the GPT's with one difference that changes what the model is for: attention is
*bidirectional* (``self_attention(..., causal=False)``), so position t mixes in positions after it
too. A GPT can only be trained to predict the next token (its causal mask hides the answer); an
encoder would just copy the next token, so it is trained instead as a masked language model
(``tinyllm.mlm``): hide some tokens behind [MASK] and predict them from both sides. It cannot
generate text left to right, but its [CLS] state has read the whole text in every layer, which is
why it classifies well.

Padding: rows of different lengths are right-padded, and an attention mask (B, 1, 1, T) keeps every
query from attending to padded keys (their ids would otherwise leak into the real positions, which a
causal model is spared by construction).

BERT (Devlin et al. 2019) is post-LN: ``x = LN(x + attn(x)); x = LN(x + mlp(x))``, with a LayerNorm
after the embeddings; ``norm="pre"`` gives the GPT-style ``x = x + attn(LN(x))`` with a final
LayerNorm instead, which trains more stably without warmup. The MLM head is dense → GELU → LayerNorm
→ the token embedding matrix transposed (tied, as in BERT) plus its own output bias. BERT's GELU is
the exact erf form (``functional.gelu_erf``); ``activation="gelu_tanh"`` uses GPT-2's approximation.

Parameter names follow the GPT's where the part is the same (``wte``, ``wpe``,
``blocks.{i}.attn.qkv``, ``attn.proj``, ``ln_1``, ``mlp.fc``, ``mlp.proj``, ``ln_2``), so LoRA
targets and the freezing helpers apply unchanged; the rest: ``wtype`` (segment embeddings),
``ln_emb``, ``ln_f`` (pre-LN only), ``mlm.dense``, ``mlm.ln``, ``mlm.bias``, ``pooler``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import backend
from . import functional as F
from .autograd import Tensor, array_of
from .functional.gelu_erf import gelu_erf
from .nn import Dropout, Embedding, LayerNorm, Linear, Module, Parameter, init_rng

ARCHITECTURE = "encoder"          # config.json's "architecture" for an encoder run
NORMS = ("post", "pre")
ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclasses.dataclass
class EncoderConfig:
    vocab_size: int = 30522
    # the longest input, [CLS] and [SEP] included (max_position_embeddings)
    block_size: int = 512
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_hidden: int | None = None  # feed-forward width (intermediate_size); None = 4C
    type_vocab_size: int = 2       # segments: 0 for the first text of a pair, 1 for the second
    dropout: float = 0.0
    norm: str = "post"             # "post" (BERT) | "pre"
    activation: str = "gelu"       # "gelu" (exact, erf: BERT) | "gelu_tanh" (GPT-2's approximation)
    norm_eps: float = 1e-12        # BERT's LayerNorm ε
    # the dense + tanh layer on [CLS] (BertModel has it, BertForMaskedLM not)
    pooler: bool = True
    pad_token_id: int = 0
    # from the tokenizer: the classifier wraps texts in [CLS] … [SEP]
    cls_token_id: int | None = None
    sep_token_id: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EncoderConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, choices in (("norm", NORMS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"EncoderConfig.{name} must be one of "
                                 f"{', '.join(map(repr, choices))}, "
                                 f"got {getattr(self, name)!r}")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden,
                                                           int) or self.mlp_hidden < 1):
            raise ValueError("EncoderConfig.mlp_hidden must be a positive integer or None, got "
                             f"{self.mlp_hidden!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden_size(self) -> int:
        return 4 * self.n_embd if self.mlp_hidden is None else self.mlp_hidden

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown EncoderConfig keys: {', '.join(unknown)}")
        return cls(**d)


def activation(config: EncoderConfig, x: Tensor) -> Tensor:
    return gelu_erf(x) if config.activation == "gelu" else F.gelu(x)


class SelfAttention(Module):
    """Bidirectional multi-head self-attention:
    the GPT's layer with ``causal=False`` and a padding mask."""

    def __init__(self, n_embd, n_head, dropout=0.0, generator=None):
        self.n_head = n_head
        self.qkv = Linear(n_embd, 3 * n_embd, True, 0.02, generator)   # [queries | keys | values]
        self.proj = Linear(n_embd, n_embd, True, 0.02, generator)
        self.dropout = Dropout(dropout)

    # (B, T, C), mask (B, 1, 1, T) True = real key
    def forward(self, x, mask=None):
        y = F.self_attention(self.qkv(x), self.n_head, causal=False, mask=mask)
        return self.dropout(self.proj(y))


class FeedForward(Module):
    """Linear(C → H) → GELU (erf or tanh) → Linear(H → C) → dropout."""

    def __init__(self, config: EncoderConfig, generator=None):
        self.config = config
        self.fc = Linear(config.n_embd, config.hidden_size, True, 0.02, generator)
        self.proj = Linear(config.hidden_size, config.n_embd, True, 0.02, generator)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(activation(self.config, self.fc(x))))


class EncoderBlock(Module):
    def __init__(self, config: EncoderConfig, generator):
        self.post_ln = config.norm == "post"
        self.attn = SelfAttention(config.n_embd, config.n_head, config.dropout, generator)
        self.ln_1 = LayerNorm(config.n_embd, True, config.norm_eps)
        self.mlp = FeedForward(config, generator)
        self.ln_2 = LayerNorm(config.n_embd, True, config.norm_eps)

    def forward(self, x, mask=None):                          # (B, T, C) → (B, T, C)
        if self.post_ln:                                      # BERT: normalise the sum
            x = self.ln_1(x + self.attn(x, mask))
            return self.ln_2(x + self.mlp(x))
        # GPT-style: normalise the branch input
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class MLMHead(Module):
    """dense → GELU → LayerNorm → · Wteᵀ + bias:
    a score for every vocabulary entry at every position."""

    def __init__(self, config: EncoderConfig, generator):
        self.config = config
        self.dense = Linear(config.n_embd, config.n_embd, True, 0.02, generator)
        self.ln = LayerNorm(config.n_embd, True, config.norm_eps)
        self.bias = Parameter(backend.xp.zeros(config.vocab_size, dtype=backend.dtype))

    def forward(self, hidden, embedding):                     # (B, T, C), (V, C) → (B, T, V)
        return F.linear(self.ln(activation(self.config, self.dense(hidden))), embedding, self.bias)


class Encoder(Module):
    """A BERT-style encoder with its masked-LM head (and pooler). ``forward(ids, targets)`` is the
    MLM loss, so ``tinyllm.train.pretrain`` trains it like a GPT given masked batches
    (``tinyllm.mlm``)."""

    architecture = ARCHITECTURE

    def __init__(self, config: EncoderConfig, seed: int = 0):
        self.config = config
        generator = init_rng(seed)
        c = config.n_embd
        self.wte = Embedding(config.vocab_size, c, 0.02, generator)
        self.wpe = Embedding(config.block_size, c, 0.02, generator)
        self.wtype = Embedding(config.type_vocab_size, c, 0.02, generator)
        self.ln_emb = LayerNorm(c, True, config.norm_eps) if config.norm == "post" else None
        self.drop = Dropout(config.dropout)
        self.blocks = [EncoderBlock(config, generator) for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(c, True, config.norm_eps) if config.norm == "pre" else None
        self.mlm = MLMHead(config, generator)
        self.pooler = Linear(c, c, True, 0.02, generator) if config.pooler else None

    def hidden_states(self, idx, token_types=None, attention_mask=None):
        """The last layer's hidden state of every position: ids (B, T) → (B, T, C).

        ``token_types`` (B, T): segment of each token (default all 0). ``attention_mask`` (B, T): 1
        (or True) at real tokens, 0 at padding (default: all real)."""
        xp = backend.xp
        idx = array_of(idx)
        idx = idx if hasattr(idx, "ndim") else np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError("the encoder expects token ids of shape (batch, time), got "
                             f"shape {idx.shape}")
        batch, time = idx.shape
        if time > self.config.block_size:
            raise ValueError(f"sequence of length {time} is longer than the model's block_size "
                             f"{self.config.block_size}")
        types = np.zeros(idx.shape, dtype=np.int64) if token_types is None else \
            array_of(token_types)
        x = self.wte(idx) + self.wpe(np.arange(time)) + self.wtype(types)      # (B, T, C)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = self.drop(x)
        mask = None
        if attention_mask is not None:
            mask = xp.asarray(array_of(attention_mask)).astype(bool)
            if mask.shape != (batch, time):
                raise ValueError(f"attention_mask of shape {mask.shape} does not match token "
                                 f"ids {idx.shape}")
            # (B, 1, 1, T): the keys
            mask = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return x if self.ln_f is None else self.ln_f(x)

    def forward(self, idx, targets=None, token_types=None, attention_mask=None):
        """ids (B, T) → (MLM logits (B, T, V), loss or None). ``targets`` (B, T): the original token
        at each masked position and -100 elsewhere; the loss is the mean cross-entropy over masked
        positions."""
        logits = self.mlm(self.hidden_states(idx, token_types, attention_mask), self.wte.weight)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits,
                                       backend.xp.asarray(array_of(targets)))

    def pooled(self, hidden):
        """The text's vector: tanh(pooler([CLS] state)),
        or the [CLS] state itself without a pooler."""
        from .finetune.classify import last_token_states
        # (B, C)
        first = last_token_states(hidden, backend.xp.ones(hidden.shape[0], dtype=np.int64))
        return first if self.pooler is None else self.pooler(first).tanh()


# Shapes by name, matching the GPT presets' so that the two families can be compared at equal size.
PRESETS = {
    "bert-nano": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "bert-micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "bert-mini": dict(n_layer=6, n_head=6, n_embd=192, block_size=256),
    "bert-base": dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=30522),
}
