"""PPO for RLHF (Ziegler et al. 2019, Ouyang et al. 2022): make a reward model's score go up, a
little at a time.

The policy writes a completion y for a prompt x, token by token: each token is an *action*, the text
so far the *state*. The reward is the reward model's score on the finished text, given at the last
token, minus a per-token KL penalty that keeps the policy near the reference π_ref (the model we
started from):

    r_t = −β · (log π_old(y_t) − log π_ref(y_t))   + [t = last] · score(x, y)           (k1, see ``kl.py``)

(score minus a fixed penalty when the completion ran out of tokens before writing the end token: the
reward model never saw such texts, and their scores are the easiest to exploit.)

A *value head* (Linear(C, 1) on the policy's hidden states; by default its loss does not flow back
into the transformer, see ``PolicyWithValue.logprobs_and_values``) predicts V(s_t), the reward still
to come. It starts knowing nothing and must catch up with the scores' scale within a few rollouts,
while the policy should move slowly: AdamW moves each weight by about its learning rate per update,
so the head has its own, larger one (``value_lr``). Generalised advantage estimation (Schulman et
al. 2016) turns rewards and values into how much better each action was than expected:

    δ_t = r_t + γ V(s_{t+1}) − V(s_t)        A_t = δ_t + γλ A_{t+1}        (V = 0 and A = 0 after the end)
    returns R_t = A_t + V(s_t)               (the value head's regression target)

λ trades bias (λ = 0: trust V, one-step TD) for variance (λ = 1: the Monte-Carlo return minus V).
The advantages are whitened (mean 0, std 1 over the batch's tokens) before the update.

The update runs several epochs of minibatches over one rollout batch. The ratio ρ =
π(y_t)/π_old(y_t) of the policy now to the one that sampled is 1 at the first minibatch and drifts;
the *clipped surrogate*

    L_policy = −mean_t min(ρ A, clip(ρ, 1−ε, 1+ε) A)

stops following a token once ρ has left [1−ε, 1+ε] in the direction its advantage pushes (for A > 0
above 1+ε, for A < 0 below 1−ε: there the min picks the clipped, constant term and the gradient is
0). The value loss is clipped the same way around the old values, and an entropy bonus keeps the
policy from collapsing:

    L_value = ½ mean_t max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²)
    L = L_policy + c_v · L_value − c_H · mean_t H(π(·|s_t))

β is fixed, or adapted towards a target KL (Ziegler et al.): β ← β·(1 + clip(KL/target − 1,
±0.2)·n/horizon). Logged every step: mean score, KL (per sequence, k1), β, clip fraction, entropy,
value loss, explained variance 1 − Var(R − V)/Var(R) of the old values, completion length.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import backend
from .. import distributed
from ..autograd import Tensor, maximum, minimum, no_grad
from ..flags import option
from ..model import GPT
from ..nn import Linear, init_rng
from ..train import update_weights
from .logprobs import (Completions, completion_log_probs, completion_pass, masked_mean,
                       pack_completions, token_entropy)
from .loop import (check_rollout_rows, gather_rollout, make_optimizer, minibatches,
                   sample_prompt_indices, sample_share, start_run)


# --------------------------------------------------------------------------------------- the model

class PolicyWithValue(GPT):
    """A GPT (the policy) plus ``value_head`` = Linear(C, 1) reading the same hidden states."""

    @classmethod
    def from_gpt(cls, gpt: GPT, seed: int = 0) -> "PolicyWithValue":
        """Shares ``gpt``'s parameters (no copy); adds a value head with small weights (V ≈ 0 at
        first)."""
        model = cls.__new__(cls)
        model.__dict__.update({k: v for k, v in vars(gpt).items() if k not in ("score_head",
                                                                               "classifier")})
        model.value_head = Linear(gpt.config.n_embd, 1, True, 0.02, init_rng(seed + 2))
        return model

    def as_gpt(self) -> GPT:
        """A plain GPT sharing this policy's parameters, without the value head (to save or
        generate)."""
        gpt = GPT.__new__(GPT)
        gpt.__dict__.update({k: v for k, v in vars(self).items() if k != "value_head"})
        return gpt

    def logprobs_and_values(self, batch: Completions, value_trains_trunk: bool = False):
        """(log-probs (B, C), values (B, C), logits (B, C, V), ``MoEBalance``) of a packed batch's
        completion window, one forward pass. values[:, j] = V(prompt + the first j completion
        tokens): the state in which completion token j is chosen.

        ``value_trains_trunk`` False (the default) stops the value loss at the hidden states: the
        head learns on the policy's features but does not move them. A reward model's scores differ
        far more between prompts (one task scores ~4, another ~−4) than between answers to one
        prompt, so a fresh value head is wrong by several units at first; sharing those errors'
        gradients with the transformer would disturb the policy while the head catches up."""
        out = completion_pass(self, batch)
        features = out.hidden if value_trains_trunk else out.hidden.detach()
        # (B, C)
        values = self.value_head(features).reshape(out.hidden.shape[0], out.hidden.shape[1])
        return out.logps, values, out.logits, out.balance


# --------------------------------------------------------------------------------------- the pieces

def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """(advantages, returns), each (B, T), by the recursion in the module docstring, right to left.

    rewards, values, mask: (B, T) arrays over target positions; a row's actions are its contiguous
    run of mask = 1. Past a row's last action the next value and advantage are 0 (the episode is
    over)."""
    rewards, values, mask = (np.asarray(a, dtype=np.float64) for a in (rewards, values, mask))
    advantages = np.zeros_like(rewards)
    next_value = np.zeros(rewards.shape[0])
    next_advantage = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        next_advantage = advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x, mask, eps: float = 1e-8):
    """(x − mean) / (std + eps) over the positions where mask is 1; 0 elsewhere."""
    x, mask = np.asarray(x, dtype=np.float64), np.asarray(mask, dtype=np.float64)
    n = max(mask.sum(), 1.0)
    mean = (x * mask).sum() / n
    std = np.sqrt((((x - mean) * mask) ** 2).sum() / n)
    return (x - mean) / (std + eps) * mask


def clipped_surrogate(logps: Tensor, old_logps, advantages, clip: float):
    """Per token min(ρA, clip(ρ, 1−ε, 1+ε)A) with ρ = exp(logp − old logp): PPO's objective, and
    GRPO's. ``advantages`` broadcast against ``logps``. Returns (the surrogate Tensor, ρ)."""
    xp = backend.xp
    old = Tensor(xp.asarray(old_logps), dtype=logps.dtype)
    adv = Tensor(xp.asarray(advantages), dtype=logps.dtype)
    ratio = (logps - old).exp()
    return minimum(ratio * adv, ratio.clip(1.0 - clip, 1.0 + clip) * adv), ratio


