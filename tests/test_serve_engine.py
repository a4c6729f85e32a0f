"""Continuous batching: rows joining and leaving a running batch compute what each would alone."""

import numpy as np
import pytest

from tinyllm import backend
from tinyllm.generate import Decoder, generate
from tinyllm.kv_cache import KVCache
from tinyllm.model import GPT, GPTConfig, preset
from tinyllm.serve.engine import Engine, QueueFull, Request, SamplingParams


def _lively(model):
    """Random weights scaled up, so that greedy continuations vary instead of repeating one token."""
    for p in model.parameters():
        p.data *= 8
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _lively(GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=16), seed=3))


def test_append_rows_left_pads_the_shorter_cache_and_select_rows_drops_leading_columns():
    a, b = KVCache(1, 1, 1, 8, 2), KVCache(1, 2, 1, 8, 2)
    a.layers[0].append(*(backend.xp.ones((1, 1, 3, 2)),) * 2)
    b.layers[0].append(*(backend.xp.full((2, 1, 5, 2), 2.0),) * 2)
    a.append_rows(b)
    keys = backend.to_numpy(a.layers[0].keys)[:, 0, :, 0]
    assert a.length == 5 and keys.shape[0] == 3
    np.testing.assert_array_equal(keys[:, :5], [[0, 0, 1, 1, 1], [2, 2, 2, 2, 2], [2, 2, 2, 2, 2]])
    a.select_rows([0], start=2)
    assert a.length == 3
    np.testing.assert_array_equal(backend.to_numpy(a.layers[0].keys)[0, 0, :3, 0], [1, 1, 1])


@pytest.mark.parametrize("config", ["gpt", "llama-nano"])
def test_rows_that_join_and_leave_get_the_logits_they_would_alone(config, model):
    if config != "gpt":
        model = _lively(GPT(preset(config, vocab_size=50, block_size=32), seed=1))
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]
    alone = [generate(model, p, 8, temperature=0) for p in prompts]
    decoder = Decoder(model, [prompts[0]])
    logits = backend.to_numpy(decoder.prefill())
    rows, got = [0], {0: [], 1: [], 2: []}
    for step in range(20):
        if step == 2:                                                   # a shorter prompt joins
            logits = np.concatenate([logits, backend.to_numpy(decoder.add_rows([prompts[1]]))])
            rows.append(1)
        if step == 5:                                                   # a longer one joins later
            logits = np.concatenate([logits, backend.to_numpy(decoder.add_rows([prompts[2]]))])
            rows.append(2)
        tokens = logits.argmax(-1)
        for row, token in zip(rows, tokens):
            got[row].append(int(token))
        keep = [i for i, row in enumerate(rows) if len(got[row]) < 8]   # finished rows leave
        if not keep:
            break
        decoder.select_rows(keep)
        rows = [rows[i] for i in keep]
        logits = backend.to_numpy(decoder.feed([tokens[i] for i in keep]))
    assert [got[i] for i in range(3)] == alone
    assert all(len(set(tokens)) > 2 for tokens in alone)               # the test has teeth


def _run(engine, requests):
    """Drive the engine by hand (no thread): step until every request has finished; tokens per request."""
    pending = list(requests)
    while pending or engine.rows:
        room = engine.max_batch - len(engine.rows)
        admitted = []
        while pending and pending[0].n <= room:
            room -= pending[0].n
            admitted.append(pending.pop(0))
        engine.step(admitted)
    out = []
    for request in requests:
        tokens = [[] for _ in range(request.n)]
        while not request.events.empty():
            event = request.events.get()
            if event[0] == "token":
                tokens[event[1]].append(event[2])
        out.append(tokens)
    return out


def test_engine_batched_decoding_equals_unbatched_generate(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15], [3, 3]]
    lengths = [9, 3, 12, 5, 7]
    requests = [Request(p, SamplingParams(n, temperature=0)) for p, n in zip(prompts, lengths)]
    got = _run(Engine(model, max_batch=3), requests)
    assert [g[0] for g in got] == [generate(model, p, n, temperature=0) for p, n in zip(prompts, lengths)]


def test_engine_sampling_matches_generate_with_the_same_seed_and_n_rows_use_seed_plus_row(model):
    params = dict(temperature=0.9, top_k=20, top_p=0.9, seed=7)
    request = Request([5, 6, 7], SamplingParams(10, **params), n=3)
    other = Request([1, 2], SamplingParams(6, temperature=1.0, seed=1))
    got = _run(Engine(model, max_batch=4), [other, request])
    expected = generate(model, [[5, 6, 7]] * 3, 10, **params)
    assert got[1] == expected
    assert got[0][0] == generate(model, [1, 2], 6, temperature=1.0, seed=1)


def test_engine_stops_at_end_tokens_cancels_rows_and_bounds_its_queue(model):
    first = generate(model, [1, 2, 3], 4, temperature=0)
    request = Request([1, 2, 3], SamplingParams(10, temperature=0, stop_ids=frozenset([first[2]])))
    engine = Engine(model, max_batch=2, max_queue=1)
    engine.step([request])
    while engine.rows:
        engine.step()
    events = [request.events.get() for _ in range(request.events.qsize())]
    assert [e[2] for e in events if e[0] == "token"] == first[:2] and events[-1] == ("done", 0, "stop")
    cancelled = Request([1, 2, 3], SamplingParams(10, temperature=0))
    engine.step([cancelled])
    assert len(engine.rows) == 1
    cancelled.cancel()
    engine.step()
    assert engine.rows == [] and engine.decoder is None
    engine.submit(Request([1], SamplingParams(1)))
    with pytest.raises(QueueFull):
        engine.submit(Request([1], SamplingParams(1)))
    with pytest.raises(ValueError, match="n=3"):
        engine.submit(Request([1], SamplingParams(1), n=3))


def test_logprobs_are_the_models_own(model):
    request = Request([1, 2, 3], SamplingParams(2, temperature=0, logprobs=3))
    engine = Engine(model, max_batch=1)
    engine.step([request])
    token_event = request.events.get()
    logits = backend.to_numpy(model.next_token_logits(backend.asarray(np.array([[1, 2, 3]]))))[0].astype(np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    chosen, top = token_event[3]
    assert chosen == pytest.approx(logp.max(), abs=1e-6) and [t for t, _ in top] == list(np.argsort(-logp)[:3])


def test_a_long_running_batch_whose_padding_fills_the_cache_still_matches_generate():
    """Staggered requests keep the batch busy far longer than the 16-token window. Rows are right-aligned
    and shared padding is dropped whenever rows leave, so the cache is never wider than the longest row's
    context (at most 15 here: prompt + max_tokens - 1), and every row gets its own tokens."""
    import random
    model = _lively(GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=5))
    engine, rng = Engine(model, max_batch=6), random.Random(0)
    prompts = [[rng.randrange(30) for _ in range(rng.randint(1, 12))] for _ in range(60)]
    requests = [Request(p, SamplingParams(rng.randint(2, 16 - len(p)), temperature=0)) for p in prompts]
    pending, widths = list(requests), []
    while pending or engine.rows:
        joining = [pending.pop(0)] if pending and len(engine.rows) < 6 and rng.random() < 0.7 else []
        engine.step(joining)
        widths.append(engine.decoder.cache.length if engine.decoder is not None else 0)
    assert max(widths) == 15 and engine.steps > 80
    for request, prompt in zip(requests, prompts):
        tokens = [e[2] for e in list(request.events.queue) if e[0] == "token"]
        assert tokens == generate(model, prompt, request.params.max_tokens, temperature=0)
