"""Continuous batching: one decode loop serves every request at once.

A server that ran each request's ``generate`` alone would use the model on one row at a time,
although a step on 8 rows costs little more than a step on 1 (the weights are read once per step
either way). So the ``Engine`` owns a single ``Decoder`` over a batched KV cache and runs one loop
in its own thread:

    loop:  drop rows whose client went away
           admit waiting requests while there are free rows (each prefilled alone, then appended)
           pick one token for every row (each row with its own sampling settings and random
           generator) hand each token to its request; rows that finished leave the batch
           one decode step for the rows that remain

Requests join and leave *between* steps, so a short request never waits for a long one to finish
(the simple form of what vLLM and llama.cpp call continuous batching; they also split long prefills
into pieces and page the cache, which this does not need at this size).

A request asks for ``n`` sequences (n rows; row i samples with seed + i, as ``generate`` does for a
batch). The engine talks to the thread that submitted it through a ``queue.Queue`` of events:

    ("token", index, token_id, logprobs)   logprobs: None, or (logprob of the token, [(id, logprob), ...] top)
    ("done", index, finish_reason)          "stop" (an end token) or "length" (max_tokens reached)
    ("error", message)                      the model step failed; the request is over

Determinism: a request alone in the batch gets exactly the tokens ``generate`` gives for the same
prompt, settings and seed; in a batch, up to float rounding in the logits (a batched matmul may sum
in another order).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..generate import Decoder, _eval_mode
from ..sampling import (apply_temperature, check_sampling_args, greedy, token_log_probabilities,
                        sample_from_logits, top_k_filter, top_p_filter)


class QueueFull(RuntimeError):
    """Raised by ``submit`` when ``max_queue`` requests are already waiting for a batch row."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: frozenset = frozenset()
    # None: no logprobs; k >= 0: the chosen token's and the k most likely
    logprobs: int | None = None

    def __post_init__(self):
        check_sampling_args(self.temperature, self.top_k, self.top_p)
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Request:
    """What a client asked for, and the channel its tokens come back on."""
    prompt_ids: list
    params: SamplingParams
    n: int = 1
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stopped_rows: set = field(default_factory=set)

    def cancel(self) -> None:
        """Give up on the request (the client went away): its rows leave the batch before the next
        step."""
        self.cancelled.set()

    def stop_row(self, index: int) -> None:
        """End sequence ``index`` only (its stop text was found): its row leaves before the next
        step."""
        self.stopped_rows.add(index)

    def wants(self, index: int) -> bool:
        return not self.cancelled.is_set() and index not in self.stopped_rows


@dataclass
class _Row:
    request: Request
    index: int                          # which of the request's n sequences
    generator: np.random.Generator
    generated: int = 0


