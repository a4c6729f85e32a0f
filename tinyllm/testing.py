"""Check a hand-written backward pass against finite differences.

For a function f of tensors and a fixed random "upstream gradient" R of f's output shape, the scalar
L = Σ f(x) * R has the gradient dL/dx that ``backward(R)`` computes. Central differences estimate
the same thing from the forward alone:

    dL/dx[i] ≈ (L(x + eps·e_i) - L(x - eps·e_i)) / (2 eps)

with an error of O(eps²) from truncation plus O(1e-16 |L| / eps) from rounding; in float64 with eps
= 1e-6 both are far below 1e-6 relative,
so any larger disagreement is a bug in the backward. Use it on your own ops:

    from tinyllm import Tensor, default_dtype
    from tinyllm.testing import gradcheck
    with default_dtype("float64"):
        x = Tensor(np.random.randn(3, 4), requires_grad=True)
        gradcheck(lambda x: (x * x).tanh(), [x])
"""

from __future__ import annotations

import numpy as np

from . import backend
from .autograd import Tensor, no_grad


def gradcheck(fn, inputs, eps=1e-6, rtol=1e-6, atol=1e-8, seed=0, max_elements=None) -> float:
    """Compare ``fn``'s analytic gradients with central finite differences,
    for every input that requires grad.

    fn:           called as ``fn(*inputs)``; returns a Tensor (any shape) — or a tuple whose first item is one.
    inputs:       Tensors (float64 when they require grad) and any other arguments ``fn`` takes.
    eps:          the finite-difference step.
    rtol, atol:   an element fails when |analytic - numeric| > atol + rtol * max(|analytic|, |numeric|).
    max_elements: check at most this many randomly chosen elements per input (None = all of them).

    Returns the largest norm-wise relative error over the inputs, ‖a - n‖ / max(‖a‖, ‖n‖).
    Raises AssertionError naming the input, the worst element and both values when any element
    fails.
    """
    def output(*args):
        out = fn(*args)
        return out[0] if isinstance(out, tuple) else out

    checked = _inputs_to_check(inputs)
    analytic, upstream = _analytic_gradients(output, inputs, checked, seed)

    def loss():                                              # L = Σ out * R, from the forward alone
        with no_grad():
            return float(backend.to_numpy((output(*inputs).data * upstream).sum()))

    worst_relative, pick = 0.0, np.random.default_rng(seed)
    for i, t in checked:
        flat = t.data.reshape(-1)  # a view: writing to it perturbs the input in place
        positions = np.arange(flat.size)
        if max_elements is not None and flat.size > max_elements:
            positions = np.sort(pick.choice(flat.size, size=max_elements, replace=False))
        exact = backend.to_numpy(analytic[i]).reshape(-1)[positions].astype(np.float64)
        numeric = np.array([_central_difference(flat, k, loss, eps) for k in positions])
        _raise_on_disagreement(i, t.shape, positions, exact, numeric, rtol, atol)
        # Norm-wise relative error: robust to elements whose true gradient is ~0.
        scale = max(np.linalg.norm(exact), np.linalg.norm(numeric))
        if scale > 0:
            worst_relative = max(worst_relative, float(np.linalg.norm(exact - numeric) / scale))
    return worst_relative


def _inputs_to_check(inputs) -> list:
    """(position, tensor) of every input that requires grad: float64, C-contiguous (perturbed
    through a flat view)."""
    checked = [(i, t) for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad, so there is nothing to check")
    for i, t in checked:
        if t.dtype != np.float64:
            raise ValueError("gradcheck needs float64 inputs for a meaningful check; input "
                             f"{i} is {t.dtype}")
        if not t.data.flags.c_contiguous:
            t.data = backend.xp.ascontiguousarray(t.data)
    return checked


def _analytic_gradients(output, inputs, checked, seed):
    """dL/dx of L = Σ out * R for a random upstream gradient R, by ``backward(R)``;
    returns them and R."""
    for _, t in checked:
        t.grad = None
    out = output(*inputs)
    upstream = backend.rng(seed).standard_normal(out.shape)
    out.backward(upstream)
    return {i: (t.grad.copy() if t.grad is not None else backend.xp.zeros_like(t.data))
            for i, t in checked}, upstream


def _central_difference(flat, k, loss, eps) -> float:
    """(L(x + eps e_k) - L(x - eps e_k)) / 2 eps,
    perturbing element k of the input in place and restoring it."""
    original = flat[k].item()
    flat[k] = original + eps
    plus = loss()
    flat[k] = original - eps
    minus = loss()
    flat[k] = original
    return (plus - minus) / (2 * eps)


def _raise_on_disagreement(i, shape, positions, exact, numeric, rtol, atol) -> None:
    error = np.abs(exact - numeric)
    excess = error - (atol + rtol * np.maximum(np.abs(exact), np.abs(numeric)))
    if excess.max(initial=-1.0) > 0:
        n = int(np.argmax(excess))
        where = tuple(int(w) for w in np.unravel_index(positions[n], shape))
        raise AssertionError(
            f"gradcheck failed for input {i} (shape {shape}) at element {where}: analytic "
            f"{exact[n]:.10g} vs numeric {numeric[n]:.10g} (abs error {error[n]:.3g}; "
            f"{int((excess > 0).sum())} of {len(positions)} elements disagree)"
        )
