"""Generating text: feed the prompt, pick a token, feed it back, repeat.

    prompt ──prefill──► logits ──pick──► token ──decode step──► logits ──pick──► token ...

``generate`` returns the new token ids, ``stream_generate`` yields them as they come,
``beam_search`` keeps the ``beam_width`` most likely continuations instead of committing to one
token per step. How a token is picked from the logits (temperature, top-k, top-p, repetition
penalty) lives in ``tinyllm.sampling``.

The ``Decoder`` below does the feeding, the same way with or without a KV cache:

- **Cache** (``use_cache=True``, the default): the prompt is prefilled once, then each step runs the
  model on one new token per row, attending over the cached keys and values (see
  ``tinyllm.kv_cache``). ``use_cache=False`` recomputes the whole context every step — same results,
  much slower; it is the reference the tests compare the cache against.
- **Batches**: prompts of different lengths are left-padded to a common length, so every row's
  newest token sits in the same column and one (B, 1) step serves them all. An attention mask hides
  the padding and position ids count only real tokens, so each row computes exactly what it would
  alone.
- **A full window**: a learned position table has ``block_size`` entries, so a row's context (prompt
  + new tokens) can hold at most ``block_size`` tokens. With ``on_full="slide"`` (the default), a
  row that is full keeps only its last ``block_size // 2`` tokens and is re-prefilled with positions
  starting from 0 (rows share one cache, so in a batch the other rows are re-prefilled too, with
  their contexts unchanged). The cached keys cannot simply be shifted, because every key depends on
  its absolute position; re-prefilling after every token would cost as much as no cache at all,
  while sliding by half the window costs one prefill of ``block_size // 2`` tokens per
  ``block_size // 2`` new tokens and always leaves the model at least half a window of context. With
  ``on_full="stop"`` a row stops once its context is full (the last token it returns was predicted
  from a full window). A prompt longer than ``block_size`` is cut to its last ``block_size`` tokens
  when sliding, and is an error when stopping.

Determinism: with ``seed=s``, row b of a batch draws its random numbers from
``numpy.random.default_rng(s + b)``, so it gets exactly the tokens that
``generate(model, prompt_b, ..., seed=s + b)`` gives (up to float rounding in the logits). Greedy
decoding (``temperature=0``) needs no seed.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass

import numpy as np

from . import backend
from .kv_cache import KVCache
from .sampling import (apply_repetition_penalty, apply_temperature, check_sampling_args, greedy,
                       token_log_probabilities,
                       sample_from_logits, top_k_filter, top_p_filter)

ON_FULL = ("slide", "stop")


class Decoder:
    """Feeds a batch of token sequences to a model and returns the logits of each row's next token.

    ``prefill()`` runs the prompts; ``feed(tokens)`` appends one token per row and runs one step;
    ``select_rows(rows)`` drops or repeats rows (finished sequences, beam search);
    ``add_rows(prompts)`` lets new sequences join between steps (the server's continuous batching).
    The model needs a ``config`` (``block_size``, and the shapes for the cache) and
    ``next_token_logits(idx, mask, positions, cache)``, as ``GPT`` has.
    """

    def __init__(self, model, prompts, use_cache: bool = True, on_full: str = "slide"):
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {ON_FULL}, got {on_full!r}")
        self.model = model
        self.block_size = model.config.block_size
        self.keep_on_slide = max(self.block_size // 2, 1)
        self.on_full = on_full
        for row, prompt in enumerate(prompts):
            if len(prompt) > self.block_size and on_full == "stop":
                which = "the prompt" if len(prompts) == 1 else f"prompt {row}"
                raise ValueError(f"{which} has {len(prompt)} tokens but the model's block_size is "
                                 f"{self.block_size}; "
                                 "shorten it or use on_full='slide'")
        self.contexts = [list(p[-self.block_size:]) for p in prompts]   # what each row's model sees
        # the model's, not the default
        dtype = model.head_weight.dtype if hasattr(model, "head_weight") else None
        self.cache = KVCache.for_model(model.config, len(prompts), dtype) if use_cache else None
        # left padding of each row in the cache
        self.pad = np.zeros(len(prompts), dtype=np.intp)

    def is_full(self, row: int) -> bool:
        return len(self.contexts[row]) >= self.block_size

    def prefill(self):
        """Run every row's whole context (left-padded) through the model: logits (B, V)."""
        lengths = np.array([len(c) for c in self.contexts])
        width = int(lengths.max())
        self.pad = width - lengths                                      # (B,)
        # (B, L); pad id 0 is never attended
        ids = np.zeros((len(self.contexts), width), dtype=np.int64)
        for row, context in enumerate(self.contexts):
            ids[row, self.pad[row]:] = context
        column = np.arange(width)
        # (B, L): real tokens before each one
        positions = np.maximum(column - self.pad[:, None], 0)
        if self.cache is not None:
            self.cache.reset()
        # host ids: checked free
        return self.model.next_token_logits(ids, self._mask(width), positions, self.cache)

    def feed(self, tokens):
        """Append ``tokens[b]`` to row b and return the logits (B, V) of the token after it."""
        if len(tokens) != len(self.contexts):
            raise ValueError(f"feed() got {len(tokens)} tokens for {len(self.contexts)} rows")
        full = [self.is_full(row) for row in range(len(self.contexts))]
        if any(full) and self.on_full == "stop":
            raise ValueError("a row's context is full (block_size tokens) and on_full='stop'; stop "
                             "that row first")
        for context, token in zip(self.contexts, tokens):
            context.append(int(token))
        # Re-prefill when a row slides, and also if the cache itself is full (a safety net:
        # select_rows drops the padding rows share, so the cache is as wide as the longest row's
        # context).
        if self.cache is None or any(full) or self.cache.length + 1 > self.block_size:
            # slide: keep the newest half window
            for row in np.flatnonzero(full):
                self.contexts[row] = self.contexts[row][-self.keep_on_slide:]
            return self.prefill()
        width = self.cache.length + 1
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)          # (B, 1)
        positions = np.array([[len(c) - 1] for c in self.contexts])     # (B, 1)
        # host ids: checked free
        return self.model.next_token_logits(ids, self._mask(width), positions, self.cache)

    def select_rows(self, rows) -> None:
        """Keep rows ``rows`` (old index of each new row; repeats allowed) of the batch. Padding
        that every kept row has in front (left by a longer row that finished) is dropped from the
        cache."""
        rows = [int(r) for r in rows]
        self.contexts = [list(self.contexts[r]) for r in rows]
        self.pad = self.pad[rows]
        shared_pad = int(self.pad.min()) if rows and self.cache is not None else 0
        self.pad = self.pad - shared_pad
        if self.cache is not None:
            self.cache.select_rows(rows, start=shared_pad)

    def add_rows(self, prompts):
        """Prefill ``prompts`` on their own, add them as new rows below the batch and return their
        logits (B_new, V). This is how requests join a running batch between steps (continuous
        batching): rows keep their own positions, and the shorter side is left-padded to the other's
        length."""
        newcomers = Decoder(self.model, prompts, self.cache is not None, self.on_full)
        logits = newcomers.prefill()
        if self.cache is not None:
            length = max(self.cache.length, newcomers.cache.length)
            self.pad = self.pad + (length - self.cache.length)
            newcomers.pad = newcomers.pad + (length - newcomers.cache.length)
            self.cache.append_rows(newcomers.cache)
        self.contexts += newcomers.contexts
        self.pad = np.concatenate([self.pad, newcomers.pad])
        return logits

    def _mask(self, width):
        """(B, 1, 1, width): True for real tokens, False for padding; None when no row is padded."""
        if not self.pad.any():
            return None
        return backend.asarray(np.arange(width) >= self.pad[:, None])[:, None, None, :]


