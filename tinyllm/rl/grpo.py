"""GRPO, Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath): PPO without a value model.

For each prompt the policy samples a *group* of G completions, a reward function scores each one (for a
verifiable task: is the final answer right, is the format right), and each completion's advantage is its
reward relative to its own group:

    A_i = (r_i − mean(r_1 … r_G)) / (std(r_1 … r_G) + eps)          the same A_i for every token of y_i

The group mean replaces PPO's learned value baseline ("how good is this prompt's typical answer"), so there
is no value head to train and no GAE. A group whose completions all score alike has A = 0: nothing to learn
from it (which is why G must be at least 2, and why all-wrong or all-right groups are wasted samples).
Advantages of a group average to 0: the update moves probability from the group's worse answers to its better.

The loss per token is PPO's clipped surrogate with the KL to the reference as a penalty term (k3, an
unbiased, non-negative estimator; see ``kl.py``), averaged over each completion's tokens, then over the batch:

    ρ_t = π(y_t)/π_old(y_t)
    L = −mean_i (1/|y_i|) Σ_t [ min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε) A_i) − β · k3_t ]

Each rollout batch is used for ``updates`` passes (μ in the paper); π_old is the policy that sampled, so ρ = 1
in the first pass. Logged: reward mean and std, each reward function's mean (for a task with a correctness
check, that mean is the sampling accuracy), KL (k3 per token), clip fraction, completion length.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import backend
from ..autograd import Tensor, no_grad
from .kl import kl_k3
from .logprobs import check_same_vocab, completion_log_probs, disable_dropout, masked_mean, pack_completions
from .loop import (backward_in_chunks, eval_recorder, make_optimizer, minibatches, optimizer_step,
                   sample_prompt_indices)
from .ppo import check_scores, clip_fraction, clipped_surrogate
from .rollout import sample_completions


def group_advantages(rewards, eps: float = 1e-4) -> np.ndarray:
    """(r − group mean) / (group std + eps) for rewards of shape (P, G): P prompts, G completions each."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"group_advantages needs rewards of shape (prompts, group size), got shape {rewards.shape}")
    if rewards.shape[1] < 2:
        raise ValueError(f"GRPO's group size must be at least 2 (got {rewards.shape[1]}): each completion is judged "
                         "against the other completions of its prompt, and a group of one has nothing to compare to")
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return (rewards - mean) / (std + eps)


def grpo_loss(logps: Tensor, old_logps, ref_logps, advantages, mask, clip: float = 0.2, beta: float = 0.04):
    """The GRPO loss (module docstring) and its diagnostics.

    logps (B, T) Tensor; old_logps, ref_logps (B, T) and advantages (B,) constants; mask (B, T) of the
    completion tokens. Returns (loss, {"kl": mean k3 per token, "clip_frac": share of clipped tokens}).
    """
    xp = backend.xp
    advantages = xp.asarray(advantages).reshape(-1, 1)                           # (B, 1): every token of y_i
    surrogate, ratio = clipped_surrogate(logps, old_logps, advantages, clip)
    kl = kl_k3(logps, Tensor(xp.asarray(ref_logps), dtype=logps.dtype))
    per_token = surrogate - beta * kl if beta else surrogate
    loss = -masked_mean(per_token, mask, axis=1).mean()
    m = backend.to_numpy(xp.asarray(mask)) > 0
    metrics = {"kl": float(backend.to_numpy(kl.data)[m].mean()) if m.any() else 0.0,
               "clip_frac": clip_fraction(ratio, mask, clip)}
    return loss, metrics


