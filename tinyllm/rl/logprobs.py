"""The shared piece of every alignment method: how likely is a given completion under a model?

A language model scores a completion y = (y_1 … y_n) after a prompt x token by token:

    log π(y | x) = Σ_t log π(y_t | x, y_<t),    log π(v | ·) = z_v − log Σ_u exp(z_u)
                                                                               (z: the logits)

DPO compares these sums between a policy and a frozen reference, PPO and GRPO compare them token by
token between the policy now and the policy that sampled the completion. This file has:

    gather_log_probs   z (…, V), targets (…) → log softmax(z)[target] (…): −cross_entropy per
                       position, the fused cross-entropy pair's backward with the sign flipped
    token_entropy      the fused op  z (…, V) → H = −Σ_v p_v log p_v  (…), for PPO's entropy bonus
    log_sigmoid        the fused op  x → log σ(x), stable for any x (Bradley-Terry and DPO losses)
    pack_completions   prompt + completion id lists → one batch, completions aligned, and their mask
    completion_pass    run a model on a packed batch: per-token log-probs of the completion tokens
                       (B, C), with the logits, hidden states and a mixture of experts' balancing
                       loss
    frozen_copy        the reference model: a copy whose weights never change
    check_same_vocab   policy and reference (or reward model) must speak the same vocabulary
    disable_dropout    alignment compares log-probs of the same text under two passes: no randomness
                       allowed

Batches are right-padded; the output head runs only on the positions that predict completion tokens
(see ``Completions``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import Tensor, array_of, fused_op


# ---------------------------------------------------------------------------------------- fused ops

def gather_log_probs(logits: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """out[n] = log softmax(z_n)[t_n]: the log-probability of each target token (0 where t_n is
    ignored).

    Shapes: logits (..., V), targets (...) integers in [0, V) or ``ignore_index``; out (...).
    With p_n = softmax(z_n):  out_n = z_{n,t} − log Σ_v exp(z_{n,v}),  so
        d out_n / d z_{n,v} = onehot(t_n)_v − p_{n,v}      and   dz_n = g_n · (onehot(t_n) − p_n).
    That is exactly the per-position cross-entropy with the sign flipped, so it *is*
    ``-cross_entropy(..., reduction="none")``: the fused softmax-cross-entropy pair does the work,
    with a per-row weight g_n (the upstream gradient) — what PPO/GRPO/DPO need: each token's
    log-prob gets its own weight (advantage, mask, ratio).
    """
    return -F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")


def token_entropy_forward(z):
    """H_n = −Σ_v p_{n,v} log p_{n,v} of p_n = softmax(z_n): z (..., V) → H (...)."""
    xp = backend.xp
    log_p = z - z.max(axis=-1, keepdims=True)
    log_p -= xp.log(xp.exp(log_p).sum(axis=-1, keepdims=True))   # l = log p = z − logsumexp(z)
    p = xp.exp(log_p)
    entropy = -(p * log_p).sum(axis=-1)                          # H = −Σ_v p_v l_v   (...)
    return entropy, (p, log_p, entropy)


def token_entropy_backward(g, cache, needs=(True,)):
    """With dp_v/dz_j = p_v (δ_vj − p_j) and dl_v/dz_j = δ_vj − p_j:
        dH/dz_j = −Σ_v (dp_v/dz_j · l_v + p_v · dl_v/dz_j)
                = −Σ_v p_v (δ_vj − p_j) l_v − Σ_v p_v (δ_vj − p_j)
                = −p_j l_j + p_j Σ_v p_v l_v − (p_j − p_j)  =  −p_j (l_j + H)."""
    p, log_p, entropy = cache
    return (-(g[..., None] * p) * (log_p + entropy[..., None]),)   # undoes H = −Σ_v p_v l_v


def token_entropy(logits: Tensor) -> Tensor:
    """How spread out each next-token distribution is (``token_entropy_forward``): logits (..., V)
    → (...). Saves p and log p (two arrays of the logits' size)."""
    entropy, cache = token_entropy_forward(logits.data)
    return fused_op(token_entropy_backward, entropy, cache, logits)


def log_sigmoid_forward(x):
    """log σ(x) = −log(1 + e^(−x)), written as min(x, 0) − log(1 + e^(−|x|)) so that no exp
    overflows and a large negative x gives ≈ x instead of log(0) = −inf."""
    xp = backend.xp
    e = xp.exp(-xp.abs(x))                                   # in (0, 1]
    out = xp.minimum(x, 0) - xp.log1p(e)
    sigma_neg = xp.where(x >= 0, e / (1 + e), 1 / (1 + e))   # σ(−x), stable on both sides
    return out, sigma_neg


def log_sigmoid_backward(g, sigma_neg, needs=(True,)):
    """d/dx log σ(x) = 1 − σ(x) = σ(−x)."""
    return (g * sigma_neg,)                                  # undoes out = log σ(x)


def log_sigmoid(x: Tensor) -> Tensor:
    """log σ(x) (``log_sigmoid_forward``): the log-probability of the binary event "chosen beats
    rejected" under Bradley-Terry. Saves σ(−x) (x's size)."""
    out, sigma_neg = log_sigmoid_forward(x.data)
    return fused_op(log_sigmoid_backward, out, sigma_neg, x)


def masked_mean(x: Tensor, mask, axis=None) -> Tensor:
    """Σ x·m / Σ m (over ``axis``, or everything): the mean over the positions where ``mask`` is 1.
    A row (or batch) without any masked-in position gives 0 rather than 0/0."""
    xp = backend.xp
    mask = xp.asarray(array_of(mask), dtype=x.dtype)
    if axis is None:
        return (x * mask).sum() * (1.0 / max(float(mask.sum()), 1.0))
    count = xp.maximum(mask.sum(axis=axis), 1)
    return (x * mask).sum(axis=axis) * Tensor(1.0 / count, dtype=x.dtype)


# ------------------------------------------------------------------------------------------ batches

@dataclass
class Completions:
    """A packed batch of prompt + completion sequences, right-padded, and where each completion
    lies::

        row 0:   p  p  p  c  c  ·        (p prompt, c completion, · padding)
        row 1:   p  c  c  c  ·  ·

    Only the positions that predict completion tokens need next-token scores: position P_b − 1 + j
    predicts completion token j of row b (P_b its prompt length). ``completion_hidden_states``
    gathers those positions into a (B, C_max) window before the output head, so the head and the
    log-softmax over the vocabulary run on B·C_max positions instead of B·L: with instruction
    prompts of ~80 tokens and answers of a few, that is most of their work saved. Right padding is
    safe: causal attention never lets a real position see the padding after it, so each row
    computes exactly what it would alone.

    ids (B, L);  mask (B, C_max): 1.0 where completion token j of row b exists;  prompt_lengths,
    completion_lengths (B,).
    """
    ids: np.ndarray
    mask: np.ndarray
    prompt_lengths: np.ndarray
    completion_lengths: np.ndarray

    def __len__(self):
        return len(self.ids)

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (B, 1), columns (B, C_max)): the positions whose outputs predict the completion
        tokens (columns past a row's end are clamped into range; the mask zeroes them)."""
        columns = self.prompt_lengths[:, None] - 1 + np.arange(self.mask.shape[1])
        return np.arange(len(self.ids))[:, None], np.minimum(columns, self.ids.shape[1] - 2)

    @property
    def completion_ids(self) -> np.ndarray:
        """(B, C_max) the completion tokens (padding where mask is 0)."""
        rows, columns = self.window()
        return self.ids[rows, columns + 1]

    def rows(self, index) -> "Completions":
        """The sub-batch of rows ``index``, cut to its own longest row and longest completion."""
        index = np.asarray(index)
        length = int((self.prompt_lengths[index] + self.completion_lengths[index]).max())
        longest_completion = int(self.completion_lengths[index].max())
        return Completions(self.ids[index, :length], self.mask[index, :longest_completion],
                           self.prompt_lengths[index], self.completion_lengths[index])


def pack_completions(prompts, completions, pad_id: int = 0,
                     block_size: int | None = None) -> Completions:
    """One right-padded batch from lists of prompt ids and completion ids (row b = prompts[b] +
    completions[b]).

    Every prompt needs at least one token (the first completion token is predicted from the prompt's
    last position) and every completion at least one. With ``block_size``, a row longer than that is
    an error: cut prompts from the left before packing (``fit_to_block``)."""
    if len(prompts) != len(completions):
        raise ValueError(f"pack_completions: {len(prompts)} prompts but {len(completions)} "
                         "completions")
    if not prompts:
        raise ValueError("pack_completions: the batch is empty")
    for row, (p, c) in enumerate(zip(prompts, completions)):
        if not len(p) or not len(c):
            raise ValueError(f"pack_completions: row {row} has a prompt of {len(p)} and a "
                             f"completion of {len(c)} tokens; both need at least one")
        if block_size is not None and len(p) + len(c) > block_size:
            raise ValueError(f"pack_completions: row {row} has {len(p) + len(c)} tokens, more than "
                             f"the model's block_size {block_size}")
    prompt_lengths = np.array([len(p) for p in prompts])
    completion_lengths = np.array([len(c) for c in completions])
    longest_row = int((prompt_lengths + completion_lengths).max())
    ids = np.full((len(prompts), longest_row), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), int(completion_lengths.max())), dtype=np.float64)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids[row, :len(p)] = p
        ids[row, len(p):len(p) + len(c)] = c
        mask[row, :len(c)] = 1.0
    return Completions(ids, mask, prompt_lengths, completion_lengths)