# ----------------------------------------------------------------------------------------- sampling

def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             repetition_penalty=1.0,
             stop_ids=(), seed=None, use_cache=True, on_full="slide"):
    """Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens and return the new ones.

    ``prompt_ids``: a list of ids (returns a list of ids) or a list of such lists of any lengths
    (returns a list of lists, one per prompt, each what that prompt would get alone).
    ``temperature`` 0 is greedy; ``top_k``, ``top_p``, ``repetition_penalty``: see
    ``tinyllm.sampling``. A token in ``stop_ids`` ends its sequence and is not returned. ``seed``:
    an int for reproducible sampling. ``use_cache`` and ``on_full``:
    see the module docstring.
    """
    prompts, single = _as_prompts(prompt_ids, model.config.vocab_size)
    results = [[] for _ in prompts]
    for step in _sample_steps(model, prompts, max_new_tokens, temperature, top_k, top_p,
                              repetition_penalty,
                              stop_ids, seed, use_cache, on_full):
        for row, token in enumerate(step):
            if token is not None:
                results[row].append(token)
    return results[0] if single else results


def stream_generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                    repetition_penalty=1.0, stop_ids=(), seed=None, use_cache=True,
                    on_full="slide"):
    """Like ``generate``, but a generator: for one prompt it yields each new token id as soon as it
    is picked; for a batch it yields one list per step (a token per prompt, None where that prompt
    has ended)."""
    prompts, single = _as_prompts(prompt_ids, model.config.vocab_size)
    for step in _sample_steps(model, prompts, max_new_tokens, temperature, top_k, top_p,
                              repetition_penalty,
                              stop_ids, seed, use_cache, on_full):
        if not single:
            yield step
        elif step[0] is not None:
            yield step[0]


