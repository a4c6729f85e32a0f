"""Tests of the shared alignment pieces (tinyllm.rl.logprobs): the fused log-prob gather, entropy and log σ
(finite differences in float64 and plain-NumPy formulas), packing prompt + completion batches, log-probs of a
model's completions, and the frozen reference."""

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm.model import GPT, GPTConfig
from tinyllm.rl.logprobs import (check_same_vocab, completion_log_probs, fit_to_block, frozen_copy, gather_log_probs,
                                 log_sigmoid, masked_mean, pack_completions, sequence_log_probs, token_entropy)
from tinyllm.testing import gradcheck
from tinyllm.backend import to_numpy
from tinyllm import backend


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def tiny_gpt(vocab=11, seed=0):
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=8), seed=seed)


# ---------------------------------------------------------------------------------------------- fused ops

def test_gather_log_probs_matches_numpy_and_zero_where_ignored(rng):
    z = rng.standard_normal((2, 3, 5))
    t = rng.integers(0, 5, (2, 3))
    t[1, 2] = -100
    out = gather_log_probs(Tensor(z), t).numpy()
    expected = np.take_along_axis(_log_softmax(z), np.maximum(t, 0)[..., None], -1)[..., 0] * (t != -100)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_gather_log_probs_gradient_float64(float64, rng):
    z = Tensor(rng.standard_normal((3, 4, 7)), requires_grad=True)
    t = rng.integers(0, 7, (3, 4))
    t[0, 1] = -100
    assert gradcheck(lambda z: gather_log_probs(z, t), [z]) < 1e-6


def test_gather_log_probs_gradient_is_onehot_minus_p(float64, rng):
    z = rng.standard_normal((1, 6))
    logits = Tensor(z, requires_grad=True)
    gather_log_probs(logits, np.array([2])).sum().backward()
    p = np.exp(_log_softmax(z))
    np.testing.assert_allclose(to_numpy(logits.grad), np.eye(6)[[2]] - p, atol=1e-12)


def test_gather_log_probs_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"target 4 at position 1 is outside \[0, 4\)"):
        gather_log_probs(Tensor(np.zeros((2, 4))), np.array([1, 4]))
    with pytest.raises(ValueError, match="do not match"):
        gather_log_probs(Tensor(np.zeros((2, 4))), np.array([1, 2, 3]))


def test_token_entropy_matches_numpy_and_gradient(float64, rng):
    z = rng.standard_normal((2, 3, 5))
    p = np.exp(_log_softmax(z))
    np.testing.assert_allclose(token_entropy(Tensor(z)).numpy(), -(p * np.log(p)).sum(-1), rtol=1e-12)
    x = Tensor(z, requires_grad=True)
    assert gradcheck(token_entropy, [x]) < 1e-6


def test_log_sigmoid_is_stable_and_its_gradient_checks(float64, rng):
    out = log_sigmoid(Tensor(np.array([-800.0, 0.0, 800.0]))).numpy()
    np.testing.assert_allclose(out, [-800.0, -np.log(2), 0.0], atol=1e-12)
    x = Tensor(rng.standard_normal(12) * 4, requires_grad=True)
    assert gradcheck(log_sigmoid, [x]) < 1e-6