@dataclasses.dataclass
class GRPOConfig:
    steps: int = 40
    prompts_per_step: int = 16
    group_size: int = 8             # G completions per prompt
    updates: int = 1                # passes over each rollout batch (μ; 1 = plain policy gradient, ρ = 1)
    minibatch_size: int | None = None   # completions per gradient step (None = the whole batch)
    chunk_size: int | None = 16     # completions per forward/backward pass inside a step: bounds the memory,
                                    # not the gradient (the chunks' gradients add up; None = all at once)
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip: float = 0.2
    beta: float = 0.04              # weight of the k3 KL penalty
    max_new_tokens: int = 12
    temperature: float = 1.0
    eval_interval: int = 10
    log_interval: int = 1
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"GRPO's group size must be at least 2 (got {self.group_size!r}): each completion is "
                             "judged against the other completions of its prompt")
        for name in ("steps", "prompts_per_step", "updates", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GRPOConfig.{name} must be a positive integer, got {value!r}")
        for name in ("minibatch_size", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"GRPOConfig.{name} must be a positive integer or None, got {value!r}")


def train_grpo(policy, reference, prompts, score_fn, config: GRPOConfig, end_id: int, eval_fn=None,
               progress=True, log=None) -> dict:
    """Run GRPO. ``prompts``: token-id lists; ``score_fn(indices, prompt_ids, completions, finished)`` →
    rewards (N,) or (rewards, {name: per-completion values}) — ``RewardFunctions`` gives the second form, and
    its parts are logged as their means; ``eval_fn(policy)`` → dict, logged as kind "eval" at step 0, every
    ``eval_interval`` steps and at the end. Returns {"history", "evals", "seconds"}."""
    from ..train import Progress
    check_same_vocab(policy, reference)
    disable_dropout(policy)
    disable_dropout(reference)
    optimizer = make_optimizer(policy, config.lr, config.weight_decay)
    rng = np.random.default_rng(config.seed)
    log = log or (lambda record: None)
    bar = Progress(config.steps, config.log_interval) if progress else None
    history = []
    run_eval, evals = eval_recorder(policy, eval_fn, log, bar)
    started = time.perf_counter()
    G = config.group_size

    run_eval(0)
    for step in range(config.steps):
        t0 = time.perf_counter()
        # ---- rollout: G completions for each of P prompts (rows p·G … p·G + G − 1 share prompt p)
        chosen = sample_prompt_indices(rng, len(prompts), config.prompts_per_step)
        index = np.repeat(chosen, G)
        used, completions, finished = sample_completions(
            policy, [prompts[i] for i in index], config.max_new_tokens, end_id, config.temperature,
            seed=config.seed * 1_000_003 + step * len(index))
        result = score_fn(index, used, completions, finished)
        rewards, parts = result if isinstance(result, tuple) else (result, {})
        rewards = check_scores(rewards, len(index), "the reward function")
        advantages = group_advantages(rewards.reshape(-1, G)).reshape(-1)
        batch = pack_completions(used, completions, pad_id=end_id)
        # With one update over the whole batch, π_old is the policy of that very update: its log-probs come
        # from the update's own forward pass (ρ = 1, the gradient is the plain policy gradient), one pass saved.
        single_pass = config.updates == 1 and not config.minibatch_size
        with no_grad():
            old_logps = None if single_pass else backend.to_numpy(completion_log_probs(policy, batch).data).astype(np.float64)
            ref_logps = backend.to_numpy(completion_log_probs(reference, batch).data).astype(np.float64)
        kl = None

        # ---- update
        stats = {"loss": [], "clip_frac": [], "grad_norm": []}
        for update in range(config.updates):
            for mb in minibatches(rng, len(batch), config.minibatch_size):
                chunk_metrics = []                            # (completion tokens, metrics) of each chunk

                def chunk_loss(rows):
                    sub = batch.rows(rows)
                    width = sub.mask.shape[1]
                    logps = completion_log_probs(policy, sub)
                    old = backend.to_numpy(logps.data) if single_pass else old_logps[rows, :width]
                    loss, metrics = grpo_loss(logps, old, ref_logps[rows, :width], advantages[rows], sub.mask,
                                              config.clip, config.beta)
                    chunk_metrics.append((float(sub.mask.sum()), metrics))
                    return policy.add_moe_aux_loss(loss)

                loss = backward_in_chunks(mb, config.chunk_size, chunk_loss)
                tokens = sum(n for n, _ in chunk_metrics)
                metrics = {k: sum(n * m[k] for n, m in chunk_metrics) / tokens for k in ("kl", "clip_frac")}
                if kl is None:                                # k3 per token before this step's updates
                    kl = metrics["kl"]
                stats["grad_norm"].append(optimizer_step(optimizer, loss, config.grad_clip, f"GRPO step {step + 1}"))
                stats["loss"].append(loss)
                stats["clip_frac"].append(metrics["clip_frac"])
        group_std = rewards.reshape(-1, G).std(axis=1)
        record = {"kind": "train", "step": step + 1, "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
                  **{name: float(np.mean(values)) for name, values in parts.items()},
                  "kl": kl,
                  "clip_frac": float(np.mean(stats["clip_frac"])), "loss": float(np.mean(stats["loss"])),
                  "grad_norm": float(np.mean(stats["grad_norm"])),
                  "zero_std_groups": float(np.mean(group_std == 0)),
                  "completion_length": float(np.mean([len(c) for c in completions])),
                  "finished": float(np.mean(finished)), "seconds": time.perf_counter() - t0}
        history.append(record)
        log(record)
        if bar:
            extra = f" | accuracy {record['correct']:.2f}" if "correct" in record else ""
            bar.update(step, f"reward {record['reward']:.3f} ± {record['reward_std']:.2f}{extra} | KL {record['kl']:.4f} | "
                             f"len {record['completion_length']:.1f}")
        if (step + 1) % config.eval_interval == 0 or step + 1 == config.steps:
            run_eval(step + 1)
    return {"history": history, "evals": evals, "seconds": time.perf_counter() - started}