def _sample_steps(model, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                  stop_ids, seed,
                  use_cache, on_full):
    """One list per step: the token each prompt got (None once it has ended)."""
    check_sampling_args(temperature, top_k, top_p, repetition_penalty)
    _check_count("max_new_tokens", max_new_tokens, minimum=0)
    stop_ids = _as_stop_ids(stop_ids)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if max_new_tokens == 0:
        return
    generators = [
        np.random.default_rng(None if seed is None else seed + row) for row in range(len(prompts))
    ]
    vocab = model.config.vocab_size
    seen = None
    if repetition_penalty != 1.0:
        # (B, V) tokens each row has had
        seen = np.zeros((len(prompts), vocab), dtype=bool)
        for row, prompt in enumerate(prompts):
            seen[row, prompt] = True
    # the prompt of each decoder row
    active = list(range(len(prompts)))

    with _eval_mode(model):
        decoder = Decoder(model, prompts, use_cache, on_full)
        logits = decoder.prefill()
        for step in range(max_new_tokens):
            scores = backend.to_numpy(logits).astype(np.float64)       # (B, V), on the host
            if seen is not None:
                scores = apply_repetition_penalty(scores, seen[active], repetition_penalty)
            if temperature == 0:
                tokens = greedy(scores)
            else:
                scores = apply_temperature(scores, temperature)
                if top_k is not None:
                    scores = top_k_filter(scores, top_k)
                if top_p is not None:
                    scores = top_p_filter(scores, top_p)
                tokens = sample_from_logits(scores, [generators[row] for row in active])
            out, still_going = [None] * len(prompts), []
            for i, (row, token) in enumerate(zip(active, tokens.tolist())):
                if token in stop_ids:
                    continue
                out[row] = token
                if seen is not None:
                    seen[row, token] = True
                if not (on_full == "stop" and decoder.is_full(i)):
                    still_going.append(i)
            yield out
            if not still_going or step == max_new_tokens - 1:
                return
            if len(still_going) < len(active):
                decoder.select_rows(still_going)
                active = [active[i] for i in still_going]
            logits = decoder.feed([tokens[i] for i in still_going])


# -------------------------------------------------------------------------------------- beam search

@dataclass
class _Beam:
    tokens: list          # generated ids (a final stop token included)
    logprob: float        # Σ log p(token | everything before it)
    finished: bool = False

    def score(self, length_penalty):
        return self.logprob / len(self.tokens) ** length_penalty if self.tokens else 0.0


def beam_search(model, prompt_ids, beam_width, max_new_tokens, length_penalty=1.0, stop_ids=(),
                use_cache=True, on_full="slide"):
    """The ``beam_width`` best continuations of one prompt, as a list of (new token ids,
    score), best first.

    score = Σ log p(token) / length ** length_penalty, where length counts the new tokens (a final
    stop token included, though it is not returned). length_penalty 0 ranks by total
    log-probability, which favours short sequences (every token multiplies in a probability < 1); 1
    ranks by the mean per-token log-probability; values above 1 favour longer ones still.

    The algorithm keeps ``beam_width`` hypotheses. Each step, every unfinished one proposes all V
    continuations and every finished one (ended by a stop token) proposes itself unchanged; the
    ``beam_width`` best proposals by score become the new beam (ties: finished first, then lower
    beam index, then lower token id). It stops when every hypothesis is finished or after
    ``max_new_tokens`` steps. With beam_width=1 this is greedy decoding.
    """
    prompts, stop_ids = _check_beam_search(model, prompt_ids, beam_width, max_new_tokens,
                                           length_penalty, stop_ids)
    beams = [_Beam([], 0.0)]
    if max_new_tokens == 0:
        return [([], 0.0)]

    with _eval_mode(model):
        decoder = Decoder(model, prompts, use_cache, on_full)
        # one decoder row per unfinished beam
        logits = decoder.prefill()
        for step in range(max_new_tokens):
            beams, parents, tokens = _beam_step(beams, backend.to_numpy(logits), step, beam_width,
                                                length_penalty, stop_ids)
            if not parents or step == max_new_tokens - 1:
                break
            decoder.select_rows(parents)
            # every row has the same length
            if on_full == "stop" and decoder.is_full(0):
                break
            logits = decoder.feed(tokens)

    # stable: ties keep beam order
    beams.sort(key=lambda beam: -beam.score(length_penalty))
    return [(beam.tokens[:-1] if beam.finished else beam.tokens, beam.score(length_penalty))
            for beam in beams]


