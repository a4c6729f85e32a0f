"""Tests of tinyllm.model: the whole GPT's gradient against finite differences, that it can memorise a batch,
its configuration errors and presets, its initialisation, and its parameter count.

The fused ops have their own gradient checks (tests/test_functional.py); here the question is whether they
are wired together correctly — every parameter of the model, including the tied embedding that is used twice,
must get exactly the gradient that nudging it and re-running the forward predicts.
"""

import math

import numpy as np
import pytest

from tinyllm import backend
from tinyllm.autograd import no_grad
from tinyllm.model import GPT, PRESETS, GPTConfig, preset
from tinyllm.optim import AdamW
from tinyllm.testing import gradcheck

TINY = dict(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def randomise(model, rng):
    """Move every parameter away from its initial value.

    At initialisation biases are 0, LayerNorm gains are 1 and attention is almost uniform (scores ~0.02²),
    so some gradient paths are degenerate (a wrong sign on a bias term, or a bug that only shows when
    queries and keys matter, would go unnoticed). Checking at a random point exercises all of them."""
    for name, p in model.named_parameters():
        is_norm_gain = name.split(".")[-2].startswith("ln") and name.endswith("weight")
        p.data[...] = backend.xp.asarray(rng.normal(1.0 if is_norm_gain else 0.0, 0.3, p.shape))


def parameter_gradcheck(model, idx, targets, mask=None, max_elements=40):
    """Finite-difference check of every parameter of ``model`` for the loss on one batch.

    ``gradcheck`` perturbs its inputs in place, so the function it checks can ignore its arguments and just
    run the model: the parameters *are* the inputs."""
    params = dict(model.named_parameters())

    def loss(*_):
        return model(idx, targets, mask=mask)[1]

    return params, gradcheck(loss, list(params.values()), max_elements=max_elements)


# ====================================================================== gradients of the whole model
@pytest.mark.parametrize("tie_weights", [True, False], ids=["tied", "untied"])
def test_every_parameter_gradient_matches_finite_differences(float64, rng, tie_weights):
    model = GPT(GPTConfig(**TINY, tie_weights=tie_weights), seed=0)
    randomise(model, rng)
    idx = rng.integers(0, 50, size=(2, 8))
    targets = rng.integers(0, 50, size=(2, 8))

    params, relative_error = parameter_gradcheck(model, idx, targets)

    # 2 embeddings + 12 per block × 2 + final norm (2) [+ separate output head]
    assert len(params) == 28 + (0 if tie_weights else 1)
    assert ("lm_head.weight" in params) == (not tie_weights)
    assert relative_error < 1e-6, f"whole-model gradient differs from finite differences by {relative_error:.2e}"


def test_gradient_with_a_padding_mask_matches_finite_differences(float64, rng):
    # Row 1 is right-padded: its last 3 positions hold filler tokens that no query may attend to
    # (mask False), and their targets are ignored (-100), so they contribute nothing to the loss.
    model = GPT(GPTConfig(**TINY), seed=0)
    randomise(model, rng)
    idx = rng.integers(0, 50, size=(2, 8))
    targets = rng.integers(0, 50, size=(2, 8))
    real = np.ones((2, 8), dtype=bool)
    real[1, 5:] = False
    targets[~real] = -100
    mask = real[:, None, None, :]                                   # (B, 1, 1, T): which keys may be seen

    _, relative_error = parameter_gradcheck(model, idx, targets, mask=mask)

    assert relative_error < 1e-6, f"masked-model gradient differs from finite differences by {relative_error:.2e}"


def test_padding_is_invisible_to_the_real_tokens(float64, rng):
    # What the mask is for: a padded row computes, at its real positions, exactly what the short row
    # computes alone — whatever filler the padding holds.
    model = GPT(GPTConfig(**TINY), seed=0)
    short = rng.integers(0, 50, size=(1, 5))
    padded = np.concatenate([short, rng.integers(0, 50, size=(1, 3))], axis=1)    # (1, 8)
    mask = np.zeros((1, 1, 1, 8), dtype=bool)
    mask[..., :5] = True

    with no_grad():
        alone = model(short)[0].numpy()                                # (1, 5, V)
        with_padding = model(padded, mask=mask)[0].numpy()[:, :5]      # (1, 5, V)

    np.testing.assert_allclose(with_padding, alone, rtol=1e-10, atol=1e-12,
                               err_msg="padding changed the logits of real tokens")


# ====================================================================== learning
def test_a_tiny_model_memorises_one_batch():
    # The smallest sign of life of a training setup: with the same batch every step, the loss must go to ~0.
    # If it plateaus, something between the loss and the parameters is broken (a missing gradient, a
    # parameter the optimizer never sees, a mask that hides the answer...).
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32), seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 32, size=(4, 16))
    targets = rng.integers(0, 32, size=(4, 16))
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    losses = []
    for _ in range(300):
        _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        model.zero_grad()
        losses.append(loss.item())

    assert losses[0] == pytest.approx(math.log(32), abs=0.1), "an untrained model should guess uniformly"
    assert losses[-1] < 0.05, f"could not memorise one batch: loss {losses[0]:.3f} → {losses[-1]:.3f} in 300 steps"


