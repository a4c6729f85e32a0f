"""What PPO's and GRPO's training loops share: the optimizer, one gradient step, a prompt sampler and the
logged evaluations.

Both loops alternate two phases, unlike pretraining's single one:

    rollout   no gradients: sample completions, score them, compute the old and reference log-probs
    update    several passes (epochs) over minibatches of that rollout, each a gradient step

so the data of a step is made by the model being trained, and the learning rate is constant (the reward,
not a schedule, decides when learning is done).
"""

from __future__ import annotations

import math

import numpy as np

from ..optim import AdamW, clip_factor, grad_norm
from ..train import TrainingDiverged, param_groups


def make_optimizer(model, lr: float, weight_decay: float = 0.0, own_rate=None) -> AdamW:
    """AdamW over the trainable parameters (decay on matrices only), β₂ = 0.99 as in pretraining.
    ``own_rate``: (module, learning rate) for a part that learns at its own rate, undecayed (PPO's value head)."""
    groups = param_groups(model, weight_decay)
    if own_rate is not None:
        module, rate = own_rate
        own = [p for p in module.parameters() if p.requires_grad]
        ids = {id(p) for p in own}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
        groups.append({"params": own, "weight_decay": 0.0, "lr_scale": rate / lr})
    if not any(g["params"] for g in groups):
        raise ValueError("no parameter of the policy requires grad: nothing would be trained")
    return AdamW(groups, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)


def optimizer_step(optimizer, loss, grad_clip: float, where: str) -> float:
    """backward → global gradient norm → AdamW step, gradients clipped to ``grad_clip`` → clear gradients;
    returns the norm. ``loss``: a scalar Tensor, or the value of a loss whose gradients are already in the
    parameters' ``.grad`` (``backward_in_chunks``).
    Raises ``TrainingDiverged`` (naming ``where``) on a non-finite loss or gradient, before any update."""
    if not isinstance(loss, float):
        loss.backward()
        loss = loss.item()
    norm = grad_norm(optimizer.parameters())
    if not (math.isfinite(loss) and math.isfinite(norm)):
        optimizer.zero_grad()
        raise TrainingDiverged(f"training diverged at {where}: loss {loss}, gradient norm {norm}. Try a lower --lr")
    optimizer.step(grad_scale=clip_factor(norm, grad_clip or None))   # clipping folded into the update
    optimizer.zero_grad()
    return norm


def backward_in_chunks(rows, chunk_size: int | None, chunk_loss) -> float:
    """The gradient of a mean over ``rows`` of per-row losses, ``chunk_size`` rows at a time; returns its value.

    ``chunk_loss(chunk)`` is the mean loss (a scalar Tensor) of the rows ``chunk``; weighted by its share
    of the rows, each chunk's gradient adds into the parameters' ``.grad``, so the sum is the whole mean's.
    Only one chunk's activations are alive at a time: a group of 128 completions of 90 tokens would
    otherwise keep every layer's activations for 11,520 positions until the backward pass."""
    rows = np.asarray(rows)
    size = chunk_size or len(rows)
    value = 0.0
    for first in range(0, len(rows), size):
        chunk = rows[first:first + size]
        loss = chunk_loss(chunk) * (len(chunk) / len(rows))
        loss.backward()
        value += loss.item()
    return value


def sample_prompt_indices(rng: np.random.Generator, num_prompts: int, count: int) -> np.ndarray:
    """``count`` prompt indices: without repeats while there are enough prompts, with repeats otherwise."""
    if num_prompts < 1:
        raise ValueError("reinforcement learning needs at least one prompt")
    return rng.choice(num_prompts, size=count, replace=num_prompts < count)


def minibatches(rng: np.random.Generator, n: int, size: int | None):
    """Shuffled index arrays covering 0 … n−1 in chunks of ``size`` (None: one chunk of everything)."""
    order = rng.permutation(n)
    size = n if not size else size
    return [order[i:i + size] for i in range(0, n, size)]


def eval_recorder(policy, eval_fn, log, bar):
    """(run_eval, evals): ``run_eval(step)`` puts the policy in eval mode, logs ``eval_fn(policy)`` as a
    kind "eval" record, shows its numbers on the progress bar and keeps it in ``evals``. Without an
    ``eval_fn`` it does nothing."""
    evals = []

    def run_eval(step):
        if eval_fn is None:
            return
        policy.eval()
        record = {"kind": "eval", "step": step, **eval_fn(policy)}
        evals.append(record)
        log(record)
        if bar:
            bar.message(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                     if k not in ("kind", "step") and isinstance(v, float)))
    return run_eval, evals
