"""Half-precision weight storage: the logits are exactly those of float32 weights rounded once to 16 bits
(so the arithmetic is float32), the weights take about half the memory, and generation works."""

import numpy as np
import pytest

from tinyllm import backend
from tinyllm.generate import generate
from tinyllm.half_weights import store_half, weight_bytes
from tinyllm.model import GPT, preset
from tinyllm.safetensors import bfloat16_bits_to_float32, float32_to_bfloat16_bits


def _rounded(array, dtype):
    array = backend.to_numpy(array)
    if dtype == "float16":
        return backend.xp.asarray(array.astype(np.float16).astype(np.float32))
    return backend.xp.asarray(bfloat16_bits_to_float32(float32_to_bfloat16_bits(array)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_logits_equal_float32_compute_on_rounded_weights(dtype):
    config = preset("llama-nano", vocab_size=50, block_size=32, n_embd=128, n_head=4)
    half, rounded = GPT(config, seed=3).eval(), GPT(config, seed=3).eval()
    for name, p in rounded.named_parameters():
        if name.startswith("blocks.") and p.ndim >= 2:
            p.data = _rounded(p.data, dtype)
    before = weight_bytes(half)
    store_half(half, dtype)
    assert weight_bytes(half) < 0.6 * before                     # the blocks are most of this model
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 20))
    np.testing.assert_array_equal(backend.to_numpy(half(ids)[0].data), backend.to_numpy(rounded(ids)[0].data))
    assert generate(half, [1, 2, 3], 8, temperature=0) == generate(rounded, [1, 2, 3], 8, temperature=0)
    assert half.state_dict().keys() == rounded.state_dict().keys()


def test_float16_overflow_is_refused():
    model = GPT(preset("llama-nano", vocab_size=20, block_size=8))
    model.blocks[0].mlp.up.weight.data[0, 0] = backend.xp.asarray(1e6, dtype=np.float32)
    with pytest.raises(ValueError, match="bfloat16"):
        store_half(model, "float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        store_half(model, "int8")
