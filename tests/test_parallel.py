"""backend.parallel_rows: the threaded elementwise path gives the same bits as the single-threaded one, and its
hand-written backwards still match finite differences.

The other tests use tiny shapes, below ``backend.min_parallel_size``, so they take the single-threaded path;
here the threshold is set to 0 and two threads are forced, so every op that splits its rows really does.
"""

import numpy as np
import pytest

from tinyllm import backend
from tinyllm.autograd import Tensor
from tinyllm.functional import cross_entropy, gelu, layer_norm, linear, scaled_dot_product_attention, self_attention
from tinyllm.optim import AdamW
from tinyllm.testing import gradcheck

# CPU threads exist on the CPU only: on a GPU (and on the strict stand-in) every op runs whole.
pytestmark = pytest.mark.skipif(backend.device != "cpu", reason="CPU thread parallelism: device is not cpu")


@pytest.fixture
def threads(monkeypatch):
    """Force the threaded path (2 threads, no size threshold) for the duration of a test."""
    def use(n):
        monkeypatch.setattr(backend, "num_threads", n)
        monkeypatch.setattr(backend, "min_parallel_size", 0)
    return use


def _param(rng, *shape, dtype=np.float64):
    with backend.default_dtype(dtype):
        return Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=True)


def test_parallel_rows_splits_rows_and_keeps_order(threads):
    threads(3)
    a = np.arange(10.0)
    seen = backend.parallel_rows(lambda block: block.copy(), a)
    assert len(seen) == 3 and np.array_equal(np.concatenate(seen), a)
    threads(1)
    assert len(backend.parallel_rows(lambda block: block.copy(), a)) == 1


def _run_ops(dtype):
    """Outputs and gradients of every op that uses parallel_rows, for one fixed input."""
    rng = np.random.default_rng(0)
    x = _param(rng, 6, 5, 8, dtype=dtype)
    w, b = _param(rng, 8, dtype=dtype), _param(rng, 8, dtype=dtype)
    W = _param(rng, 24, 8, dtype=dtype)
    qkv = linear(layer_norm(gelu(x), w, b), W)
    y = self_attention(qkv, n_head=2)
    loss = cross_entropy(y, rng.integers(0, 8, (6, 5)))
    loss.backward()
    row_wise = [loss.data, y.data, x.grad]                  # each row computed alone: the same bits
    summed_over_rows = [w.grad, b.grad, W.grad]             # per-block partial sums: the same up to rounding
    return row_wise, summed_over_rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_ops_equal_single_threaded(threads, dtype):
    threads(1)
    single_rows, single_sums = _run_ops(dtype)
    threads(2)
    threaded_rows, threaded_sums = _run_ops(dtype)
    for a, b in zip(single_rows, threaded_rows):
        assert np.array_equal(a, b)
    for a, b in zip(single_sums, threaded_sums):
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_threaded_adamw_equals_single_threaded(threads):
    def run():
        rng = np.random.default_rng(1)
        p = _param(rng, 7, 3, dtype=np.float32)
        opt = AdamW([p], lr=0.1, weight_decay=0.1)
        for _ in range(3):
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()
        return p.data.copy()
    threads(1)
    single = run()
    threads(2)
    assert np.array_equal(single, run())


def test_adamw_updates_a_non_contiguous_parameter_in_place_of_losing_it():
    p = Tensor(np.ones((3, 4)).T, requires_grad=True)      # a transposed (Fortran-ordered) view
    opt = AdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = np.ones((4, 3))
    opt.step()
    assert np.allclose(p.data, 0.9)


def test_gradchecks_on_the_threaded_path(threads):
    threads(2)
    rng = np.random.default_rng(2)
    x, w, b = _param(rng, 4, 3, 6), _param(rng, 6), _param(rng, 6)
    gradcheck(gelu, [x])
    gradcheck(layer_norm, [x, w, b])
    gradcheck(lambda z: cross_entropy(z, np.array([[0, 5, 2], [1, 1, 3], [4, 0, 0], [5, 2, 1]])), [x])
    q, k, v = _param(rng, 4, 2, 3, 5), _param(rng, 4, 2, 3, 5), _param(rng, 4, 2, 3, 5)
    gradcheck(scaled_dot_product_attention, [q, k, v])
    gradcheck(lambda x, W, bias: linear(x, W, bias), [x, _param(rng, 5, 6), _param(rng, 5)])
