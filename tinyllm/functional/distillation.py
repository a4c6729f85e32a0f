"""The knowledge-distillation loss (Hinton et al. 2015): a student learns the teacher's whole
distribution.

At every position the teacher gives a probability to each of the V tokens, not just to the right
one: which wrong tokens are nearly right is what it knows ("dark knowledge"). Dividing the logits by
a temperature T > 1 softens both distributions so that those small probabilities weigh in. For one
position, with student logits z (V,), teacher logits t (V,) and the hard target y:

    log q = log_softmax(z / T)                the student, softened
    log p = log_softmax(t / T)                the teacher, softened
    forward KL:  KL(p ‖ q) = Σ_v p_v (log p_v - log q_v)      the student must cover everything the teacher
                                                              finds likely (Hinton; DistilBERT)
    reverse KL:  KL(q ‖ p) = Σ_v q_v (log q_v - log p_v)      the student may put its mass on the teacher's
                                                              main modes only (MiniLLM, Gu et al.
                                                              2024)
    CE = -log softmax(z)_y                    the hard label, at temperature 1
    loss = T² · KL + α · CE                   averaged over the positions whose target is not ignored

The backward, per position (before the mean's 1/N), undoes those lines. With a = log q - log p:

    forward KL:  dKL/dz = (q - p) / T                    dKL/dt = p ⊙ (log p - log q - KL) / T
    reverse KL:  dKL/dz = q ⊙ (a - KL) / T               dKL/dt = (p - q) / T
    dCE/dz = softmax(z) - onehot(y)

Derivation of the reverse-KL line: ∂q_v/∂z_j = q_v (δ_vj - q_j) / T and ∂log q_v/∂z_j = (δ_vj - q_j)
/ T, so dKL/dz_j = Σ_v ∂q_v/∂z_j · a_v + Σ_v q_v ∂log q_v/∂z_j = q_j (a_j - Σ_v q_v a_v) / T + (q_j
- q_j) / T, and Σ_v q_v a_v is the KL itself. The forward KL's dKL/dt is the same computation with p
  and q swapped; its
dKL/dz = -Σ_v p_v (δ_vj - q_j) / T = (q_j - p_j) / T since Σ p = 1.

Why T²: each softened gradient carries a 1/T, and its size (q - p, for logits a fixed distance
apart) shrinks about as 1/T again, so without T² the distillation term would fade as T grows; with
it, changing T leaves the balance with the hard-label term where it was (Hinton et al., section 2).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Tensor, fused_op
from .losses import _count_valid_targets, _log_softmax_array

KL_DIRECTIONS = ("forward", "reverse")


def distillation_forward(z, t, y, valid, n_valid: int, temperature: float, alpha: float,
                         reverse: bool):
    """z, t (N, V) student and teacher logits, y (N,) targets (any index where ``valid`` is False;
    unused when alpha = 0), n_valid = Σ valid → the mean of T²·KL + α·CE over the valid rows (module
    docstring)."""
    xp = backend.xp
    rows = xp.arange(len(z))
    log_q = _log_softmax_array(z / temperature, axis=1)                # (N, V) student, softened
    log_p = _log_softmax_array(t / temperature, axis=1)                # (N, V) teacher, softened
    q, p = xp.exp(log_q), xp.exp(log_p)
    if reverse:
        kl = (q * (log_q - log_p)).sum(axis=1)                          # (N,)  KL(q ‖ p)
    else:
        kl = (p * (log_p - log_q)).sum(axis=1)                          # (N,)  KL(p ‖ q)
    per_row = kl * (temperature * temperature)
    log_s = None
    if alpha:
        log_s = _log_softmax_array(z, axis=1)                           # (N, V) student at T = 1
        per_row = per_row - alpha * log_s[rows, y]                      # + α · CE
    loss = (per_row * valid).sum() / max(n_valid, 1)
    return loss, (q, p, log_q, log_p, kl, log_s, y, valid, n_valid, temperature, alpha, reverse)


def distillation_backward(dout, cache, needs=(True, True)):
    """(dz, dt): the module docstring's lines, each row scaled by its share of the mean, dout /
    N_valid (0 for ignored rows). T² times a 1/T gives the factor T."""
    q, p, log_q, log_p, kl, log_s, y, valid, n_valid, temperature, alpha, reverse = cache
    row_scale = (valid * (dout / max(n_valid, 1))).astype(q.dtype)[:, None]   # (N, 1)
    dz = dt = None
    if needs[0]:
        if reverse:                                  # undoes KL(q ‖ p) = Σ q (log q - log p)
            dz = temperature * q * ((log_q - log_p) - kl[:, None])
        else:                                        # undoes KL(p ‖ q) = Σ p (log p - log q)
            dz = temperature * (q - p)
        if alpha:                                    # undoes CE = -log softmax(z)_y
            d_ce = backend.xp.exp(log_s)
            d_ce[backend.xp.arange(len(d_ce)), y] -= 1.0
            dz += alpha * d_ce
        dz *= row_scale
    if needs[1]:
        if reverse:
            dt = temperature * (p - q)
        else:
            dt = temperature * p * ((log_p - log_q) - kl[:, None])
        dt *= row_scale
    return dz, dt


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets=None,
                      temperature: float = 2.0,
                      alpha: float = 0.5, kl: str = "forward", ignore_index: int = -100) -> Tensor:
    """T²·KL(teacher ‖ student) (``kl="forward"``) or T²·KL(student ‖ teacher) (``"reverse"``) of
    the temperature-softened distributions, plus α × the cross-entropy against the hard ``targets``
    (..., needed when α > 0), averaged over the positions whose target is not ``ignore_index`` (all
    of them without targets). Logits (..., V); the teacher's usually come from a frozen model, but
    both get gradients. Saves the softened distributions and their logs (4 arrays of the logits'
    size, 5 with α > 0)."""
    if student_logits.shape != teacher_logits.shape:
        n_student, n_teacher = student_logits.shape[-1], teacher_logits.shape[-1]
        raise ValueError(f"distillation: student logits {student_logits.shape} and teacher logits "
                         f"{teacher_logits.shape} differ; teacher and student must share one "
                         f"vocabulary (the student has {n_student} tokens, the teacher "
                         f"{n_teacher})")
    if kl not in KL_DIRECTIONS:
        raise ValueError(f"distillation: kl must be 'forward' or 'reverse', got {kl!r}")
    if not temperature > 0 or not alpha >= 0:
        raise ValueError(f"distillation: temperature must be > 0 and alpha >= 0, got {temperature} "
                         f"and {alpha}")
    xp = backend.xp
    vocab = student_logits.shape[-1]
    if targets is None:
        if alpha:
            raise ValueError("distillation: alpha > 0 weighs a hard-label loss, which needs "
                             "targets")
        t = xp.zeros(student_logits.shape[:-1], dtype=xp.int64).reshape(-1)
        valid, n_valid = xp.ones(t.shape, dtype=bool), t.size
    else:
        targets = targets.data if isinstance(targets, Tensor) else targets
        targets = targets if hasattr(targets, "dtype") else np.asarray(targets)
        if targets.shape != student_logits.shape[:-1] or targets.dtype.kind not in "iu":
            raise ValueError("distillation: targets must be integers of shape "
                             f"{student_logits.shape[:-1]}, got {targets.dtype} of shape "
                             f"{targets.shape}")
        n_valid = _count_valid_targets(targets.reshape(-1), vocab, ignore_index)
        t = xp.asarray(targets).reshape(-1)
        valid = t != ignore_index
        t = xp.where(valid, t, 0)
    # (N, V)
    z, teacher = student_logits.data.reshape(-1, vocab), teacher_logits.data.reshape(-1, vocab)
    loss, cache = distillation_forward(z, teacher, t, valid, n_valid, temperature, alpha,
                                       kl == "reverse")
    return fused_op(_distillation_backward_nd, xp.asarray(loss, dtype=student_logits.dtype),
                    (cache, student_logits.shape), student_logits, teacher_logits)


def _distillation_backward_nd(dout, cache, needs=(True, True)):
    flat_cache, logits_shape = cache
    grads = distillation_backward(dout, flat_cache, needs)
    return tuple(None if g is None else g.reshape(logits_shape) for g in grads)