def clip_fraction(ratio: Tensor, mask, clip: float) -> float:
    """The share of the masked tokens whose ratio lies outside [1−ε, 1+ε] (those the clip
    stopped)."""
    r = backend.to_numpy(ratio.data)[backend.to_numpy(backend.xp.asarray(mask)) > 0]
    return float(np.mean((r < 1.0 - clip) | (r > 1.0 + clip))) if r.size else 0.0


def ppo_policy_loss(logps: Tensor, old_logps, advantages, mask, clip: float = 0.2):
    """The clipped surrogate's −masked mean. Returns (loss, clip fraction)."""
    surrogate, ratio = clipped_surrogate(logps, old_logps, advantages, clip)
    return -masked_mean(surrogate, mask), clip_fraction(ratio, mask, clip)


def ppo_value_loss(values: Tensor, old_values, returns, mask, clip: float | None = 0.2) -> Tensor:
    """½ masked mean of max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²); ``clip`` None =
    unclipped."""
    xp = backend.xp
    old = Tensor(xp.asarray(old_values), dtype=values.dtype)
    target = Tensor(xp.asarray(returns), dtype=values.dtype)
    error = values - target
    squared = error * error
    if clip is not None:
        clipped = old + (values - old).clip(-clip, clip) - target
        squared = maximum(squared, clipped * clipped)
    return 0.5 * masked_mean(squared, mask)


