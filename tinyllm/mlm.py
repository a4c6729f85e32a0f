"""Masked language modelling: how an encoder learns from unlabeled text, and how it fills in blanks.

A causal model learns by predicting each next token. An encoder sees the whole text at once, so that
task is trivial for it; instead (Devlin et al. 2019) some tokens are hidden and the model predicts
them from both sides:

    1. select 15% of the (non-special) positions, each independently;
    2. of the selected, replace 80% by [MASK], 10% by a random token, and keep 10% as they are;
    3. the loss is the cross-entropy at the selected positions only (targets -100 everywhere else).

Why not always [MASK]: [MASK] never occurs when the model is later used on real text, so a model
that only ever predicts at [MASK] learns nothing useful about the representation of ordinary tokens.
The random and the kept 10% force it to produce a good prediction of *every* token, since it cannot
tell which were changed. Whole-word masking (``whole_word=True``) selects words instead of WordPiece
pieces: hiding "##ing" alone while "runn" stays visible makes the task too easy; the selection
probability then applies to words (a word starts at every piece without the "##" prefix).

Training windows are ``[CLS] + (context - 2 tokens of the text) + [SEP]``; ``MaskedLM`` gives
``tinyllm.train.pretrain`` its batches, its evaluation (the mean MLM loss over the same masked
positions of fixed validation windows at every evaluation, so the curve is comparable) and its
gradient weights (a block of the batch weighs its number of masked targets, not its rows).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .autograd import no_grad

IGNORE = -100


def mask_tokens(ids, rng, vocab_size: int, mask_id: int, special_ids, mask_prob: float = 0.15,
                word_starts=None):
    """BERT's corruption of a batch ``ids`` (B, T) → (inputs (B, T), labels (B, T)).

    ``special_ids``: ids never selected ([CLS], [SEP], [PAD]...) nor drawn as random replacements.
    ``word_starts``: for whole-word masking, a boolean array over the vocabulary, True for tokens
    that begin a word; every piece of a word is then selected together. Draws only from ``rng``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"the masking probability must be in (0, 1), got {mask_prob}")
    special = np.isin(ids, np.asarray(list(special_ids), dtype=np.int64))
    draw = rng.random(ids.shape)                                   # one uniform number per position
    # a word's pieces share its first piece's draw
    if word_starts is not None:
        starts = np.asarray(word_starts, dtype=bool)[ids] | special
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        first_piece = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)   # (B, T)
        draw = np.take_along_axis(draw, first_piece, axis=1)
    selected = (draw < mask_prob) & ~special
    # < 0.8 → [MASK], < 0.9 → random, else kept
    action = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[selected & (action < 0.8)] = mask_id
    replace = selected & (action >= 0.8) & (action < 0.9)
    ordinary = np.setdiff1d(np.arange(vocab_size), np.asarray(list(special_ids)))
    inputs[replace] = ordinary[rng.integers(0, len(ordinary), size=int(replace.sum()))]
    labels = np.where(selected, ids, IGNORE)
    return inputs, labels


def word_start_table(tokenizer) -> np.ndarray:
    """True for every token of a WordPiece vocabulary that begins a word (no "##" prefix)."""
    return np.array([not token.startswith("##") for token in tokenizer.tokens], dtype=bool)


def require_mlm_tokenizer(tokenizer) -> None:
    if not hasattr(tokenizer, "mask_id"):
        raise ValueError("masked-LM training needs a WordPiece tokenizer (with [CLS] [SEP] "
                         f"[MASK]); got {type(tokenizer).__name__}: pass --tokenizer wordpiece, or "
                         "a WordPiece tokenizer file")