def fit_to_block(prompt, completion, block_size: int, min_prompt: int = 1):
    """(prompt, completion) cut so that together they fit ``block_size`` tokens: the prompt loses
    tokens from its start first (the end, next to the answer, matters most), keeping at least
    ``min_prompt``; then the completion loses tokens from its end. Returns the two lists and whether
    anything was cut."""
    prompt, completion = list(prompt), list(completion)
    excess = len(prompt) + len(completion) - block_size
    if excess <= 0:
        return prompt, completion, False
    drop = min(excess, max(len(prompt) - min_prompt, 0))
    prompt = prompt[drop:]
    excess -= drop
    if excess > 0:
        completion = completion[:len(completion) - excess]
    return prompt, completion, True


def completion_hidden_states(model, batch: Completions):
    """(the final hidden states (B, C_max, C) of the positions that predict the completion tokens,
    the forward's ``MoEBalance``).

    The model runs over ids[:, :−1] (the last token predicts nothing); the window is a gather
    (``getitem`` with index arrays), whose backward scatters the window's gradient back into
    (B, L − 1, C)."""
    hidden, balance = model.trunk(backend.xp.asarray(batch.ids[:, :-1]))      # (B, L − 1, C)
    rows, columns = batch.window()
    return hidden[backend.xp.asarray(rows), backend.xp.asarray(columns)], balance   # (B, C_max, C)