def explained_variance(values, returns, mask) -> float:
    """1 − Var(R − V) / Var(R) over masked positions: 1 = perfect values, 0 = no better than a
    constant."""
    m = np.asarray(mask) > 0
    v, r = np.asarray(values)[m], np.asarray(returns)[m]
    var = r.var()
    return float(1.0 - (r - v).var() / var) if var > 0 else float("nan")


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, kl: float, n: int) -> None:
        pass


class AdaptiveKLController:
    """β ← β · (1 + clip(KL/target − 1, −0.2, 0.2) · n / horizon)  (Ziegler et al. 2019): β grows
    while the measured KL is above the target and shrinks while it is below, by at most 20% per
    horizon of samples."""

    def __init__(self, value: float, target: float, horizon: int = 100):
        if not target > 0:
            raise ValueError(f"the target KL must be > 0, got {target!r}")
        self.value, self.target, self.horizon = float(value), float(target), int(horizon)

    def update(self, kl: float, n: int) -> None:
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n / self.horizon


# --------------------------------------------------------------------------------------- training

@dataclasses.dataclass
class PPOConfig:
    """PPO's settings; each ``option`` is also a flag of ``tinyllm align ppo``
    (``tinyllm.flags``)."""
    steps: int = option(40, "rollout batches")
    rollout_batch: int = option(32, "prompts (one completion each) per rollout")
    minibatch_size: int = option(8, "completions per gradient step")
    ppo_epochs: int = option(4, "passes over each rollout batch")
    lr: float = 3e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip: float = option(0.2, "ε: the ratio π/π_old is clipped to [1−ε, 1+ε]", "positive")
    value_clip: float = option(0.2, "ε of the clipped value loss (0 = unclipped)")
    vf_coef: float = option(0.1, "weight of the value loss")
    # None: lr
    value_lr: float | None = option(1e-3, "the value head's own learning rate (it starts from "
                                          "scratch, so faster than the policy's)", "positive")
    value_trains_trunk: bool = option(False, "let the value loss's gradient flow into the shared "
                                             "transformer (default: value head only)")
    ent_coef: float = option(0.0, "weight of the entropy bonus")
    kl_coef: float = option(0.3, "β of the per-token KL penalty (initial value if adaptive)")
    target_kl: float | None = option(1.0, "adapt β towards this KL per completion, in nats "
                                          "(0 = keep β fixed)")
    kl_horizon: int = option(100, "adaptive β: completions over which it may change by ±20% "
                                  "(Ziegler et al. use 10,000 for long runs)")
    gamma: float = option(1.0, "discount γ of GAE", "unit")
    lam: float = option(0.95, "λ of GAE", "unit")
    max_new_tokens: int = option(16, "longest completion")
    missing_end_penalty: float = option(1.0, "subtracted from the score of a completion that "
                                             "never wrote the end token")
    temperature: float = option(1.0, "sampling temperature of the rollouts")
    eval_interval: int = option(10, "steps between held-out evaluations")
    log_interval: int = 1
    seed: int = 0
    zero: int = 0                   # 1: AdamW's moments sharded over the processes (tinyllm.zero)

    def __post_init__(self):
        for name in ("steps", "rollout_batch", "minibatch_size", "ppo_epochs", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PPOConfig.{name} must be a positive integer, got {value!r}")


def check_scores(scores, n: int, what: str = "the score function") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape != (n,):
        raise ValueError(f"{what} returned {scores.size} scores for {n} completions")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"{what} returned a non-finite value ({scores[bad[0]]}) for completion "
                         f"{int(bad[0])} ({bad.size} of {n} are non-finite); rewards must be "
                         "finite numbers")
    return scores


