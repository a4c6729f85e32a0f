"""Each fast path against its plain reference: the same outputs, caches and gradients.

A fast path is a plain forward/backward pair written in place or with einsum sums
(``gelu_forward_fast``, ``layer_norm_forward_fast``). The models run the fast ones; the plain ones
are what a reader reads and what ``test_op_pairs`` gradchecks. Here the fast ones are held equal to
them, in float64 and float32, and gradchecked too. What each saves on a training step:
``benchmarks/bench_fast_paths.py``.
"""

import numpy as np
import pytest

from tinyllm import backend, default_dtype
from tinyllm.autograd import Tensor, fused_op
from tinyllm.backend import to_numpy
from tinyllm.functional import dense, norms
from tinyllm.testing import gradcheck

EPS = 1e-5
# (plain forward, plain backward, fast forward, fast backward, makes the inputs from a generator)
PAIRS = {
    "gelu": (dense.gelu_forward, dense.gelu_backward, dense.gelu_forward_fast,
             dense.gelu_backward_fast, lambda r, dt: [3 * r.standard_normal((2, 5, 12))]),
    "layer_norm": (lambda x, w, b: norms.layer_norm_forward(x, w, b, EPS),
                   norms.layer_norm_backward,
                   lambda x, w, b: norms.layer_norm_forward_fast(x, w, b, EPS),
                   norms.layer_norm_backward_fast,
                   lambda r, dt: [2 + 3 * r.standard_normal((2, 5, 12)),
                                  1 + 0.3 * r.standard_normal(12), r.standard_normal(12)]),
}
# float32 agrees to rounding: a few units in the last place of values of order 1
TOLERANCES = {"float64": dict(rtol=1e-12, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-5)}


def _arrays(name, dtype, seed=0):
    r = np.random.default_rng(seed)
    return [backend.asarray(a.astype(dtype)) for a in PAIRS[name][-1](r, dtype)]


def _close(actual, expected, dtype, what):
    if expected is None:
        assert actual is None, what
        return
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), err_msg=what,
                               **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_fast_pair_equals_the_plain_pair(name, dtype):
    forward, backward, forward_fast, backward_fast, _ = PAIRS[name]
    inputs = _arrays(name, dtype)
    y, cache = forward(*inputs)
    y_fast, cache_fast = forward_fast(*inputs)
    _close(y_fast, y, dtype, f"{name}: output")
    assert y_fast.dtype == y.dtype and y_fast.shape == y.shape
    dy = backend.asarray(np.random.default_rng(1).standard_normal(y.shape).astype(dtype))
    for needs in [(True,) * len(inputs)] + [tuple(i == j for j in range(len(inputs)))
                                            for i in range(len(inputs))]:
        expected = backward(dy, cache, needs)
        for cache_used in (cache, cache_fast):          # the caches are interchangeable
            grads = backward_fast(dy, cache_used, needs)
            assert len(grads) == len(inputs)
            for i, (g, e) in enumerate(zip(grads, expected)):
                _close(g if needs[i] else None, e if needs[i] else None, dtype,
                       f"{name}: gradient of input {i} with needs={needs}")


def test_fast_layer_norm_without_weight_or_bias():
    name = "layer_norm"
    x, *affine = _arrays(name, "float64")
    nones = (None,) * len(affine)
    forward, backward, forward_fast, backward_fast, _ = PAIRS[name]
    y, cache = forward(x, *nones)
    y_fast, cache_fast = forward_fast(x, *nones)
    _close(y_fast, y, "float64", f"{name}: output without weight")
    needs = (True,) + (False,) * len(nones)
    _close(backward_fast(y, cache_fast, needs)[0], backward(y, cache, needs)[0], "float64",
           f"{name}: dx without weight")


@pytest.mark.parametrize("name", list(PAIRS))
def test_fast_pair_gradcheck(name):
    _, _, forward_fast, backward_fast, _ = PAIRS[name]
    with default_dtype("float64"):
        inputs = [Tensor(a, requires_grad=True) for a in _arrays(name, "float64", seed=2)]

        def op(*tensors):
            out, cache = forward_fast(*(t.data for t in tensors))
            return fused_op(backward_fast, out, cache, *tensors)

        assert gradcheck(op, inputs, seed=3) < 1e-6


def test_the_model_ops_run_the_fast_paths(monkeypatch):
    """gelu and layer_norm call their fast pairs (so the benchmark's switch is real)."""
    called = []
    for module, name in ((dense, "gelu_forward_fast"), (norms, "layer_norm_forward_fast")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _f=original, _n=name: called.append(_n) or _f(*a))
    x = Tensor(backend.asarray(np.ones((2, 4))), requires_grad=True)
    w = Tensor(backend.asarray(np.ones(4)))
    dense.gelu(x), norms.layer_norm(x, w, w)
    assert called == ["gelu_forward_fast", "layer_norm_forward_fast"]
