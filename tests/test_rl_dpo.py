"""Tests of DPO (tinyllm.rl.dpo): the loss is log 2 when the policy is the reference, its gradient checks in
float64 (on log-probs and through a tiny GPT), and a short run on pairs whose preferred response is obvious
raises the held-out preference accuracy."""

import math

import numpy as np
import pytest

from tinyllm import Tensor, backend, parallel
from tinyllm.finetune import FinetuneConfig
from tinyllm.model import GPT, GPTConfig
from tinyllm.rl.data import EncodedPairs
from tinyllm.rl.dpo import all_pair_log_probs, dpo_loss, evaluate_dpo, pair_log_probs, train_dpo
from tinyllm.rl.logprobs import frozen_copy
from tinyllm.testing import gradcheck


def _tiny(seed=0):
    return GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=seed)


def obvious_pairs(n, seed):
    """Random prompts; chosen responses contain token 3 somewhere, rejected ones the same text with 4 instead."""
    rng = np.random.default_rng(seed)
    pairs = EncodedPairs()
    for _ in range(n):
        k = int(rng.integers(1, 4))
        good = [int(x) for x in rng.integers(1, 8, k)]
        good[int(rng.integers(k))] = 3
        pairs.prompts.append([int(x) for x in rng.integers(1, 8, int(rng.integers(1, 4)))])
        pairs.chosen.append(good + [0])
        pairs.rejected.append([4 if x == 3 else x for x in good] + [0])
    return pairs


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    policy = _tiny()
    pairs = obvious_pairs(6, seed=0)
    chosen, rejected, _ = pair_log_probs(policy, pairs, np.arange(6))
    reference = frozen_copy(policy)
    ref_c, ref_r, _ = pair_log_probs(reference, pairs, np.arange(6))
    loss, metrics = dpo_loss(chosen, rejected, ref_c.numpy(), ref_r.numpy(), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["margin"] == pytest.approx(0.0, abs=1e-6) and metrics["accuracy"] == 0.5


def test_dpo_loss_matches_its_formula_and_gradient_float64(float64, rng):
    pc, pr = (Tensor(rng.normal(-5, 1, 4), requires_grad=True) for _ in range(2))
    rc, rr = rng.normal(-5, 1, 4), rng.normal(-5, 1, 4)
    beta = 0.3
    z = beta * ((pc.numpy() - rc) - (pr.numpy() - rr))
    assert dpo_loss(pc, pr, rc, rr, beta)[0].item() == pytest.approx(np.mean(np.log1p(np.exp(-z))), rel=1e-12)
    assert gradcheck(lambda a, b: dpo_loss(a, b, rc, rr, beta)[0], [pc, pr]) < 1e-6


def test_dpo_gradient_through_a_tiny_gpt_float64(float64):
    policy = _tiny()
    pairs = obvious_pairs(3, seed=1)
    ref_c, ref_r = all_pair_log_probs(frozen_copy(policy), pairs)
    ref_c, ref_r = ref_c + 0.3, ref_r - 0.2                   # away from the start, so the gradient is not symmetric

    def loss(weight):
        chosen, rejected, _ = pair_log_probs(policy, pairs, np.arange(3))
        return dpo_loss(chosen, rejected, ref_c, ref_r, 0.5)[0]
    assert gradcheck(loss, [policy.blocks[0].mlp.fc.weight], max_elements=25) < 1e-5


def test_dpo_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(Tensor(np.zeros(2)), Tensor(np.zeros(2)), np.zeros(2), np.zeros(2), beta=0.0)


def test_dpo_raises_held_out_preference_accuracy_on_an_obvious_task():
    policy = _tiny()
    reference = frozen_copy(policy)
    train, val = obvious_pairs(64, seed=2), obvious_pairs(32, seed=3)
    ref_val = all_pair_log_probs(reference, val)
    before = evaluate_dpo(policy, val, ref_val, beta=0.5)
    train_dpo(policy, reference, train, None, FinetuneConfig(epochs=3, batch_size=8, lr=1e-2, warmup=2), beta=0.5,
              progress=False)
    after = evaluate_dpo(policy, val, ref_val, beta=0.5)
    assert before["accuracy"] == 0.5 and before["loss"] == pytest.approx(math.log(2))
    assert after["accuracy"] >= 0.9, f"held-out preference accuracy {before['accuracy']} → {after['accuracy']}"
    assert after["margin"] > 0 and after["loss"] < before["loss"]


def test_dpo_split_over_two_threads_logs_the_whole_steps_metrics(float64, monkeypatch):
    """Each block of pairs reports its own metrics; the step's logged metrics are their means over all pairs."""
    def run():
        records = []
        policy = _tiny()
        train_dpo(policy, frozen_copy(policy), obvious_pairs(24, seed=2), None,
                  FinetuneConfig(epochs=2, batch_size=8, lr=1e-2, warmup=1), beta=0.5, progress=False,
                  log=records.append)
        steps = [r for r in records if r["kind"] == "train"]
        # from the second step: at the first the policy is the reference, every margin is 0 up to rounding,
        # and the accuracy (margin > 0) of such ties flips with the last bit
        return [[r[k] for k in ("loss", "margin", "accuracy", "chosen_reward", "rejected_reward")] for r in steps[1:]]
    monkeypatch.setattr(parallel, "num_threads", 1)
    one = run()
    monkeypatch.setattr(parallel, "num_threads", 2)
    two = run()
    np.testing.assert_allclose(two, one, rtol=1e-9, atol=1e-12)