@dataclasses.dataclass
class PPORollout:
    """One rollout batch, whole (every process's share gathered) and turned into PPO's targets:
    per-token arrays (B, C_max) over the completion tokens of ``batch`` (0 past each one's end)."""
    batch: Completions
    completions: list
    finished: list
    scores: np.ndarray           # the reward model's scores, minus the missing-end penalty
    old_logps: np.ndarray        # log π_old of each token: the policy that sampled
    old_values: np.ndarray       # V_old of each token's state
    kl_tokens: np.ndarray        # k1 = log π_old − log π_ref of each token
    advantages: np.ndarray       # GAE, whitened over all the batch's tokens
    returns: np.ndarray          # the value head's targets


def train_ppo(policy: PolicyWithValue, reference, prompts, score_fn, config: PPOConfig, end_id: int,
              eval_fn=None, progress=True, log=None) -> dict:
    """Run PPO. ``prompts``: token-id lists; ``score_fn(indices, prompt_ids, completions,
    finished)`` → scores (N,) (e.g. ``reward_model_scorer``); ``reference``: a frozen copy of the
    starting policy; ``eval_fn(policy)`` → dict, logged as kind "eval" at step 0, every
    ``eval_interval`` steps and at the end. Under ``mpiexec`` every process runs it on its share of
    each rollout (``rl.loop``); rank 0 logs. Returns {"history": per-step records, "evals",
    "seconds"}."""
    check_rollout_rows(config.rollout_batch, "a rollout (--rollout-batch)")
    kl_ctl = (AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
              if config.target_kl else FixedKLController(config.kl_coef))
    optimizer = make_optimizer(policy, config.lr, config.weight_decay,
                               (policy.value_head, config.value_lr or config.lr), config.zero)
    log, bar, run_eval, evals = start_run(policy, reference, config.steps, config.log_interval,
                                          eval_fn, log, progress)
    rng = np.random.default_rng(config.seed)
    history = []
    started = time.perf_counter()
    run_eval(0)
    for step in range(config.steps):
        t0 = time.perf_counter()
        rollout = ppo_rollout(policy, reference, prompts, score_fn, config, end_id, (rng, step),
                              kl_ctl.value)
        stats = ppo_update(policy, optimizer, rollout, config, rng, step)
        record = _ppo_record(step, rollout, stats, kl_ctl.value, time.perf_counter() - t0)
        kl_ctl.update(record["kl"], len(rollout.batch))
        history.append(record)
        log(record)
        if bar:
            bar.update(step, f"score {record['score']:.3f} | KL {record['kl']:.3f} | "
                             f"clip {record['clip_frac']:.2f} | H {record['entropy']:.2f} | "
                             f"EV {record['explained_variance']:.2f}")
        if (step + 1) % config.eval_interval == 0 or step + 1 == config.steps:
            run_eval(step + 1)
    return {"history": history, "evals": evals, "seconds": time.perf_counter() - started}


def ppo_rollout(policy, reference, prompts, score_fn, config: PPOConfig, end_id: int, when,
                kl_coef: float) -> PPORollout:
    """Sample and score one rollout batch (each process its share, then gathered; ``when``: the
    generator and the step), and compute the rewards, GAE advantages and returns over all of it."""
    rng, step = when
    index = sample_prompt_indices(rng, len(prompts), config.rollout_batch)
    index, used, completions, finished = sample_share(
        policy, prompts, index, config.max_new_tokens, end_id, config.temperature,
        config.seed * 1_000_003 + step * len(index))
    scores = check_scores(score_fn(index, used, completions, finished), len(index))
    # A reward model only ever saw finished answers; an unfinished one is outside what it can
    # judge, and a policy would soon find the ones it overrates. A fixed penalty makes stopping the
    # safe choice.
    scores = scores - config.missing_end_penalty * ~np.asarray(finished, dtype=bool)
    share = pack_completions(used, completions, pad_id=end_id)
    with no_grad():
        old_logps, old_values, *_ = policy.logprobs_and_values(share)
        ref_logps = completion_log_probs(reference, share)
    batch, whole, tokens = gather_rollout(
        used, completions, finished, {"scores": list(scores)},
        {"old_logps": old_logps, "old_values": old_values, "ref_logps": ref_logps}, end_id)
    mask, old_logps, old_values = batch.mask, tokens["old_logps"], tokens["old_values"]
    kl_tokens = (old_logps - tokens["ref_logps"]) * mask                     # k1 per token
    scores = np.asarray(whole["scores"])
    rewards = -kl_coef * kl_tokens
    rewards[np.arange(len(batch)), batch.completion_lengths - 1] += scores  # the last token's
    advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
    return PPORollout(batch, whole["completions"], whole["finished"], scores, old_logps, old_values,
                      kl_tokens, whiten(advantages, mask), returns)