class MaskedLM:
    """The masked-LM objective for ``tinyllm.train.pretrain``: batches,
    evaluation and gradient weights."""

    def __init__(self, train_ids, tokenizer, batch_size: int, context: int, mask_prob: float = 0.15,
                 whole_word: bool = False):
        require_mlm_tokenizer(tokenizer)
        if context < 3:
            raise ValueError("masked-LM windows need a context of at least 3 ([CLS] + text + "
                             f"[SEP]), got {context}")
        self.train_ids, self.tokenizer = train_ids, tokenizer
        self.batch_size, self.context, self.mask_prob = batch_size, context, mask_prob
        self.word_starts = word_start_table(tokenizer) if whole_word else None
        self.special_ids = sorted(tokenizer.special_tokens.values())

    def frame(self, windows):
        """(B, context - 2) text windows → (B, context) with [CLS] in front and [SEP] at the end."""
        batch = len(windows)
        return np.concatenate([np.full((batch, 1), self.tokenizer.cls_id), windows,
                               np.full((batch, 1), self.tokenizer.sep_id)], axis=1).astype(np.int64)

    def corrupt(self, ids, rng):
        return mask_tokens(ids, rng, self.tokenizer.vocab_size, self.tokenizer.mask_id,
                           self.special_ids,
                           self.mask_prob, self.word_starts)

    def __call__(self, step, rng):
        """A training batch (masked inputs, labels): random windows of the training ids,
        masked by ``rng``."""
        width = self.context - 2
        starts = rng.integers(0, len(self.train_ids) - width + 1, size=self.batch_size)
        return self.corrupt(self.frame(np.stack([self.train_ids[s:s + width] for s in starts])),
                            rng)

    @staticmethod
    def targets(x, labels) -> int:
        """How many predictions a block of the batch holds (its weight in the batch's mean loss)."""
        return int((np.asarray(backend.to_numpy(labels)) != IGNORE).sum())

    def evaluate(self, model, ids, max_batches: int | None = None, seed: int = 0) -> dict:
        """Mean MLM loss (and e^loss) over non-overlapping windows of ``ids``,
        masked the same way every time."""
        width = self.context - 2
        starts = np.arange(0, len(ids) - width + 1, width)
        if max_batches is not None and len(starts) > max_batches * self.batch_size:
            starts = starts[np.linspace(0, len(starts) - 1,
                                        max_batches * self.batch_size).astype(int)]
        if not len(starts):
            raise ValueError(f"{len(ids)} tokens are fewer than one window of {width}")
        rng = np.random.default_rng(seed)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with no_grad():
            for first in range(0, len(starts), self.batch_size):
                windows = np.stack([ids[s:s + width]
                                    for s in starts[first:first + self.batch_size]])
                x, labels = self.corrupt(self.frame(windows), rng)
                n = self.targets(x, labels)
                if n:
                    total += model(x, labels)[1].item() * n
                    count += n
        model.train(was_training)
        mean = total / max(count, 1)
        return {"loss": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": count}


def fill_mask(model, tokenizer, text: str, top_k: int = 5):
    """The ``top_k`` most likely tokens at each [MASK] of ``text``: a list (one per mask, in order)
    of (token, probability) lists."""
    require_mlm_tokenizer(tokenizer)
    ids, types = tokenizer.encode_pair(text)
    positions = [i for i, token_id in enumerate(ids) if token_id == tokenizer.mask_id]
    if not positions:
        raise ValueError(f"the text has no {'[MASK]'} token to fill in: {text!r}")
    if len(ids) > model.config.block_size:
        raise ValueError(f"the text is {len(ids)} tokens with [CLS] and [SEP], more than the "
                         "model's context "
                         f"of {model.config.block_size}")
    with no_grad():
        logits, _ = model(np.array([ids]), token_types=np.array([types]))
    results = []
    for position in positions:
        z = backend.to_numpy(logits.data[0, position]).astype(np.float64)
        z[sorted(tokenizer.special_tokens.values())] = -np.inf        # a filler is a real token
        p = np.exp(z - z.max())
        p /= p.sum()
        best = np.argsort(-p, kind="stable")[:top_k]
        results.append([(tokenizer.id_to_token(int(i)), float(p[i])) for i in best])
    return results