def test_an_untrained_model_predicts_nearly_uniformly(rng):
    # With weights of std 0.02 every logit is ~0, so the softmax is ~1/V everywhere and the loss is ln(V):
    # the number to compare a first training loss against.
    model = GPT(GPTConfig(**{**TINY, "vocab_size": 500}), seed=0)
    idx = rng.integers(0, 500, size=(4, 8))

    with no_grad():
        _, loss = model(idx, rng.integers(0, 500, size=(4, 8)))

    assert loss.item() == pytest.approx(math.log(500), abs=0.05)


# ====================================================================== shapes and errors
def test_logits_have_one_score_per_vocabulary_entry_per_position(rng):
    model = GPT(GPTConfig(**TINY))

    logits, loss = model(rng.integers(0, 50, size=(3, 5)))

    assert logits.shape == (3, 5, 50)
    assert loss is None


def test_a_sequence_longer_than_the_block_size_is_an_error_naming_its_length():
    model = GPT(GPTConfig(**TINY))

    with pytest.raises(ValueError, match=r"length 9 .*block_size 8"):
        model(np.zeros((1, 9), dtype=np.int64))


def test_n_embd_must_divide_into_heads():
    with pytest.raises(ValueError, match=r"n_embd=10 must be divisible by n_head=3"):
        GPTConfig(n_embd=10, n_head=3)


@pytest.mark.parametrize("field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(field, value):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field} must be a positive integer, got {value}"):
        GPTConfig(**{field: value})


def test_dropout_must_be_a_probability():
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        GPTConfig(dropout=1.5)


def test_from_dict_rejects_unknown_keys_by_name():
    # A typo in a config.json must not silently fall back to a default.
    with pytest.raises(ValueError, match=r"unknown GPTConfig keys: n_embed"):
        GPTConfig.from_dict({"n_layer": 2, "n_embed": 64})


def test_config_round_trips_through_a_dict():
    config = GPTConfig(**TINY, tie_weights=False)

    assert GPTConfig.from_dict(config.to_dict()) == config


# ====================================================================== presets
def test_every_preset_makes_a_valid_config():
    for name in PRESETS:
        config = preset(name)
        assert config.n_embd % config.n_head == 0, name
    assert set(PRESETS) >= {"nano", "micro", "mini", "gpt2", "gpt2-medium"}


def test_preset_fields_can_be_overridden():
    config = preset("mini", vocab_size=4096, block_size=128)

    assert (config.vocab_size, config.block_size) == (4096, 128)
    assert (config.n_layer, config.n_head, config.n_embd) == (6, 6, 192)   # the shape stays the preset's


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of nano, micro"):
        preset("huge")


# ====================================================================== initialisation
def test_initialisation_follows_gpt2():
    # Weights N(0, 0.02²); the two projections that add into the residual stream get 0.02/√(2·n_layer),
    # because 2·n_layer of them are summed into it and variances add; biases 0 and norm gains 1.
    n_layer = 4
    model = GPT(GPTConfig(vocab_size=1000, block_size=128, n_layer=n_layer, n_head=4, n_embd=128), seed=0)
    residual_std = 0.02 / math.sqrt(2 * n_layer)

    for name, p in model.named_parameters():
        values = p.numpy()
        if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            assert values.std() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith("weight") and p.ndim == 2:
            assert values.std() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("bias"):
            assert np.all(values == 0), name
        else:                                                         # LayerNorm gains
            assert np.all(values == 1), name
        if p.ndim == 2:
            assert abs(values.mean()) < 0.002, f"{name} should be centred at 0"


def test_the_same_seed_gives_the_same_weights():
    a, b, c = (GPT(GPTConfig(**TINY), seed=s) for s in (7, 7, 8))

    assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a.parameters(), b.parameters()))
    assert not np.array_equal(a.wte.weight.numpy(), c.wte.weight.numpy())
    # drawn on the host by NumPy and copied to the device: the same weights on every device
    first = np.random.default_rng(7).standard_normal((50, 16), dtype=backend.dtype) * 0.02
    np.testing.assert_array_equal(a.wte.weight.numpy(), first.astype(backend.dtype))


def test_tied_weights_share_one_array():
    tied = GPT(GPTConfig(**TINY))
    untied = GPT(GPTConfig(**TINY, tie_weights=False))

    assert tied.head_weight is tied.wte.weight
    assert untied.num_parameters() - tied.num_parameters() == 50 * 16


# ====================================================================== parameter count
def count_parameters(config: GPTConfig) -> int:
    """The GPT's parameter count from its shapes alone (no arrays allocated)."""
    c, v, t = config.n_embd, config.vocab_size, config.block_size
    bias = config.bias
    layer_norm = c + (c if bias else 0)
    linear = lambda fan_in, fan_out: fan_in * fan_out + (fan_out if bias else 0)
    block = (2 * layer_norm
             + linear(c, 3 * c) + linear(c, c)          # attention: qkv, proj
             + linear(c, 4 * c) + linear(4 * c, c))     # MLP: fc, proj
    head = 0 if config.tie_weights else v * c
    return v * c + t * c + config.n_layer * block + layer_norm + head


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tie_weights", [True, False])
def test_parameter_count_formula_matches_a_real_model(bias, tie_weights):
    config = GPTConfig(**TINY, bias=bias, tie_weights=tie_weights)

    assert count_parameters(config) == GPT(config).num_parameters()


def test_gpt2_preset_has_124M_parameters():
    # The published GPT-2 small count (tied head, learned positions): checked by the formula that the test
    # above validates on real models, so 500 MB of weights need not be allocated.
    assert count_parameters(preset("gpt2")) == 124_439_808
