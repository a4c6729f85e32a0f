"""Tests of PPO for RLHF (tinyllm.rl.ppo): GAE against a trajectory worked out by hand, the clipped surrogate's
zero gradient outside the trust region, finite-difference checks of the policy and value losses, the KL
controllers, and a short deterministic run on a task whose right behaviour is known."""

import numpy as np
import pytest

from tinyllm import Tensor
from tinyllm.model import GPT, GPTConfig
from tinyllm.rl.logprobs import frozen_copy
from tinyllm.rl.ppo import (AdaptiveKLController, PolicyWithValue, PPOConfig, explained_variance, gae,
                            ppo_policy_loss, ppo_value_loss, train_ppo, whiten)
from tinyllm.testing import gradcheck
from tinyllm.backend import to_numpy

END, TARGET = 0, 3


def fraction_of_target(index, prompt_ids, completions, finished):
    """The trivial reward: the share of completion tokens (the end token aside) that are TARGET."""
    return np.array([np.mean([t == TARGET for t in c if t != END] or [0.0]) for c in completions])


# ---------------------------------------------------------------------------------------------- GAE

def test_gae_matches_a_hand_computed_trajectory():
    # One row: a 2-token prompt (target 0 is a prompt token, masked) then 3 actions, then padding.
    rewards = np.array([[0.0, 0.1, -0.2, 1.0, 0.0]])
    values = np.array([[9.0, 0.5, 0.3, 0.6, 9.0]])           # the 9s sit where mask = 0 and must not matter
    mask = np.array([[0, 1, 1, 1, 0]])
    gamma, lam = 0.9, 0.8
    # By hand, right to left (V after the last action is 0):
    d3 = 1.0 + gamma * 0.0 - 0.6                             # 0.4
    d2 = -0.2 + gamma * 0.6 - 0.3                            # 0.04
    d1 = 0.1 + gamma * 0.3 - 0.5                             # -0.13
    a3 = d3                                                  # 0.4
    a2 = d2 + gamma * lam * a3                               # 0.328
    a1 = d1 + gamma * lam * a2                               # 0.10616
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(advantages, [[0.0, a1, a2, a3, 0.0]], atol=1e-12)
    np.testing.assert_allclose(returns, [[0.0, a1 + 0.5, a2 + 0.3, a3 + 0.6, 0.0]], atol=1e-12)


def test_gae_with_lambda_one_and_gamma_one_is_return_minus_value():
    rewards = np.array([[0.0, 0.0, 2.0]])
    values = np.array([[0.5, 1.0, 1.5]])
    advantages, returns = gae(rewards, values, np.ones((1, 3)), 1.0, 1.0)
    np.testing.assert_allclose(returns, [[2.0, 2.0, 2.0]])   # the Monte-Carlo return of every step
    np.testing.assert_allclose(advantages, [[1.5, 1.0, 0.5]])


def test_whiten_has_mean_zero_and_std_one_on_the_mask():
    x = np.array([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]])
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    w = whiten(x, mask)
    assert w[mask > 0].mean() == pytest.approx(0.0, abs=1e-9) and w[mask > 0].std() == pytest.approx(1.0, rel=1e-6)
    assert (w[mask == 0] == 0).all()


# ---------------------------------------------------------------------------------------------- losses

def test_clipping_gives_zero_policy_gradient_outside_the_trust_region_on_the_clipped_side(float64):
    eps = 0.2
    # ratios e^(logp − old): 1.5 (A > 0: clipped), 0.6 (A < 0: clipped), 1.5 (A < 0: NOT clipped — the min
    # keeps the unclipped, worse term), 1.1 (inside: gradient flows)
    ratios = np.array([1.5, 0.6, 1.5, 1.1])
    advantages = np.array([1.0, -1.0, -1.0, 1.0])
    old = np.zeros(4)
    logps = Tensor(np.log(ratios), requires_grad=True)
    loss, clip_fraction = ppo_policy_loss(logps, old, advantages, np.ones(4), eps)
    loss.backward()
    grad = to_numpy(logps.grad)
    assert grad[0] == 0.0 and grad[1] == 0.0, f"clipped tokens must get no gradient, got {grad}"
    # d/dlogp of −ρA/4 is −ρA/4
    np.testing.assert_allclose(grad[2:], -ratios[2:] * advantages[2:] / 4, atol=1e-12)
    assert clip_fraction == pytest.approx(0.75)


def test_policy_loss_gradient_float64(float64, rng):
    logps = Tensor(rng.normal(-1.0, 0.1, (3, 5)), requires_grad=True)
    old = logps.numpy() + rng.normal(0, 0.05, (3, 5))        # ratios near 1: inside the clip range
    advantages = rng.standard_normal((3, 5))
    mask = (rng.random((3, 5)) > 0.3).astype(float)
    assert gradcheck(lambda lp: ppo_policy_loss(lp, old, advantages, mask, 0.2)[0], [logps]) < 1e-6


