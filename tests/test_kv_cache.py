"""The KV cache gives the same logits as recomputing everything: after a prefill, at every decode step,
after the window slides, and for left-padded batches (which must match one prompt at a time).

Exactness is checked in float64 (1e-10) where the only differences are float rounding, and once in float32
(1e-5) to show the default dtype behaves too.
"""

import numpy as np
import pytest

import tinyllm
from tinyllm import backend
from tinyllm.autograd import no_grad
from tinyllm.generate import Decoder, generate
from tinyllm.kv_cache import KVCache
from tinyllm.model import GPT, GPTConfig

uses_float64 = pytest.mark.usefixtures("float64")


def tiny_gpt(block_size=16, vocab_size=40, seed=0, scale=8.0):
    """A small GPT whose weights are scaled up from GPT-2's 0.02 init, so its logits differ clearly from
    token to token (at 0.02 every distribution is nearly uniform and the test would prove little)."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16), seed=seed)
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= scale
    return model.eval()


def host(a):
    return backend.to_numpy(a)


def decode_side_by_side(model, prompts, steps):
    """Run a cached and an uncached Decoder on the same tokens (greedy from the cached logits) and return
    the largest logit difference seen, and how often a row's window slid."""
    cached, uncached = Decoder(model, prompts, use_cache=True), Decoder(model, prompts, use_cache=False)
    a, b = host(cached.prefill()), host(uncached.prefill())
    worst, slides = np.abs(a - b).max(), 0
    for _ in range(steps):
        tokens = a.argmax(axis=-1).tolist()
        before = [len(c) for c in cached.contexts]
        a, b = host(cached.feed(tokens)), host(uncached.feed(tokens))
        slides += sum(len(c) < n for c, n in zip(cached.contexts, before))
        worst = max(worst, np.abs(a - b).max())
    return worst, slides


# ---------------------------------------------------------------------------------------- the cache itself

def test_cache_is_preallocated_per_layer_and_tracks_its_length():
    config = GPTConfig(vocab_size=40, block_size=16, n_layer=3, n_head=2, n_embd=16)
    cache = KVCache.for_model(config, batch_size=2)
    assert len(cache.layers) == 3 and cache.length == 0
    assert all(layer.keys.shape == (2, 2, 16, 8) for layer in cache.layers), "keys must be (B, H, block_size, D)"
    arrays_before = [id(layer.keys) for layer in cache.layers]
    model = tiny_gpt()
    model.next_token_logits(np.zeros((2, 5), dtype=np.int64), cache=cache)
    model.next_token_logits(np.zeros((2, 1), dtype=np.int64), cache=cache)
    assert cache.length == 6
    assert [id(layer.keys) for layer in cache.layers] == arrays_before, "decoding must write into the preallocated arrays"


def test_appending_past_block_size_is_a_clear_error_not_an_index_error():
    model = tiny_gpt(block_size=8)
    cache = KVCache.for_model(model.config)
    model.next_token_logits(np.zeros((1, 8), dtype=np.int64), cache=cache)
    with pytest.raises(ValueError, match="block_size 8"):
        model.next_token_logits(np.zeros((1, 1), dtype=np.int64), cache=cache)


def test_the_cached_path_refuses_to_run_with_gradients_on():
    model = tiny_gpt()
    with pytest.raises(RuntimeError, match="no_grad"):
        model(np.zeros((1, 3), dtype=np.int64), cache=KVCache.for_model(model.config))


@uses_float64
def test_select_rows_reorders_and_repeats_cached_sequences():
    model = tiny_gpt()
    cache = KVCache.for_model(model.config, batch_size=2)
    model.next_token_logits(np.array([[1, 2, 3], [4, 5, 6]]), cache=cache)
    keys_row1 = host(cache.layers[1].keys[1, :, :3]).copy()
    cache.select_rows([1, 1, 0])
    assert cache.batch_size == 3 and cache.length == 3
    np.testing.assert_array_equal(host(cache.layers[1].keys[0, :, :3]), keys_row1)
    np.testing.assert_array_equal(host(cache.layers[1].keys[1, :, :3]), keys_row1)


# ---------------------------------------------------------------------------------- cached == uncached

@uses_float64
def test_prefill_then_one_step_matches_the_full_forward():
    model = tiny_gpt()
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    cache = KVCache.for_model(model.config)
    model.next_token_logits(ids[:, :5], cache=cache)
    model.next_token_logits(ids[:, 5:7], cache=cache)                  # a 2-token chunk: causal inside it
    step = host(model.next_token_logits(ids[:, 7:], cache=cache))
    with no_grad():
        full = host(model(ids)[0].data)[:, -1]
    np.testing.assert_allclose(step, full, rtol=0, atol=1e-10)