def test_masked_mean_over_all_and_per_row(float64):
    x = Tensor(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    m = np.array([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(1.5)
    np.testing.assert_allclose(masked_mean(x, m, axis=1).numpy(), [1.5, 0.0])   # an empty row gives 0, not nan


# ---------------------------------------------------------------------------------------------- batches

def test_pack_completions_right_pads_and_knows_where_each_completion_is():
    batch = pack_completions([[5, 6, 7], [5]], [[1, 2], [3, 4, 9]], pad_id=0)
    np.testing.assert_array_equal(batch.ids, [[5, 6, 7, 1, 2], [5, 3, 4, 9, 0]])
    np.testing.assert_array_equal(batch.mask, [[1, 1, 0], [1, 1, 1]])
    rows, columns = batch.window()                            # positions predicting completion tokens
    np.testing.assert_array_equal(columns, [[2, 3, 3], [0, 1, 2]])   # row 0's third is clamped (masked)
    np.testing.assert_array_equal(batch.completion_ids[batch.mask > 0], [1, 2, 3, 4, 9])
    sub = batch.rows([0])
    np.testing.assert_array_equal(sub.ids, [[5, 6, 7, 1, 2]])
    np.testing.assert_array_equal(sub.mask, [[1, 1]])


def test_pack_completions_errors():
    with pytest.raises(ValueError, match="at least one"):
        pack_completions([[1]], [[]])
    with pytest.raises(ValueError, match="block_size"):
        pack_completions([[1] * 10], [[2] * 10], block_size=16)


def test_fit_to_block_cuts_the_prompt_start_first_then_the_completion_end():
    assert fit_to_block([1, 2, 3], [4, 5], 5) == ([1, 2, 3], [4, 5], False)
    assert fit_to_block([1, 2, 3, 4], [5, 6], 4) == ([3, 4], [5, 6], True)
    assert fit_to_block([1, 2], [3, 4, 5, 6], 3, min_prompt=1) == ([2], [3, 4], True)


def test_completion_log_probs_equal_the_models_log_softmax_and_ignore_padding():
    model = tiny_gpt()
    prompts, completions = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9]]
    batch = pack_completions(prompts, completions, pad_id=10)
    logps = completion_log_probs(model, batch).numpy()
    assert logps.shape == (2, 3)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids = np.array([p + c])
        logits, _ = model(ids[:, :-1])                      # the row alone, no padding
        lp = _log_softmax(logits.numpy().astype(np.float64))[0]
        expected = [lp[len(p) - 1 + k, token] for k, token in enumerate(c)]
        got = logps[row][batch.mask[row] > 0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"row {row}")
        assert (logps[row][batch.mask[row] == 0] == 0).all()
    np.testing.assert_allclose(sequence_log_probs(model, batch).numpy(), logps.sum(1), rtol=1e-5)


def test_completion_log_probs_gradient_through_a_tiny_gpt(float64):
    model = tiny_gpt()
    batch = pack_completions([[1, 2], [3]], [[4, 5], [6, 7, 8]])
    weight = model.wte.weight
    assert gradcheck(lambda w: sequence_log_probs(model, batch), [weight], max_elements=25) < 1e-5


# ---------------------------------------------------------------------------------------------- models

def test_frozen_copy_does_not_move_with_the_policy():
    policy = tiny_gpt()
    reference = frozen_copy(policy)
    assert all(not p.requires_grad for p in reference.parameters())
    policy.wte.weight.data += 1.0
    assert not np.allclose(policy.wte.weight.numpy(), reference.wte.weight.numpy())


def test_vocabulary_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="vocabulary of 11 tokens but the reference model has 13"):
        check_same_vocab(tiny_gpt(11), tiny_gpt(13))


def test_disable_dropout_silences_model_and_lora_dropout(rng):
    from tinyllm.lora import apply_lora
    from tinyllm.rl.logprobs import disable_dropout

    idx = rng.integers(0, 11, size=(2, 8))
    for model_dropout, lora_dropout in ((0.5, 0.0), (0.0, 0.5)):
        model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=model_dropout), seed=0)
        apply_lora(model, rank=2, dropout=lora_dropout)
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):                       # B starts at 0: give the adapters an effect
                p.data[...] = backend.asarray(rng.normal(0, 0.5, p.shape))
        model.train()
        assert not np.array_equal(model(idx)[0].numpy(), model(idx)[0].numpy())    # random masks: passes differ
        disable_dropout(model)
        assert np.array_equal(model(idx)[0].numpy(), model(idx)[0].numpy())
        assert model.config.dropout == 0.0
