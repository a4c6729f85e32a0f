"""GRPO, Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath): PPO without a value
model.

For each prompt the policy samples a *group* of G completions, a reward function scores each one
(for a verifiable task: is the final answer right, is the format right), and each completion's
advantage is its reward relative to its own group:

    A_i = (r_i − mean(r_1 … r_G)) / (std(r_1 … r_G) + eps)          the same A_i for every token of y_i

The group mean replaces PPO's learned value baseline ("how good is this prompt's typical answer"),
so there is no value head to train and no GAE. A group whose completions all score alike has A = 0:
nothing to learn from it (which is why G must be at least 2, and why all-wrong or all-right groups
are wasted samples). Advantages of a group average to 0: the update moves probability from the
group's worse answers to its better.

The loss per token is PPO's clipped surrogate with the KL to the reference as a penalty term (k3, an
unbiased, non-negative estimator; see ``kl.py``), averaged over each completion's tokens, then over
the batch:

    ρ_t = π(y_t)/π_old(y_t)
    L = −mean_i (1/|y_i|) Σ_t [ min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε) A_i) − β · k3_t ]

Each rollout batch is used for ``updates`` passes (μ in the paper); π_old is the policy that
sampled, so ρ = 1 in the first pass. Logged: reward mean and std, each reward function's mean (for a
task with a correctness check, that mean is the sampling accuracy), KL (k3 per token), clip
fraction, completion length.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import backend
from .. import distributed
from ..autograd import Tensor, no_grad
from ..flags import option
from ..train import update_weights
from .kl import kl_k3
from .logprobs import (Completions, completion_log_probs, completion_pass, masked_mean,
                       pack_completions)
from .loop import (backward_in_chunks, check_rollout_rows, gather_rollout, make_optimizer,
                   minibatches, sample_prompt_indices, sample_share, start_run)
from .ppo import check_scores, clip_fraction, clipped_surrogate


def group_advantages(rewards, eps: float = 1e-4) -> np.ndarray:
    """(r − group mean) / (group std + eps) for rewards of shape (P, G): P prompts, G completions
    each."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError("group_advantages needs rewards of shape (prompts, group size), got shape "
                         f"{rewards.shape}")
    if rewards.shape[1] < 2:
        raise ValueError(f"GRPO's group size must be at least 2 (got {rewards.shape[1]}): each "
                         "completion is judged against the other completions of its prompt, and a "
                         "group of one has nothing to compare to")
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return (rewards - mean) / (std + eps)