def test_value_loss_gradient_float64_clipped_and_unclipped(float64, rng):
    values = Tensor(rng.standard_normal((2, 6)), requires_grad=True)
    old = values.numpy() + rng.normal(0, 0.5, (2, 6))         # some beyond ±0.2: the clipped branch is used
    returns = rng.standard_normal((2, 6))
    mask = np.ones((2, 6))
    assert gradcheck(lambda v: ppo_value_loss(v, old, returns, mask, 0.2), [values]) < 1e-6
    assert gradcheck(lambda v: ppo_value_loss(v, old, returns, mask, None), [values]) < 1e-6


def test_value_loss_is_half_mean_squared_error_when_unclipped():
    values, returns = np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])
    loss = ppo_value_loss(Tensor(values), values, returns, np.ones((1, 2)), None).item()
    assert loss == pytest.approx(0.5 * (1 + 4) / 2)


def test_explained_variance():
    returns = np.array([[1.0, 2.0, 3.0]])
    assert explained_variance(returns, returns, np.ones((1, 3))) == pytest.approx(1.0)
    assert explained_variance(np.full((1, 3), 2.0), returns, np.ones((1, 3))) == pytest.approx(0.0)


def test_adaptive_kl_controller_moves_towards_the_target():
    controller = AdaptiveKLController(0.1, target=1.0, horizon=100)
    controller.update(kl=5.0, n=10)                            # far above: +20% · 10/100
    assert controller.value == pytest.approx(0.1 * 1.02)
    controller.update(kl=0.0, n=10)                            # far below: −20% · 10/100
    assert controller.value == pytest.approx(0.1 * 1.02 * 0.98)


# ---------------------------------------------------------------------------------------------- end to end

def _tiny(seed=0):
    return GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=seed)


def test_ppo_raises_the_reward_on_a_trivial_task():
    gpt = _tiny()
    reference = frozen_copy(gpt)
    policy = PolicyWithValue.from_gpt(gpt)
    config = PPOConfig(steps=25, rollout_batch=16, minibatch_size=8, ppo_epochs=4, lr=1e-2, kl_coef=0.01, target_kl=None,
                       max_new_tokens=6, eval_interval=100, seed=0)
    history = train_ppo(policy, reference, [[1, 2], [2, 1], [4, 5, 6], [7]], fraction_of_target, config, END,
                        progress=False)["history"]
    first, last = np.mean([h["score"] for h in history[:3]]), np.mean([h["score"] for h in history[-3:]])
    assert last > first + 0.4, f"the share of token {TARGET} should rise: {first:.2f} → {last:.2f}"
    assert all(np.isfinite(h["kl"]) and 0 <= h["clip_frac"] <= 1 for h in history)
    assert {"score", "kl", "clip_frac", "entropy", "value_loss", "explained_variance"} <= set(history[0])


def test_the_value_head_learns_at_its_own_rate():
    # The score depends on the prompt alone, so the value of the state after the prompt can predict it exactly.
    # At the policy's small learning rate a fresh head barely moves in 20 rollouts (AdamW moves each weight by
    # about lr per update); at value_lr it explains most of the returns' variance.
    def prompt_score(index, prompt_ids, completions, finished):
        return np.array([2.0 * p[-1] - 5.0 for p in prompt_ids])

    explained = {}
    for value_lr in (None, 1e-2):
        gpt = _tiny()
        config = PPOConfig(steps=20, rollout_batch=16, minibatch_size=8, lr=1e-4, value_lr=value_lr, target_kl=None,
                           max_new_tokens=1, eval_interval=100, seed=0)
        history = train_ppo(PolicyWithValue.from_gpt(gpt), frozen_copy(gpt), [[1], [2], [4], [5, 6], [7]],
                            prompt_score, config, END, progress=False)["history"]
        explained[value_lr] = np.mean([h["explained_variance"] for h in history[-5:]])
    assert explained[None] < 0.2 and explained[1e-2] > 0.6, explained


def test_ppo_rejects_a_reference_with_another_vocabulary_and_non_finite_scores():
    policy = PolicyWithValue.from_gpt(_tiny())
    other = GPT(GPTConfig(vocab_size=9, block_size=16, n_layer=1, n_head=2, n_embd=16))
    config = PPOConfig(steps=1, rollout_batch=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="vocabulary"):
        train_ppo(policy, other, [[1]], fraction_of_target, config, END, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        train_ppo(policy, frozen_copy(_tiny()), [[1]], lambda *a: np.array([np.nan, 1.0]), config, END, progress=False)