class Engine:
    """The decode loop. ``submit(request)`` queues a request; the loop thread (``start()``) runs it.

    ``max_batch``: rows decoded together (a request with n sequences takes n rows). ``max_queue``:
    requests that may wait for rows; one more raises ``QueueFull`` at once rather than letting the
    wait grow unbounded.
    """

    def __init__(self, model, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and "
                             f"{max_queue}")
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.waiting: list[Request] = []
        self.rows: list[_Row] = []
        self.decoder = None
        self.logits = None                # (len(rows), V) next-token scores of every row
        self.steps = 0                    # decode steps run (for tests and /health)
        self._wake = threading.Condition()
        self._closed = False
        self._thread = None

    # ------------------------------------------------------------------------------ the client side

    def submit(self, request: Request) -> Request:
        if request.n > self.max_batch:
            raise ValueError(f"n={request.n} is more than the server's batch of {self.max_batch} "
                             "rows")
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is shut down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting; try again "
                                "shortly")
            self.waiting.append(request)
            self._wake.notify()
        return request

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="tinyllm-engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def stats(self) -> dict:
        with self._wake:
            return {"running": len(self.rows), "waiting": len(self.waiting),
                    "max_batch": self.max_batch, "steps": self.steps}

    # ---------------------------------------------------------------------------------- the loop

    def _loop(self) -> None:
        with _eval_mode(self.model):
            while True:
                with self._wake:
                    while not (self.waiting or self.rows or self._closed):
                        self._wake.wait()
                    if self._closed:
                        break
                    admitted = self._take_admissible()
                try:
                    self.step(admitted)
                # report to every client instead of dying silently
                except Exception as e:
                    for request in {id(r.request): r.request for r in self.rows}.values():
                        request.events.put(("error", f"{type(e).__name__}: {e}"))
                    for request in admitted:
                        request.events.put(("error", f"{type(e).__name__}: {e}"))
                    self.rows, self.decoder, self.logits = [], None, None

    def _take_admissible(self) -> list[Request]:
        """Waiting requests that fit in the free rows, first come first served (called under the
        lock)."""
        admitted, free = [], self.max_batch - len(self.rows)
        while self.waiting and (self.waiting[0].n <= free or self.waiting[0].cancelled.is_set()):
            request = self.waiting.pop(0)
            if not request.cancelled.is_set():
                admitted.append(request)
                free -= request.n
        return admitted

    def step(self, admitted=()) -> None:
        """One iteration of the loop: drop cancelled rows, prefill ``admitted`` requests, pick a
        token for every row, send it, and run the decode step of the rows that go on."""
        self._keep_rows([i for i, row in enumerate(self.rows) if row.request.wants(row.index)])
        if admitted:
            self._admit(admitted)
        if not self.rows:
            return
        scores = backend.to_numpy(self.logits).astype(np.float64)              # (B, V) on the host
        tokens, going_on = [], []
        for i, row in enumerate(self.rows):
            token, logprobs = pick_token(scores[i], row.request.params, row.generator)
            params, row.generated = row.request.params, row.generated + 1
            tokens.append(token)
            if token in params.stop_ids:
                row.request.events.put(("done", row.index, "stop"))
                continue
            row.request.events.put(("token", row.index, token, logprobs))
            if row.generated >= params.max_tokens:
                row.request.events.put(("done", row.index, "length"))
            else:
                going_on.append(i)
        self.steps += 1
        self._keep_rows(going_on)
        if self.rows:
            self.logits = self.decoder.feed([tokens[i] for i in going_on])

    def _admit(self, requests) -> None:
        prompts, new_rows = [], []
        for request in requests:
            seed = request.params.seed
            for index in range(request.n):
                prompts.append(request.prompt_ids)
                new_rows.append(_Row(request, index,
                                     np.random.default_rng(None if seed is None else seed + index)))
        if self.decoder is None:
            self.decoder = Decoder(self.model, prompts, on_full="stop")
            self.logits = self.decoder.prefill()
        else:
            new_logits = self.decoder.add_rows(prompts)
            self.logits = backend.xp.concatenate([self.logits, new_logits])
        self.rows += new_rows

    def _keep_rows(self, keep) -> None:
        if len(keep) == len(self.rows):
            return
        with self._wake:                                  # stats() reads rows from other threads
            self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.decoder, self.logits = None, None
            return
        self.decoder.select_rows(keep)
        self.logits = self.logits[backend.asarray(np.asarray(keep, dtype=np.intp))]


def pick_token(scores, params: SamplingParams, generator):
    """One token from one row's scores (V,) with the request's settings, the same way ``generate``
    picks it; and its log-probabilities when asked for: (logprob of the token, [(id, logprob)] of
    the ``params.logprobs`` most likely tokens). Log-probabilities are the model's own (before
    temperature and filters), as OpenAI and vLLM report them."""
    if params.temperature == 0:
        token = greedy(scores)
    else:
        filtered = apply_temperature(scores[None], params.temperature)          # (1, V)
        if params.top_k is not None:
            filtered = top_k_filter(filtered, params.top_k)
        if params.top_p is not None:
            filtered = top_p_filter(filtered, params.top_p)
        token = int(sample_from_logits(filtered, [generator])[0])
    if params.logprobs is None:
        return token, None
    logprobs = token_log_probabilities(scores)
    best = np.argsort(-logprobs, kind="stable")[:params.logprobs]
    return token, (float(logprobs[token]), [(int(t), float(logprobs[t])) for t in best])
