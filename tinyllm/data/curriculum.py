"""Curriculum learning for pretraining: easy training windows first,
harder ones let in on a schedule.

Competence-based curriculum (Platanios et al., 2019): the candidate windows (every ``context // 2``
tokens of the training ids) are sorted by a difficulty score, and the batch of step t is drawn at
random from the easiest fraction c(t) of them, with

    c(t) = min(1, sqrt(t · (1 − c0²) / (warmup · steps) + c0²))      c0 = the share available at step 0

so the pool grows quickly at first, then more slowly, and after ``warmup · steps`` steps every
window is available and sampling is uniform, like the random order. Each step still trains on batch
× context tokens:
a curriculum run and a random-order run of the same steps use the same compute.

Difficulty scores, one per window (lower = easier):

    length       the mean sentence length in tokens: context / (1 + sentence ends in the window), where a
                 sentence end is a token containing ".", "!", "?" or a newline (Platanios et al. use
                 sentence length for translation)
    perplexity   the mean next-token loss of a small reference model: a bigram model fitted on the training
                 ids (add-one smoothing), cheap and deterministic; windows a bigram model finds
                 surprising are the rare words, names and numbers
"""

from __future__ import annotations

import math

import numpy as np

CURRICULA = ("length", "perplexity")


def window_starts(num_ids: int, context: int) -> np.ndarray:
    """The candidate windows' first positions: every context // 2 tokens,
    each window context + 1 long."""
    return np.arange(0, num_ids - context, max(context // 2, 1))


def competence(step: int, steps: int, warmup: float = 0.5, initial: float = 0.1) -> float:
    """c(t) of the module docstring: the share of windows, easiest first,
    that step ``step`` samples from."""
    if warmup <= 0:
        return 1.0
    return min(1.0, math.sqrt(step * (1 - initial ** 2) / (warmup * steps) + initial ** 2))


def sentence_length_difficulty(ids: np.ndarray, starts: np.ndarray, context: int,
                               tokenizer) -> np.ndarray:
    """Mean sentence length (tokens) of each window: context / (1 + sentence-end tokens in it)."""
    ends = np.array(
        [any(c in tokenizer.decode([i]) for c in ".!?\n") for i in range(tokenizer.vocab_size)]
    )
    # counts[k] = sentence ends among ids[:k]
    counts = np.concatenate([[0], np.cumsum(ends[ids])])
    return context / (1.0 + counts[starts + context] - counts[starts])


def bigram_difficulty(ids: np.ndarray, starts: np.ndarray, context: int,
                      vocab_size: int) -> np.ndarray:
    """Mean bigram loss −log p(ids[k+1] | ids[k]) over each window's context targets (add-one
    smoothing)."""
    ids = ids.astype(np.int64)
    pairs = ids[:-1] * vocab_size + ids[1:]
    codes, pair_counts = np.unique(pairs, return_counts=True)
    first_counts = np.bincount(ids[:-1], minlength=vocab_size)
    # every pair of the text is among the codes
    found = pair_counts[np.searchsorted(codes, pairs)]
    loss = -np.log((found + 1.0) / (first_counts[ids[:-1]] + vocab_size))
    # loss[k]: predicting ids[k+1] from ids[k]
    cumulative = np.concatenate([[0.0], np.cumsum(loss)])
    return (cumulative[starts + context] - cumulative[starts]) / context


class CurriculumSampler:
    """``sampler(step, generator) -> (x, y)``: a batch of windows for
    ``pretrain(batch_sampler=...)``, drawn from the easiest ``competence(step)`` share of the
    windows ordered by ``difficulty``."""

    def __init__(self, ids, context: int, batch_size: int, steps: int, difficulty: np.ndarray,
                 starts: np.ndarray, warmup: float = 0.5, initial: float = 0.1):
        if len(difficulty) != len(starts) or len(starts) == 0:
            raise ValueError(f"need one difficulty per window: {len(difficulty)} scores for "
                             f"{len(starts)} windows")
        self.ids, self.context, self.batch_size, self.steps = ids, context, batch_size, steps
        self.order = starts[np.argsort(difficulty, kind="stable")]   # window starts, easiest first
        self.warmup, self.initial = warmup, initial

    def __call__(self, step: int, generator: np.random.Generator):
        share = competence(step, self.steps, self.warmup, self.initial)
        available = max(self.batch_size, int(math.ceil(share * len(self.order))))
        picked = self.order[generator.integers(0, min(available, len(self.order)),
                                               size=self.batch_size)]
        windows = np.stack([self.ids[s:s + self.context + 1] for s in picked]).astype(np.int64)
        return windows[:, :-1], windows[:, 1:]


def curriculum_sampler(kind: str, ids, context: int, batch_size: int, steps: int, tokenizer,
                       warmup: float = 0.5) -> CurriculumSampler:
    """The sampler of curriculum ``kind`` ("length" or "perplexity") over the training ids."""
    starts = window_starts(len(ids), context)
    if kind == "length":
        difficulty = sentence_length_difficulty(ids, starts, context, tokenizer)
    elif kind == "perplexity":
        difficulty = bigram_difficulty(ids, starts, context, tokenizer.vocab_size)
    else:
        raise ValueError(f"unknown curriculum {kind!r}; choose one of {', '.join(CURRICULA)}")
    return CurriculumSampler(ids, context, batch_size, steps, difficulty, starts, warmup)
