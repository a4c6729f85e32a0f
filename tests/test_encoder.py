"""The encoder: exact GELU, bidirectional attention with padding, post/pre-LN, MLM head, pooler, FD checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinyllm import Tensor, backend, no_grad
from tinyllm import functional as F
from tinyllm.encoder import Encoder, EncoderConfig
from tinyllm.functional.gelu_erf import erfc, gelu_erf
from tinyllm.testing import gradcheck


def randomise(model, rng):
    """Weights large enough that every gradient is far above finite differences' rounding (N(0, 0.02²)
    initial weights make most of them tiny); norm gains around 1."""
    for name, p in model.named_parameters():
        gain = ".ln" in f".{name}" and name.endswith("weight")
        p.data[...] = backend.asarray(rng.normal(1.0 if gain else 0.0, 0.3, p.shape))


def tiny_config(**overrides):
    return EncoderConfig(**{**dict(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=8, mlp_hidden=12),
                            **overrides})


def test_erfc_matches_math_erfc_to_double_precision_and_float32_to_its_own():
    x = np.linspace(-9, 9, 20001)
    exact = np.array([math.erfc(v) for v in x])
    assert np.abs(backend.to_numpy(erfc(backend.asarray(x))) - exact).max() < 2e-15
    x32 = x.astype(np.float32)
    assert erfc(backend.asarray(x32)).dtype == np.float32
    assert np.abs(backend.to_numpy(erfc(backend.asarray(x32))) - np.array([math.erfc(float(v)) for v in x32])).max() < 5e-7


def test_gelu_erf_is_x_times_the_normal_cdf_and_differs_from_the_tanh_form(float64):
    x = np.linspace(-6, 6, 101)
    exact = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    assert np.abs(gelu_erf(Tensor(x)).numpy() - exact).max() < 1e-14
    assert np.abs(F.gelu(Tensor(x)).numpy() - exact).max() > 1e-4         # why BERT needs its own op


def test_gelu_erf_gradient(float64, rng):
    x = Tensor(rng.standard_normal((4, 7)) * 3, requires_grad=True)
    assert gradcheck(gelu_erf, [x]) < 1e-7


def test_bidirectional_self_attention_with_padding_mask_gradient(float64, rng):
    qkv = Tensor(rng.standard_normal((2, 5, 3 * 6)), requires_grad=True)
    mask = np.ones((2, 1, 1, 5), dtype=bool)
    mask[1, ..., 3:] = False
    assert gradcheck(lambda t: F.self_attention(t, 2, causal=False, mask=mask), [qkv]) < 1e-6


def test_attention_sees_the_future_and_ignores_padding():
    model = Encoder(tiny_config(), seed=0).eval()
    ids = np.array([[5, 6, 7, 8, 9]])
    changed = ids.copy()
    changed[0, 4] = 10
    with no_grad():
        first, second = model.hidden_states(ids).numpy(), model.hidden_states(changed).numpy()
        assert not np.allclose(first[0, 0], second[0, 0])                # position 0 reads position 4
        padded = np.array([[5, 6, 7, 1, 2], [5, 6, 7, 3, 4]])
        mask = np.array([[1, 1, 1, 0, 0]] * 2)
        h = model.hidden_states(padded, attention_mask=mask).numpy()
        alone = model.hidden_states(padded[:1, :3]).numpy()
    np.testing.assert_allclose(h[0, :3], h[1, :3], atol=1e-6)            # the padding's ids do not leak
    np.testing.assert_allclose(h[0, :3], alone[0], atol=1e-5)


@pytest.mark.parametrize("norm,act", [("post", "gelu"), ("pre", "gelu_tanh")])
def test_whole_encoder_gradient_with_mlm_loss_types_and_padding(float64, rng, norm, act):
    model = Encoder(tiny_config(norm=norm, activation=act), seed=1)
    randomise(model, rng)
    ids = rng.integers(0, 23, (2, 6))
    types = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]])
    targets = np.full((2, 6), -100)
    targets[0, 2], targets[1, 1], targets[1, 3] = 4, 7, 9
    params = model.parameters()
    names = [n for n, _ in model.named_parameters()]
    assert "mlm.bias" in names and "wtype.weight" in names and ("ln_emb.weight" in names) == (norm == "post")

    def loss(*_):
        return model(ids, targets, types, mask)[1]

    assert gradcheck(loss, params, max_elements=6) < 1e-6


def test_pooler_and_classifier_path_gradient(float64, rng):
    model = Encoder(tiny_config(), seed=2)
    randomise(model, rng)
    ids = rng.integers(0, 23, (3, 5))

    def pooled(*_):
        return model.pooled(model.hidden_states(ids))

    assert gradcheck(pooled, model.parameters(), max_elements=4) < 1e-6


def test_loss_counts_only_the_selected_positions():
    model = Encoder(tiny_config(), seed=3).eval()
    ids = np.array([[5, 6, 7, 8]])
    targets = np.array([[-100, 9, -100, -100]])
    with no_grad():
        logits, loss = model(ids, targets)
    z = logits.numpy()[0, 1].astype(np.float64)
    expected = np.log(np.exp(z - z.max()).sum()) + z.max() - z[9]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="norm must be one of"):
        tiny_config(norm="sandwich")
    with pytest.raises(ValueError, match="divisible by n_head"):
        tiny_config(n_head=3)
    with pytest.raises(ValueError, match="unknown EncoderConfig keys: n_kv_head"):
        EncoderConfig.from_dict({**tiny_config().to_dict(), "n_kv_head": 1})
    with pytest.raises(ValueError, match="longer than the model's block_size 12"):
        Encoder(tiny_config()).hidden_states(np.zeros((1, 13), dtype=np.int64))