def grpo_loss(logps: Tensor, old_logps, ref_logps, advantages, mask, clip: float = 0.2,
              beta: float = 0.04):
    """The GRPO loss (module docstring) and its diagnostics.

    logps (B, T) Tensor; old_logps, ref_logps (B, T) and advantages (B,) constants; mask (B, T) of
    the completion tokens. Returns (loss, {"kl": mean k3 per token, "clip_frac": share of clipped
    tokens}).
    """
    xp = backend.xp
    # (B, 1): every token of y_i
    advantages = xp.asarray(advantages).reshape(-1, 1)
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
    """GRPO's settings; each ``option`` is also a flag of ``tinyllm align grpo``
    (``tinyllm.flags``)."""
    steps: int = option(40, "rollout batches")
    prompts_per_step: int = option(16, "prompts per rollout batch")
    group_size: int = option(8, "G: completions per prompt (≥ 2)", "group")
    updates: int = option(1, "passes over each rollout batch (μ; 1 = plain policy gradient)")
    minibatch_size: int | None = option(None, "completions per gradient step (default: the whole "
                                              "batch)")
    chunk_size: int | None = option(16, "completions per forward/backward pass inside a step "
                                        "(bounds memory; the chunks' gradients add up to the "
                                        "step's)")
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip: float = option(0.2, "ε of the clipped ratio", "positive")
    beta: float = option(0.04, "weight of the k3 KL penalty", "positive")
    max_new_tokens: int = 12
    temperature: float = option(1.0, "sampling temperature of the rollouts")
    eval_interval: int = option(10, "steps between held-out evaluations")
    log_interval: int = 1
    seed: int = 0
    zero: int = 0                   # 1: AdamW's moments sharded over the processes (tinyllm.zero)

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"GRPO's group size must be at least 2 (got {self.group_size!r}): "
                             "each completion is judged against the other completions of its "
                             "prompt")
        for name in ("steps", "prompts_per_step", "updates", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GRPOConfig.{name} must be a positive integer, got {value!r}")
        for name in ("minibatch_size", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"GRPOConfig.{name} must be a positive integer or None, got "
                                 f"{value!r}")


@dataclasses.dataclass
class GRPORollout:
    """One rollout batch, whole (every process's share gathered): G completions per prompt (rows
    p·G … p·G + G − 1 share prompt p), their rewards and advantages, per-token log-probs (B, C)."""
    batch: Completions
    completions: list
    finished: list
    rewards: np.ndarray
    parts: dict                      # each reward function's value per completion (RewardFunctions)
    advantages: np.ndarray           # (B,) relative to the completion's group
    old_logps: np.ndarray | None     # log π_old (None with one update: its forward pass has them)
    ref_logps: np.ndarray


def train_grpo(policy, reference, prompts, score_fn, config: GRPOConfig, end_id: int, eval_fn=None,
               progress=True, log=None) -> dict:
    """Run GRPO. ``prompts``: token-id lists; ``score_fn(indices, prompt_ids, completions,
    finished)`` → rewards (N,) or (rewards, {name: per-completion values}) — ``RewardFunctions``
    gives the second form, and its parts are logged as their means; ``eval_fn(policy)`` → dict,
    logged as kind "eval" at step 0, every ``eval_interval`` steps and at the end. Under ``mpiexec``
    every process runs it on its share of each rollout (``rl.loop``); rank 0 logs. Returns
    {"history", "evals", "seconds"}."""
    check_rollout_rows(config.prompts_per_step * config.group_size,
                       "a rollout (--prompts-per-step × --group-size)")
    optimizer = make_optimizer(policy, config.lr, config.weight_decay, zero=config.zero)
    log, bar, run_eval, evals = start_run(policy, reference, config.steps, config.log_interval,
                                          eval_fn, log, progress)
    rng = np.random.default_rng(config.seed)
    history = []
    started = time.perf_counter()
    run_eval(0)
    for step in range(config.steps):
        t0 = time.perf_counter()
        rollout = grpo_rollout(policy, reference, prompts, score_fn, config, end_id, (rng, step))
        stats = grpo_update(policy, optimizer, rollout, config, rng, step)
        record = _grpo_record(step, rollout, stats, config.group_size, time.perf_counter() - t0)
        history.append(record)
        log(record)
        if bar:
            extra = f" | accuracy {record['correct']:.2f}" if "correct" in record else ""
            bar.update(step, f"reward {record['reward']:.3f} ± {record['reward_std']:.2f}{extra} | "
                             f"KL {record['kl']:.4f} | len {record['completion_length']:.1f}")
        if (step + 1) % config.eval_interval == 0 or step + 1 == config.steps:
            run_eval(step + 1)
    return {"history": history, "evals": evals, "seconds": time.perf_counter() - started}


def grpo_rollout(policy, reference, prompts, score_fn, config: GRPOConfig, end_id: int,
                 when) -> GRPORollout:
    """G completions for each of P prompts, scored (each process its share, then gathered; ``when``:
    the generator and the step), with their group-relative advantages and the reference's (and, with
    several updates, the old policy's) log-probs."""
    rng, step = when
    chosen = sample_prompt_indices(rng, len(prompts), config.prompts_per_step)
    index, used, completions, finished = sample_share(
        policy, prompts, np.repeat(chosen, config.group_size), config.max_new_tokens, end_id,
        config.temperature, config.seed * 1_000_003 + step * len(chosen) * config.group_size)
    result = score_fn(index, used, completions, finished)
    rewards, parts = result if isinstance(result, tuple) else (result, {})
    rewards = check_scores(rewards, len(index), "the reward function")
    share = pack_completions(used, completions, pad_id=end_id)
    # With one update over the whole batch, π_old is the policy of that very update: its log-probs
    # come from the update's own forward pass (ρ = 1, the gradient is the plain policy gradient),
    # one pass saved.
    single_pass = config.updates == 1 and not config.minibatch_size
    with no_grad():
        logps = {"ref_logps": completion_log_probs(reference, share)}
        if not single_pass:
            logps["old_logps"] = completion_log_probs(policy, share)
    per_row = {"rewards": list(rewards), "parts": {k: list(v) for k, v in parts.items()}}
    batch, whole, tokens = gather_rollout(used, completions, finished, per_row, logps, end_id)
    rewards = np.asarray(whole["rewards"])
    advantages = group_advantages(rewards.reshape(-1, config.group_size)).reshape(-1)
    return GRPORollout(batch, whole["completions"], whole["finished"], rewards, whole["parts"],
                       advantages, tokens.get("old_logps"), tokens["ref_logps"])


def grpo_update(policy, optimizer, rollout: GRPORollout, config: GRPOConfig, rng,
                step: int) -> dict:
    """``updates`` passes of minibatch steps over the rollout; each step's loss, clip fraction and
    gradient norm by name, and "kl": the k3 KL per token before this step's updates."""
    stats = {"loss": [], "clip_frac": [], "grad_norm": [], "kl": None}
    for _ in range(config.updates):
        for mb in minibatches(rng, len(rollout.batch), config.minibatch_size):
            result = _grpo_minibatch_step(policy, optimizer, rollout, mb, config, step)
            if stats["kl"] is None:
                stats["kl"] = result.pop("kl")
            for name in ("loss", "clip_frac", "grad_norm"):
                stats[name].append(result[name])
    return stats


def _grpo_minibatch_step(policy, optimizer, r: GRPORollout, mb, config: GRPOConfig,
                         step: int) -> dict:
    """One gradient step on the completions ``mb``: this process's share of them, ``chunk_size``
    at a time (the loss is a mean over completions: each weighs 1/len(mb)); the processes add up."""
    chunk_metrics = []                                # (completion tokens, metrics) of each chunk

    def chunk_loss(rows):
        sub = r.batch.rows(rows)
        width = sub.mask.shape[1]
        logps, *_, balance = completion_pass(policy, sub)
        old = backend.to_numpy(logps.data) if r.old_logps is None else r.old_logps[rows, :width]
        loss, metrics = grpo_loss(logps, old, r.ref_logps[rows, :width], r.advantages[rows],
                                  sub.mask, config.clip, config.beta)
        chunk_metrics.append((float(sub.mask.sum()), metrics))
        return balance.added_to(loss)

    mine = mb[distributed.shard(len(mb))]
    loss = backward_in_chunks(mine, config.chunk_size, chunk_loss, total=len(mb))
    sums = [sum(n * m[k] for n, m in chunk_metrics) for k in ("kl", "clip_frac")]
    tokens = sum(n for n, _ in chunk_metrics)
    loss, norm, (tokens, kl, clipped) = update_weights(optimizer, loss, config.grad_clip,
                                                       f"GRPO step {step + 1}", tokens, *sums)
    return {"loss": loss, "grad_norm": norm, "kl": kl / tokens, "clip_frac": clipped / tokens}


def _grpo_record(step: int, r: GRPORollout, stats: dict, group_size: int, seconds: float) -> dict:
    """The logged record of a GRPO step: the rewards (and each reward function's mean), KL, the
    update's means."""
    group_std = r.rewards.reshape(-1, group_size).std(axis=1)
    return {"kind": "train", "step": step + 1, "reward": float(r.rewards.mean()),
            "reward_std": float(r.rewards.std()),
            **{name: float(np.mean(values)) for name, values in r.parts.items()},
            "kl": stats["kl"],
            "clip_frac": float(np.mean(stats["clip_frac"])), "loss": float(np.mean(stats["loss"])),
            "grad_norm": float(np.mean(stats["grad_norm"])),
            "zero_std_groups": float(np.mean(group_std == 0)),
            "completion_length": float(np.mean([len(c) for c in r.completions])),
            "finished": float(np.mean(r.finished)), "seconds": seconds}
