"""Optimizers, gradient clipping and learning-rate schedules.

Every update works in place on the parameters' arrays.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend, parallel


def _groups(params, defaults):
    """Accept a list of parameters or a list of dicts {"params": [...], <setting>: value}
    (param groups)."""
    params = list(params)
    if not params:
        raise ValueError("the optimizer got an empty parameter list")
    groups = params if isinstance(params[0], dict) else [{"params": params}]
    return [{**defaults, **g, "params": [p for p in g["params"] if p.requires_grad]}
            for g in groups]


class Optimizer:
    def __init__(self, params, defaults):
        self.groups = _groups(params, defaults)
        # the schedule sets this each step; a group's "lr_scale" multiplies it
        self.lr = defaults["lr"]
        self.step_count = 0

    def parameters(self):
        return [p for g in self.groups for p in g["params"]]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None


class SGD(Optimizer):
    """p ← p - lr · (g + momentum · velocity) style heavy-ball SGD: v ← μ v + g,  p ← p - lr v."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.velocity = [None] * len(self.parameters())

    def step(self) -> None:
        self.step_count += 1
        i = 0
        for g in self.groups:
            lr = self.lr * g.get("lr_scale", 1.0)
            for p in g["params"]:
                if p.grad is not None:
                    grad = p.grad + g["weight_decay"] * p.data if g["weight_decay"] else p.grad
                    if g["momentum"]:
                        if self.velocity[i] is None:
                            self.velocity[i] = backend.xp.array(grad, copy=True)
                        else:
                            self.velocity[i] *= g["momentum"]
                            self.velocity[i] += grad
                        grad = self.velocity[i]
                    p.data -= lr * grad
                i += 1


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter).

        m ← β₁ m + (1-β₁) g          v ← β₂ v + (1-β₂) g²
        p ← p - lr·wd·p - lr · (m / (1-β₁ᵗ)) / (√(v / (1-β₂ᵗ)) + ε)

    Decay is per group, so biases, norms and embeddings can skip it: pass
    ``[{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}]``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params,
                         dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        xp = backend.xp
        self.exp_avg = [xp.zeros(p.data.shape, p.data.dtype) for p in self.parameters()]      # m
        self.exp_avg_sq = [xp.zeros(p.data.shape, p.data.dtype) for p in self.parameters()]   # v

    def step(self, grad_scale: float = 1.0) -> None:
        """One update of every parameter p with gradient g (Loshchilov & Hutter's AdamW,
        as llm.c writes it):
            m = β1 m + (1-β1) g,   v = β2 v + (1-β2) g²          running means of g and g²
            m̂ = m / (1-β1ᵗ),       v̂ = v / (1-β2ᵗ)               bias corrections (m, v start at 0)
            p = p - lr (m̂ / (√v̂ + ε) + λ p)                     decoupled weight decay λ
        ``grad_scale`` multiplies every gradient as it is read: gradient clipping
        (``clip_factor``)."""
        grad_scale = float(grad_scale)
        self.step_count += 1
        in_group = [(p, group) for group in self.groups for p in group["params"]]
        updates = [(p, m, v, group) for (p, group), m, v
                   in zip(in_group, self.exp_avg, self.exp_avg_sq) if p.grad is not None]

        def update(job):
            p, m, v, group = job
            adamw_update(p.data, p.grad, m, v, self.lr, group, self.step_count, grad_scale)

        # each parameter on its own: shared out over the CPU cores (tinyllm.parallel)
        parallel.for_each(update, updates, [p.data.size for p, *_ in updates])

    def state_dict(self) -> dict:
        """Arrays (``exp_avg.{i}``, ``exp_avg_sq.{i}`` in parameter order)
        plus ``step`` and ``lr``."""
        state = {"step": self.step_count, "lr": self.lr}
        for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            state[f"exp_avg.{i}"] = m
            state[f"exp_avg_sq.{i}"] = v
        return state

    def load_state_dict(self, state: dict) -> None:
        n = len(self.exp_avg)
        saved = sum(1 for k in state if k.startswith("exp_avg."))
        if saved != n:
            raise ValueError(f"optimizer state has {saved} parameters but this optimizer has {n}")
        for i in range(n):
            for name, buffers in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                array = state[f"{name}.{i}"]
                if tuple(array.shape) != buffers[i].shape:
                    raise ValueError(f"optimizer state {name}.{i} has shape {tuple(array.shape)}, "
                                     f"parameter has {buffers[i].shape}")
                buffers[i][...] = backend.xp.asarray(array)
        self.step_count = int(state["step"])
        self.lr = float(state["lr"])


def adamw_update(weights, g, m, v, lr: float, group: dict, t: int,
                 grad_scale: float = 1.0) -> None:
    """AdamW's update (``AdamW.step``) of the array ``weights`` in place, with its gradient ``g``
    times ``grad_scale`` (clipping) and its moments ``m``, ``v`` (updated in place too), the
    settings of its param ``group`` and step number ``t``. Element by element: any piece of a
    parameter can be updated on its own (``zero.ShardedAdamW``)."""
    beta1, beta2 = group["betas"]
    lr, eps, decay = lr * group.get("lr_scale", 1.0), group["eps"], group["weight_decay"]
    g = g * grad_scale
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    weights -= lr * (m_hat / (backend.xp.sqrt(v_hat) + eps) + decay * weights)


def optimizer_bytes(optimizer) -> int:
    """Bytes of AdamW's two moment arrays: 2 × (trainable parameters) × bytes per number (this
    process's shard of them under ZeRO, ``tinyllm.zero``)."""
    return int(sum(m.nbytes + v.nbytes for m, v in zip(optimizer.exp_avg, optimizer.exp_avg_sq)))


def grad_norm(params) -> float:
    """The global L2 norm of all gradients together, √(Σ g²) over every element of every parameter.

    Each parameter's Σ g² is added in float64, in parameter order, on the device: one read of the
    device in all (on a GPU a read per parameter would stop it a hundred times a step)."""
    squares = [backend.xp.vdot(p.grad.ravel(), p.grad.ravel())
               for p in params if p.grad is not None]
    total = 0.0
    for square in squares:
        total = total + square.astype(np.float64)
    return math.sqrt(float(total))


def clip_factor(norm: float, max_norm: float | None) -> float:
    """The factor that brings a gradient of global norm ``norm`` down to ``max_norm`` (1 when it is
    already within it, when ``max_norm`` is None, or when the norm is not finite: such a step should
    be skipped)."""
    if max_norm is None or not norm > max_norm or not math.isfinite(norm):
        return 1.0
    return max_norm / (norm + 1e-6)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``; returns
    the norm before clipping (useful to log; inf or nan means the step should be skipped). The
    training loops instead pass ``clip_factor(grad_norm(params), max_norm)`` to ``AdamW.step``,
    which saves the rescaling pass."""
    # a generator would be used up by the norm, and then nothing would be scaled
    params = list(params)
    total = grad_norm(params)
    scale = clip_factor(total, max_norm)
    if scale != 1.0:
        for p in params:
            # not in place: a gradient may be shared
            if p.grad is not None:
                p.grad = p.grad * scale
    return total


def warmup_cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int,
                     total_steps: int) -> float:
    """Linear warmup from 0 to ``max_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at
    ``total_steps`` (and ``min_lr`` after). ``step`` counts from 0."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def constant_lr(step: int, max_lr: float, **_) -> float:
    return max_lr