def _check_beam_search(model, prompt_ids, beam_width, max_new_tokens, length_penalty, stop_ids):
    """(the prompt as a one-row list of prompts, the stop ids), once the arguments are checked."""
    _check_count("beam_width", beam_width, minimum=1)
    _check_count("max_new_tokens", max_new_tokens, minimum=0)
    if not isinstance(length_penalty, numbers.Real):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")
    prompts, single = _as_prompts(prompt_ids, model.config.vocab_size)
    if not single:
        raise ValueError("beam_search takes one prompt (a list of ids), not a batch")
    return prompts, _as_stop_ids(stop_ids)


def _beam_step(beams, logits, step, beam_width, length_penalty, stop_ids):
    """One step of beam search: (the new beams, and for each new unfinished one the decoder row of
    its parent and its new token). ``logits`` (n_live, V) has one row per unfinished beam."""
    live = [beam for beam in beams if not beam.finished]
    logprobs = token_log_probabilities(logits)                                # (n_live, V)
    totals = np.array([beam.logprob for beam in live])[:, None] + logprobs
    # every live proposal has step + 1 tokens
    scores = totals / (step + 1) ** length_penalty
    # only these can make the beam
    best = np.argsort(-scores.ravel(), kind="stable")[:beam_width]
    vocab = scores.shape[1]
    proposals = [(beam.score(length_penalty), 0, i, beam, None)
                 for i, beam in enumerate(beams) if beam.finished]
    proposals += [(float(scores.flat[f]), 1, int(f), None, divmod(int(f), vocab)) for f in best]
    proposals.sort(key=lambda p: (-p[0], p[1], p[2]))
    new_beams, parents, tokens = [], [], []
    for _, _, _, kept, expansion in proposals[:beam_width]:
        if kept is not None:
            new_beams.append(kept)
            continue
        parent, token = expansion
        beam = _Beam(live[parent].tokens + [token], float(totals[parent, token]), token in stop_ids)
        new_beams.append(beam)
        if not beam.finished:
            parents.append(parent)
            tokens.append(token)
    return new_beams, parents, tokens


# ------------------------------------------------------------------------------------------ helpers

def _as_prompts(prompt_ids, vocab_size):
    """(list of prompts, each a list of ints; True if a single prompt was given), checked."""
    if hasattr(prompt_ids, "data") and not isinstance(prompt_ids, (list, tuple)):
        prompt_ids = prompt_ids.data                                   # a Tensor
    if hasattr(prompt_ids, "ndim"):                                    # an array
        array = backend.to_numpy(prompt_ids)
        if array.ndim not in (1, 2):
            raise ValueError("prompt_ids must be 1-D (one prompt) or 2-D (a batch), got "
                             f"shape {array.shape}")
        prompt_ids = array.tolist()
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token id (e.g. an end-of-text id "
                         "to start from nothing)")
    single = all(isinstance(t, numbers.Integral) for t in prompt_ids)
    prompts = [prompt_ids] if single else [list(p) if not isinstance(p, numbers.Integral) else None
                                           for p in prompt_ids]
    for row, prompt in enumerate(prompts):
        which = "the prompt" if single else f"prompt {row}"
        if prompt is None or not all(isinstance(t, numbers.Integral) for t in prompt):
            raise ValueError(
                f"{which} must be a list of integer token ids, got {prompt_ids[row]!r}"[:200]
            )
        if not prompt:
            raise ValueError(f"{which} is empty: give at least one token id")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"{which} has token id {bad[0]}, outside the model's vocabulary "
                             f"0..{vocab_size - 1}")
    return [[int(t) for t in p] for p in prompts], single


def _as_stop_ids(stop_ids):
    if stop_ids is None:
        return frozenset()
    if isinstance(stop_ids, numbers.Integral):
        return frozenset([int(stop_ids)])
    return frozenset(int(t) for t in stop_ids)


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@contextlib.contextmanager
def _eval_mode(model):
    """Dropout off while generating; the model's train/eval mode is restored afterwards."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)