class CompletionPass(NamedTuple):
    """One forward over a packed batch's completion window (``completion_pass``)."""
    logps: Tensor            # (B, C_max) log-probs of the completion tokens, 0 where the mask is 0
    logits: Tensor           # (B, C_max, V)
    hidden: Tensor           # (B, C_max, C)
    balance: object          # the model's MoEBalance: a training loss adds balance.added_to(loss)


def completion_pass(model, batch: Completions) -> CompletionPass:
    """Log-probs, logits and hidden states of the completion window under ``model``, and the
    forward's ``MoEBalance`` (PPO's entropy bonus and value head read the logits and hidden states;
    a training loss adds the balance). Gradients flow outside ``no_grad``."""
    xp = backend.xp
    hidden, balance = completion_hidden_states(model, batch)                  # (B, C_max, C)
    logits = model.logits(hidden)                                             # (B, C_max, V)
    targets = xp.where(xp.asarray(batch.mask) > 0, xp.asarray(batch.completion_ids), -100)
    logps = gather_log_probs(logits, targets)                                 # (B, C_max)
    return CompletionPass(logps, logits, hidden, balance)


def completion_log_probs(model, batch: Completions) -> Tensor:
    """Per-token log-probs (B, C_max) of the completion tokens under ``model``, 0 where
    ``batch.mask`` is 0."""
    return completion_pass(model, batch).logps


def sequence_log_probs(model, batch: Completions) -> Tensor:
    """log π(completion | prompt) of each row: the sum of its completion tokens' log-probs, (B,)."""
    return completion_log_probs(model, batch).sum(axis=1)


# ------------------------------------------------------------------------------------------- models

def frozen_copy(model):
    """A deep copy of ``model`` whose parameters do not require grad, in eval mode: the reference
    π_ref.

    Alignment keeps the policy close to where it started; the reference is that starting point, so
    it must not move when the policy is updated (a copy, not a view of the same arrays)."""
    reference = copy.deepcopy(model)
    for p in reference.parameters():
        p.requires_grad = False
        p.grad = None
    reference.eval()
    return reference


def check_same_vocab(policy, other, what: str = "reference") -> None:
    """ValueError unless ``other`` scores the same vocabulary as ``policy`` (log-probs or scores of
    one model's token ids under a model with another vocabulary would be meaningless)."""
    a, b = policy.config.vocab_size, other.config.vocab_size
    if a != b:
        raise ValueError(f"the policy has a vocabulary of {a} tokens but the {what} model has {b}; "
                         "both must come from the same tokenizer (start them from the same "
                         "pretrained run)")


def disable_dropout(model) -> None:
    """Set every dropout probability to 0, LoRA adapters' included. PPO's ratio π/π_old and DPO's
    log π − log π_ref compare two forward passes over the same text; dropout would make them differ
    even with identical weights."""
    from ..lora import LoRALinear
    from ..nn import Dropout
    for _, module in model.named_modules():
        if isinstance(module, Dropout):
            module.p = 0.0
        elif isinstance(module, LoRALinear):
            module.dropout = 0.0
    if hasattr(model, "config"):
        model.config.dropout = 0.0
