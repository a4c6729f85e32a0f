"""Tests of GRPO (tinyllm.rl.grpo) and its verifiable tasks (tinyllm.rl.tasks): group advantages, the loss with
its KL term in float64, the clipped side's zero gradient, a short run on a task whose right behaviour is known,
and the errors a user can run into (group of one, non-finite rewards)."""

import numpy as np
import pytest

from tinyllm import Tensor, backend
from tinyllm.model import GPT, GPTConfig
from tinyllm.rl.grpo import GRPOConfig, group_advantages, grpo_loss, train_grpo
from tinyllm.rl.logprobs import frozen_copy
from tinyllm.rl.rollout import Rollout
from tinyllm.rl.tasks import (RewardFunctions, correctness_reward, format_reward, is_correct, verifiable_problems)
from tinyllm.testing import gradcheck
from tinyllm.backend import to_numpy

END, TARGET = 0, 3


def fraction_of_target(index, prompt_ids, completions, finished):
    return np.array([np.mean([t == TARGET for t in c if t != END] or [0.0]) for c in completions])


def _tiny(seed=0):
    return GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=seed)


# ---------------------------------------------------------------------------------------------- advantages

def test_group_advantages_have_mean_zero_and_unit_scale_within_each_group(rng):
    rewards = rng.random((5, 6))
    advantages = group_advantages(rewards)
    np.testing.assert_allclose(advantages.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(advantages.std(axis=1), 1.0, rtol=1e-3)     # std/(std + 1e-4)
    assert (np.argsort(advantages, axis=1) == np.argsort(rewards, axis=1)).all(), "order within a group is kept"


def test_a_group_whose_rewards_are_all_equal_teaches_nothing():
    np.testing.assert_array_equal(group_advantages(np.array([[1.0, 1.0, 1.0]])), [[0.0, 0.0, 0.0]])


def test_group_size_below_two_is_a_clear_error():
    with pytest.raises(ValueError, match="group size must be at least 2"):
        group_advantages(np.ones((4, 1)))
    with pytest.raises(ValueError, match="group size must be at least 2"):
        GRPOConfig(group_size=1)


# ---------------------------------------------------------------------------------------------- the loss

def test_grpo_loss_gradient_with_its_kl_term_float64(float64, rng):
    logps = Tensor(rng.normal(-1.0, 0.3, (4, 5)), requires_grad=True)
    old = logps.numpy() + rng.normal(0, 0.05, (4, 5))
    ref = logps.numpy() + rng.normal(0, 0.5, (4, 5))
    advantages = rng.standard_normal(4)
    mask = (rng.random((4, 5)) > 0.3).astype(float)
    mask[:, 0] = 1
    assert gradcheck(lambda lp: grpo_loss(lp, old, ref, advantages, mask, 0.2, beta=0.1)[0], [logps]) < 1e-6


def test_grpo_loss_at_the_start_is_minus_the_mean_advantage_and_kl_is_zero(float64, rng):
    logps = rng.normal(-1.0, 0.3, (3, 4))
    advantages = np.array([1.0, -0.5, 0.25])
    loss, metrics = grpo_loss(Tensor(logps), logps, logps, advantages, np.ones((3, 4)), 0.2, 0.1)
    assert loss.item() == pytest.approx(-advantages.mean()) and metrics["kl"] == pytest.approx(0.0, abs=1e-12)


def test_grpo_clipped_tokens_get_only_the_kl_gradient(float64):
    # ratio 1.5 with A > 0: the surrogate is clipped, so with β = 0 the gradient is exactly 0.
    logps = Tensor(np.log([[1.5, 1.0]]), requires_grad=True)
    loss, _ = grpo_loss(logps, np.zeros((1, 2)), np.zeros((1, 2)), np.array([1.0]), np.array([[1.0, 0.0]]), 0.2, 0.0)
    loss.backward()
    np.testing.assert_array_equal(to_numpy(logps.grad), [[0.0, 0.0]])


# ---------------------------------------------------------------------------------------------- end to end

def test_grpo_raises_the_reward_on_a_trivial_task():
    policy = _tiny()
    config = GRPOConfig(steps=15, prompts_per_step=4, group_size=6, updates=2, lr=1e-2, beta=0.01, max_new_tokens=6,
                        eval_interval=100, seed=0)
    history = train_grpo(policy, frozen_copy(policy), [[1, 2], [2, 1], [4, 5, 6], [7]], fraction_of_target, config,
                         END, progress=False)["history"]
    first, last = np.mean([h["reward"] for h in history[:3]]), np.mean([h["reward"] for h in history[-3:]])
    assert last > first + 0.4, f"the share of token {TARGET} should rise: {first:.2f} → {last:.2f}"
    assert all(h["kl"] >= 0 for h in history) and {"reward_std", "completion_length", "clip_frac"} <= set(history[0])


def test_grpo_in_chunks_takes_the_same_steps_as_all_at_once(float64):
    # Chunks bound the memory of a step's forward/backward passes; the gradient, and so the step, is the same.
    runs = []
    for chunk_size in (None, 5):
        policy = _tiny()
        config = GRPOConfig(steps=2, prompts_per_step=4, group_size=4, lr=1e-2, max_new_tokens=5, eval_interval=100,
                            chunk_size=chunk_size)
        history = train_grpo(policy, frozen_copy(policy), [[1, 2], [2, 1], [4, 5, 6], [7]], fraction_of_target,
                             config, END, progress=False)["history"]
        runs.append((policy, history))
    (whole, whole_history), (chunked, chunked_history) = runs
    for a, b in zip(whole.parameters(), chunked.parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)
    for key in ("loss", "kl", "clip_frac", "grad_norm"):
        assert chunked_history[-1][key] == pytest.approx(whole_history[-1][key], rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer or None"):
        GRPOConfig(chunk_size=0)


@pytest.mark.skipif(backend.device == "cuda", reason="tracemalloc sees host memory; on a GPU the arrays are in "
                    "device memory")
def test_grpo_in_chunks_keeps_a_fraction_of_the_memory():
    import tracemalloc
    peaks = []
    for chunk_size in (None, 4):
        policy = GPT(GPTConfig(vocab_size=8, block_size=64, n_layer=2, n_head=2, n_embd=32), seed=0)
        reference = frozen_copy(policy)
        config = GRPOConfig(steps=1, prompts_per_step=8, group_size=4, max_new_tokens=8, chunk_size=chunk_size)
        tracemalloc.start()
        try:
            train_grpo(policy, reference, [[1, 2, 4, 5] * 10] * 8, fraction_of_target, config, END, progress=False)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < 0.5 * peaks[0], f"peak traced memory {peaks[0]:,} bytes at once, {peaks[1]:,} in chunks of 4"


def test_grpo_reports_a_reward_function_that_returns_nan():
    class Decoder:
        def decode(self, ids):
            return " ".join(map(str, ids))

    rewards = RewardFunctions([("broken", lambda rollout: float("nan"), 1.0)], Decoder(), [{"output": "1"}], END)
    config = GRPOConfig(steps=1, prompts_per_step=1, group_size=2, max_new_tokens=2)
    policy = _tiny()
    with pytest.raises(ValueError, match="reward function 'broken' returned nan"):
        train_grpo(policy, frozen_copy(policy), [[1]], rewards, config, END, progress=False)


# ---------------------------------------------------------------------------------------------- tasks

def test_correctness_and_format_rewards():
    record = {"instruction": "Add the two numbers.", "input": "2 + 3", "output": "5"}
    assert correctness_reward(Rollout("", "5", True, record)) == 1.0
    assert correctness_reward(Rollout("", "it is 5", True, record)) == 1.0       # the last integer counts
    assert correctness_reward(Rollout("", "6", True, record)) == 0.0
    assert format_reward(Rollout("", "5", True, record)) == 1.0
    assert format_reward(Rollout("", "it is 5", True, record)) == 0.0            # not only the answer
    assert format_reward(Rollout("", "5", False, record)) == 0.0                 # never stopped
    words = {"output": "apple river"}
    assert is_correct(words, " Apple  river") and not is_correct(words, "river apple")


def test_verifiable_problems_do_not_leak_from_train_to_test():
    train, test = verifiable_problems("arithmetic", 100, 40, seed=1)
    assert len(train) == 100 and len(test) == 40
    assert not {(r["instruction"], r["input"]) for r in train} & {(r["instruction"], r["input"]) for r in test}
    with pytest.raises(ValueError, match="unknown task"):
        verifiable_problems("calculus")