def ppo_update(policy, optimizer, rollout: PPORollout, config: PPOConfig, rng, step: int) -> dict:
    """``ppo_epochs`` passes of minibatch steps over the rollout; each step's losses, clip fraction
    and gradient norm, listed by name."""
    stats = {"policy_loss": [], "value_loss": [], "entropy": [], "clip_frac": [], "grad_norm": []}
    for _ in range(config.ppo_epochs):
        for mb in minibatches(rng, len(rollout.batch), config.minibatch_size):
            result = _ppo_minibatch_step(policy, optimizer, rollout, mb, config, step)
            for name, value in result.items():
                stats[name].append(value)
    return stats


def _ppo_minibatch_step(policy, optimizer, r: PPORollout, mb, config: PPOConfig, step: int) -> dict:
    """One gradient step on the minibatch ``mb``: this process runs its share of the rows, weighted
    by their share of the minibatch's tokens (the losses are means over tokens); the processes'
    parts add up."""
    mine = mb[distributed.shard(len(mb))]
    weight = float(r.batch.mask[mine].sum() / r.batch.mask[mb].sum())
    loss_value, parts = 0.0, [0.0] * 4             # this process's part of the loss and the stats
    if len(mine):
        sub = r.batch.rows(mine)
        width = sub.mask.shape[1]
        logps, values, logits, balance = policy.logprobs_and_values(sub, config.value_trains_trunk)
        policy_loss, clip_frac = ppo_policy_loss(logps, r.old_logps[mine, :width],
                                                 r.advantages[mine, :width], sub.mask, config.clip)
        value_loss = ppo_value_loss(values, r.old_values[mine, :width], r.returns[mine, :width],
                                    sub.mask, config.value_clip or None)
        entropy = masked_mean(token_entropy(logits), sub.mask)
        loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        weighted = balance.added_to(loss) * weight
        weighted.backward()
        loss_value = weighted.item()
        means = (policy_loss.item(), value_loss.item(), entropy.item(), clip_frac)
        parts = [weight * v for v in means]
    _, norm, parts = update_weights(optimizer, loss_value, config.grad_clip, f"PPO step {step + 1}",
                                    *parts)
    names = ("policy_loss", "value_loss", "entropy", "clip_frac")
    return {**dict(zip(names, parts)), "grad_norm": norm}


def _ppo_record(step: int, r: PPORollout, stats: dict, kl_coef: float, seconds: float) -> dict:
    """The logged record of a PPO step: the rollout's score, reward and KL, the update's means."""
    kl_per_completion = r.kl_tokens.sum(axis=1)
    return {"kind": "train", "step": step + 1, "score": float(r.scores.mean()),
            "reward": float((r.scores - kl_coef * kl_per_completion).mean()),
            "kl": float(kl_per_completion.mean()), "kl_coef": kl_coef,
            **{k: float(np.mean(v)) for k, v in stats.items()},
            "explained_variance": explained_variance(r.old_values, r.returns, r.batch.mask),
            "completion_length": float(np.mean([len(c) for c in r.completions])),
            "finished": float(np.mean(r.finished)), "seconds": seconds}


def reward_model_scorer(reward_model, batch_size: int = 32):
    """A ``score_fn`` for ``train_ppo``: the reward model's score of prompt + completion (cut from
    the left to the reward model's block size)."""
    from .reward import RewardModel  # noqa: F401 - documents the expected type
    block = reward_model.config.block_size

    def score(index, prompt_ids, completions, finished):
        sequences = [(list(p) + list(c))[-block:] for p, c in zip(prompt_ids, completions)]
        return reward_model.score_ids(sequences, batch_size)

    return score
