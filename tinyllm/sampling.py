"""Turning next-token scores into a choice: small functions over logits that you can read,
test and combine.

Every function takes logits of shape (V,) or (B, V) — one row per sequence — as NumPy arrays on the
host (a step's logits are small; ``tinyllm.generate`` copies them off the GPU once per step) and
returns a new array. ``generate`` applies them in this order, as Hugging Face's ``generate`` does:

    apply_repetition_penalty → apply_temperature → top_k_filter → top_p_filter → sample_from_logits
    (temperature 0 → greedy)

Filters remove tokens by setting their logit to -inf, so softmax gives them probability exactly 0.

Ties are broken the same way everywhere: between equal scores the lower token id wins. ``greedy`` is
the first maximum (``argmax``), ``top_k_filter(logits, 1)`` keeps that same token, and
``top_p_filter`` ranks tokens by (probability descending, id ascending).
"""

from __future__ import annotations

import numbers

import numpy as np


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0) -> None:
    """Raise ValueError naming the first setting that makes no sense."""
    if not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k,
                                         bool) or not isinstance(top_k,
                                                                 numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p!r}")
    if not isinstance(repetition_penalty, numbers.Real) or not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = none), got {repetition_penalty!r}")


def token_probabilities(logits):
    """The softmax of host logits (NumPy, float64, along the last axis): exp(z - max z) / Σ exp(z -
    max z). Sampling's own, not ``functional.softmax`` (a Tensor op with a backward)."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p


def token_log_probabilities(logits):
    """log softmax along the last axis, in float64: z - max z - log Σ exp(z - max z)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def greedy(logits):
    """The highest-scoring token of each row (the lowest id among equal maxima): an int for (V,)
    logits, an int array (B,) for (B, V)."""
    choice = np.argmax(logits, axis=-1)
    return int(choice) if np.ndim(logits) == 1 else choice


def apply_temperature(logits, temperature):
    """z / T. T < 1 sharpens the distribution, T > 1 flattens it; T → 0 tends to greedy (use
    ``greedy`` for T = 0 itself: dividing by zero is not a distribution)."""
    if not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"apply_temperature needs a temperature > 0, got {temperature!r} (use "
                         "greedy() for 0)")
    return np.asarray(logits) / temperature


def apply_repetition_penalty(logits, seen, penalty):
    """Make tokens that already occurred less likely, CTRL-style (Keskar et al., 2019): a seen
    token's logit is divided by ``penalty`` when positive and multiplied by it when negative, so for
    penalty > 1 it always moves down. ``seen`` is a boolean array shaped like ``logits`` (True =
    occurred), or for (V,) logits an iterable of token ids. penalty = 1 changes nothing; penalty < 1
    favours repeats."""
    if not isinstance(penalty, numbers.Real) or not penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty!r}")
    logits = np.array(logits)                                   # a copy
    if isinstance(seen, np.ndarray) and seen.dtype == bool:
        if seen.shape != logits.shape:
            raise ValueError(f"seen mask of shape {seen.shape} does not match logits of shape "
                             f"{logits.shape}")
        mask = seen
    else:
        if logits.ndim != 1:
            raise ValueError("for (B, V) logits pass `seen` as a boolean (B, V) array")
        mask = np.zeros(logits.shape, dtype=bool)
        mask[np.asarray(list(seen), dtype=np.intp)] = True
    penalised = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(mask, penalised, logits)


def top_k_filter(logits, k):
    """Keep the k highest logits of each row, set the rest to -inf. Exactly k survive (if V ≥ k):
    among tokens tied with the k-th highest logit the lower ids are kept."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {k!r}")
    logits = np.asarray(logits)
    vocab = logits.shape[-1]
    if k >= vocab:
        return logits.copy()
    # The k-th largest value of each row without a full sort (O(V)): everything above it survives,
    # and the first (k - #above) tokens equal to it fill the remaining places.
    kth = -np.partition(-logits, k - 1, axis=-1)[..., k - 1 : k]          # (..., 1)
    above = logits > kth
    tied = logits == kth
    places_left = k - above.sum(axis=-1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=-1) <= places_left))
    return np.where(keep, logits, -np.inf)


def top_p_filter(logits, p):
    """Nucleus filtering (Holtzman et al., 2019): keep the smallest set of tokens whose probability
    mass is at least p, set the rest to -inf.

    Tokens are ranked by probability, highest first, ties by lower id first (a stable sort), and the
    shortest prefix of that ranking with cumulative mass ≥ p is kept — always at least one token. So
    a group of equally likely tokens at the boundary is split, its lower ids kept (probabilities
    0.4, 0.2, 0.2, 0.2 with p = 0.5 keep the 0.4 and the first 0.2 only): the set stays the smallest
    one. Because the cumulative sums are rounded, a sum within 1e-12 below p counts as reaching it
    (so probabilities 0.5, 0.25, 0.25 with p = 0.75 keep two tokens, not three). Apply the
    temperature first: it changes the probabilities and so the set.
    """
    if not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    logits = np.asarray(logits)
    probs = token_probabilities(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")                   # (..., V) best first
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=-1), axis=-1)
    # first index reaching p, plus one
    n_keep = (cumulative < p - 1e-12).sum(axis=-1, keepdims=True) + 1
    keep_sorted = np.arange(logits.shape[-1]) < n_keep                   # (..., V) in ranked order
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def sample_from_logits(logits, generator):
    """Draw one token per row from token_probabilities(logits), by inverting the cumulative
    distribution: with u ~ U[0, 1), pick the first token whose cumulative probability exceeds u
    (tokens of probability 0 have an empty interval and are never picked).

    ``generator``: a ``numpy.random.Generator``, or one per row for (B, V) logits (so each row's
    stream of random numbers does not depend on the other rows). Returns an int for (V,) logits, an
    int array (B,) otherwise.
    """
    probs = token_probabilities(logits)
    # (..., V), ends at 1 up to rounding
    cumulative = np.cumsum(probs, axis=-1)
    if isinstance(generator, (list, tuple)):
        if np.ndim(logits) != 2 or len(generator) != len(probs):
            raise ValueError(f"got {len(generator)} generators for logits of shape "
                             f"{np.shape(logits)}; need one per row")
        u = np.array([g.random() for g in generator])
    else:
        u = generator.random(probs.shape[:-1])
    u = np.asarray(u)[..., None] * cumulative[..., -1:]
    choice = (cumulative <= u).sum(axis=-1)
    # If rounding made u reach the total, fall back to the last token with probability > 0.
    last_possible = np.argmax(cumulative >= cumulative[..., -1:], axis=-1)
    choice = np.minimum(choice, last_possible)
    return int(choice) if np.ndim(logits) == 1 else choice
