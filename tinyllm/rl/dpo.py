"""Direct Preference Optimization (Rafailov et al. 2023): learn from preference pairs without a
reward model.

RLHF maximises E[r(x, y)] − β·KL(π‖π_ref). Its optimum has a closed form, π*(y|x) ∝
π_ref(y|x)·exp(r(x, y)/β), which read backwards says every policy defines an *implicit reward*

    r̂(x, y) = β · (log π(y|x) − log π_ref(y|x))          (+ a term depending on x alone, which cancels)

Putting r̂ into the Bradley-Terry loss of the reward model gives a loss on the policy itself:

    L = −log σ( β [ (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) ] )      (mean over pairs)

with log π(y) = Σ_t log π(y_t | x, y_<t) over the response tokens (``tinyllm.rl.logprobs``). At the
start π = π_ref, every bracket is 0 and L = −log σ(0) = log 2. The gradient, with z the bracket
times β,

    dL/d log π(c) = −β σ(−z),     dL/d log π(r) = +β σ(−z),

pushes the chosen response up and the rejected one down, weighted by how wrong the implicit reward
model currently is (σ(−z) → 0 once the pair is ordered by a wide margin). β sets how far from π_ref
the policy may
go: small β = a strong push and a long way from the reference.

Logged: the implicit reward margin r̂(c) − r̂(r) and the preference accuracy, the fraction of pairs
with a positive margin (a tie counts ½, so 50% at the start). The reference's log-probs never
change, so they are computed once, before training.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import distributed
from ..autograd import Tensor, array_of, no_grad
from .logprobs import completion_pass, disable_dropout, log_sigmoid, pack_completions
from .reward import StepMetrics, pairwise_accuracy


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
             beta: float = 0.1):
    """The DPO loss and its diagnostics.

    All four are per-pair sequence log-probs (B,): the policy's are Tensors (gradients flow), the
    reference's constants (arrays or Tensors). Returns (loss: scalar Tensor, metrics: dict with
    "margin" — mean implicit reward margin —, "accuracy", "chosen_reward", "rejected_reward").
    """
    if not beta > 0:
        raise ValueError(f"DPO's beta must be > 0 (it scales the implicit reward), got {beta!r}")
    ref_c = array_of(reference_chosen)
    ref_r = array_of(reference_rejected)
    # (B,) r̂(c)
    chosen_reward = (policy_chosen - Tensor(ref_c, dtype=policy_chosen.dtype)) * beta
    # (B,) r̂(r)
    rejected_reward = (policy_rejected - Tensor(ref_r, dtype=policy_chosen.dtype)) * beta
    margin = chosen_reward - rejected_reward
    loss = -log_sigmoid(margin).mean()
    c, r = backend.to_numpy(chosen_reward.data), backend.to_numpy(rejected_reward.data)
    metrics = {"margin": float((c - r).mean()), "accuracy": pairwise_accuracy(c, r),
               "chosen_reward": float(c.mean()), "rejected_reward": float(r.mean())}
    return loss, metrics


def pair_log_probs(model, pairs, index):
    """Sequence log-probs (B,) of the chosen and of the rejected responses of pairs ``index``, one
    pass of 2B rows, and that forward's ``MoEBalance`` (a training loss adds
    ``balance.added_to(loss)``)."""
    prompts = [pairs.prompts[i] for i in index]
    batch = pack_completions(prompts + prompts, [pairs.chosen[i]
                                                 for i in index] + [pairs.rejected[i]
                                                                    for i in index])
    out = completion_pass(model, batch)
    logps = out.logps.sum(axis=1)                             # (2B,)
    n = len(index)
    return logps[:n], logps[n:], out.balance


def all_pair_log_probs(model, pairs, batch_size: int = 16):
    """(chosen (N,), rejected (N,)) sequence log-probs of every pair, in eval mode without
    gradients, as NumPy arrays."""
    chosen, rejected = np.empty(len(pairs)), np.empty(len(pairs))
    order = np.argsort([len(p) + max(len(c), len(r))
                        for p, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected)],
                       kind="stable")
    was_training = model.training
    model.eval()                                              # no dropout in a measurement
    try:
        with no_grad():
            for first in range(0, len(order), batch_size):
                rows = order[first:first + batch_size]
                c, r, _ = pair_log_probs(model, pairs, rows)
                chosen[rows], rejected[rows] = backend.to_numpy(c.data), backend.to_numpy(r.data)
    finally:
        model.train(was_training)
    return chosen, rejected


def evaluate_dpo(policy, pairs, reference_logps, beta: float, batch_size: int = 16) -> dict:
    """On held-out pairs: DPO loss, implicit-reward margin and preference accuracy, and the
    likelihood accuracy — how often the policy itself finds the chosen response more likely than the
    rejected one."""
    chosen, rejected = all_pair_log_probs(policy, pairs, batch_size)
    ref_c, ref_r = reference_logps
    margin = beta * ((chosen - ref_c) - (rejected - ref_r))
    return {"loss": float(np.mean(np.logaddexp(0.0, -margin))), "margin": float(margin.mean()),
            "accuracy": pairwise_accuracy(beta * (chosen - ref_c), beta * (rejected - ref_r)),
            "likelihood_accuracy": pairwise_accuracy(chosen, rejected)}


def train_dpo(policy, reference, train_pairs, val_pairs=None, config=None, beta: float = 0.1,
              progress=True, log=None) -> dict:
    """DPO on ``EncodedPairs`` with the finetuning loop (``fit``: epochs of shuffled pairs, AdamW,
    cosine schedule). ``reference`` is a frozen copy of the starting policy (``frozen_copy``).
    Returns ``fit``'s summary plus "before" (held-out metrics at the start)."""
    from ..finetune.loop import FinetuneConfig, fit
    from .logprobs import check_same_vocab
    check_same_vocab(policy, reference)
    config = config or FinetuneConfig()
    disable_dropout(policy)
    disable_dropout(reference)
    batch = max(config.batch_size, 8)
    ref_train = all_pair_log_probs(reference, train_pairs, batch)
    ref_val = all_pair_log_probs(reference, val_pairs, batch) if val_pairs else None
    step_metrics = StepMetrics(("margin", "accuracy", "chosen_reward", "rejected_reward"))

    def loss_fn(index):
        chosen, rejected, balance = pair_log_probs(policy, train_pairs, index)
        loss, metrics = dpo_loss(chosen, rejected, ref_train[0][index], ref_train[1][index], beta)
        step_metrics.add(index, metrics)
        return balance.added_to(loss)

    def evaluate_fn():
        if not val_pairs:
            return {}
        return {f"val_{k}": v for k, v in evaluate_dpo(policy, val_pairs, ref_val, beta,
                                                       batch).items()}

    before = evaluate_fn()
    if log is not None and before and distributed.is_main():
        log({"kind": "eval", "step": 0, "epoch": 0, **before})
    summary = fit(policy, len(train_pairs), loss_fn, config, evaluate_fn, progress, log,
                  step_metrics=step_metrics)
    summary["before"] = before
    return summary
