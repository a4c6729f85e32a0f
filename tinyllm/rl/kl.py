"""Estimating KL(π ‖ π_ref) from the tokens π sampled — the leash that keeps an aligned model near
its start.

The exact KL of one next-token distribution needs all V probabilities of both models; summed over a
sequence of sampled tokens it is an expectation, KL(π‖π_ref) = E_{y∼π}[log π(y) − log π_ref(y)],
which we estimate from the samples we already have (Schulman, "Approximating KL divergence", 2020).
Per token, with log-probs lp = log π(y_t), lr = log π_ref(y_t) and the ratio
r = π_ref(y_t) / π(y_t) = exp(lr − lp):

    k1 = log π/π_ref = −log r     unbiased (its mean over y ∼ π is the KL), but a single sample
                                   can be negative, and its variance is high
    k2 = ½ (log r)²                biased (exact only to second order), always ≥ 0, low variance
    k3 = (r − 1) − log r           unbiased: E_π[r] = Σ_y π(y) π_ref(y)/π(y) = 1, so E[r − 1] = 0
                                   and E[k3] = E[−log r] = KL; and ≥ 0 for every sample because
                                   log r ≤ r − 1 (the tangent line of the concave log at 1);
                                   exactly 0 where π(y) = π_ref(y).

PPO (RLHF) puts −β·k1 into each token's reward; GRPO adds β·k3 to its loss directly. Their gradients
with respect to lp:  d k1/d lp = 1,  d k3/d lp = 1 − r  (the k3 gradient vanishes where the models
agree).

All three take Tensors (or arrays) of per-token log-probs of any shape and return per-token values.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, fused_op, unbroadcast


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def kl_k1(logp, ref_logp) -> Tensor:
    """log π(y) − log π_ref(y) per token (unbiased, can be negative)."""
    return _tensor(logp) - _tensor(ref_logp)


def kl_k2(logp, ref_logp) -> Tensor:
    """½ (log π_ref(y) − log π(y))² per token (biased, ≥ 0)."""
    log_ratio = _tensor(ref_logp) - _tensor(logp)
    return 0.5 * log_ratio * log_ratio


def kl_k3_forward(logp, ref_logp):
    """(r − 1) − log r per token with r = π_ref(y)/π(y) = exp(d), d = ref_logp − logp, computed as
    expm1(d) − d and clamped at 0 (which it is mathematically). logp and ref_logp broadcast."""
    xp = backend.xp
    log_ratio = ref_logp - logp                              # d = log r
    out = xp.maximum(xp.expm1(log_ratio) - log_ratio, 0)     # k3 = (r − 1) − log r
    return out, (xp.exp(log_ratio), logp.shape, ref_logp.shape)


def kl_k3_backward(g, cache, needs=(True, True)):
    """d k3 / d logp = 1 − r,  d k3 / d ref_logp = r − 1 (then summed over broadcast axes)."""
    ratio, logp_shape, ref_shape = cache
    d_logp = g * (1 - ratio)                       # undoes k3 = (r − 1) − log r, r = exp(lr − lp)
    return (unbroadcast(d_logp, logp_shape) if needs[0] else None,
            unbroadcast(-d_logp, ref_shape) if needs[1] else None)


def kl_k3(logp, ref_logp) -> Tensor:
    """(r − 1) − log r per token with r = π_ref(y)/π(y) (unbiased, ≥ 0, 0 where the models agree).

    A fused op (``kl_k3_forward``), because the obvious composition exp(d) − 1 − d (d = log r)
    cancels catastrophically when the models nearly agree: in float32, d = 1e-5 gives −1.4e-8
    instead of 5e-11. ``expm1(d) − d`` is accurate there. Saves r (the inputs' size)."""
    logp, ref_logp = _tensor(logp), _tensor(ref_logp)
    out, cache = kl_k3_forward(logp.data, ref_logp.data)
    return fused_op(kl_k3_backward, out, cache, logp, ref_logp)