@uses_float64
def test_cached_decoding_equals_recomputing_at_every_step_including_slides():
    model = tiny_gpt(block_size=16)
    worst, slides = decode_side_by_side(model, [[5, 3, 7, 1, 2, 9, 11, 4, 8, 6]], steps=30)
    assert slides >= 2, "the run should slide the window at least twice"
    assert worst < 1e-10, f"cached and uncached logits differ by {worst}"


def test_cached_decoding_equals_recomputing_in_float32():
    model = tiny_gpt(block_size=16)
    worst, slides = decode_side_by_side(model, [[5, 3, 7, 1, 2, 9, 11, 4, 8, 6]], steps=20)
    assert slides >= 1 and worst < 1e-5, f"float32: cached and uncached logits differ by {worst}"


@uses_float64
def test_left_padded_batch_equals_uncached_batch_with_slides():
    model = tiny_gpt(block_size=16)
    worst, slides = decode_side_by_side(model, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]], 25)
    assert slides >= 3 and worst < 1e-10, f"batched cached vs uncached differ by {worst} ({slides} slides)"


@uses_float64
def test_position_ids_make_a_left_padded_row_equal_the_row_alone():
    model = tiny_gpt()
    alone = host(model.next_token_logits(np.array([[7, 8, 9]])))
    padded = np.array([[0, 0, 7, 8, 9]])
    mask = np.array([[False, False, True, True, True]])[:, None, None, :]   # (B, 1, 1, T)
    positions = np.array([[0, 0, 0, 1, 2]])
    together = host(model.next_token_logits(padded, mask=mask, positions=positions))
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-10)


@uses_float64
def test_batched_logits_equal_one_prompt_at_a_time_through_slides():
    model = tiny_gpt(block_size=16)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]
    batch = Decoder(model, prompts)
    singles = [Decoder(model, [p]) for p in prompts]
    batch_logits = host(batch.prefill())
    single_logits = [host(d.prefill())[0] for d in singles]
    for _ in range(25):
        for row in range(3):
            np.testing.assert_allclose(batch_logits[row], single_logits[row], rtol=0, atol=1e-10,
                                       err_msg=f"row {row} of the batch differs from that prompt alone")
        tokens = batch_logits.argmax(axis=-1).tolist()
        batch_logits = host(batch.feed(tokens))
        single_logits = [host(d.feed([t]))[0] for d, t in zip(singles, tokens)]


@uses_float64
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_generate_on_a_batch_equals_one_prompt_at_a_time(use_cache):
    model = tiny_gpt(block_size=16)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]
    greedy_batch = generate(model, prompts, 20, temperature=0, use_cache=use_cache)
    assert greedy_batch == [generate(model, p, 20, temperature=0, use_cache=use_cache) for p in prompts]
    sampled = generate(model, prompts, 20, temperature=1.0, top_k=10, seed=7, use_cache=use_cache)
    assert sampled == [generate(model, p, 20, temperature=1.0, top_k=10, seed=7 + row, use_cache=use_cache)
                       for row, p in enumerate(prompts)], "row b of a batch with seed s must equal seed s + b alone"


@uses_float64
def test_stop_ids_end_rows_of_a_batch_independently():
    model = tiny_gpt(block_size=16)
    prompts = [[1, 2, 3], [12, 13], [14, 15, 16, 17, 18]]
    free = generate(model, prompts, 12, temperature=0)
    stop = free[1][3]                                                   # the 4th token of row 1
    stopped = generate(model, prompts, 12, temperature=0, stop_ids=[stop])
    for row in range(3):
        expected = free[row][: free[row].index(stop)] if stop in free[row] else free[row]
        assert stopped[row] == expected, f"row {row}: {stopped[row]} vs {expected}"


def test_the_cache_takes_the_models_dtype_not_the_default():
    with tinyllm.default_dtype("float64"):
        model = tiny_gpt()
    cache = Decoder(model, [[1, 2, 3]]).cache
    assert cache.layers[0].keys.dtype == np.float64
    worst, _ = decode_side_by_side(model, [[1, 2, 3]], steps=5)       # the default dtype is float32 here
    assert worst < 1e-10, f"a float64 model decoded with float32 somewhere: difference {worst}"


def test_cache_is_sized_to_the_context_used_and_grows():
    """A long block_size costs memory only for the positions used; growing (past 256) keeps the results."""
    from tinyllm.model import preset
    model = GPT(preset("llama-nano", vocab_size=50, block_size=4096)).eval()
    cache = KVCache.for_model(model.config)
    assert (cache.capacity, cache.allocated) == (4096, 256)
    prompt = [int(i) for i in np.arange(253) % 50]          # 253 + 4 tokens: the cache grows past 256
    assert generate(model, prompt, 4, temperature=0) == generate(model, prompt, 4, temperature=0, use_cache=False)
    model.next_token_logits(np.array([prompt]), cache=cache)
    model.next_token_logits(np.array([prompt[:10]]), cache=cache)
    assert (cache.length, cache.allocated) == (263, 512)
