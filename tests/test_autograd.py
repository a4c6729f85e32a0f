"""Tests of tinyllm.autograd: every primitive's backward against finite differences, and the graph walk.

Gradient checks run in float64 (the ``float64`` fixture) on small random inputs built with NumPy. Inputs of
ops with a kink (relu, clip, maximum, max) are kept at least 0.1 away from it: finite differences are not
defined there, so the gradient at a tie is checked by hand instead.
"""

import sys
import warnings

import numpy as np
import pytest

import tinyllm
import tinyllm.autograd as ag
from tinyllm.autograd import Tensor, no_grad
from tinyllm.testing import gradcheck

uses_float64 = pytest.mark.usefixtures("float64")


def leaf(array) -> Tensor:
    """A tensor that requires grad (float64 under the ``float64`` fixture)."""
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def check_grad(fn, *arrays):
    """gradcheck ``fn`` with each NumPy array as an input that requires grad."""
    gradcheck(fn, [leaf(a) for a in arrays])


def away_from(rng, shape, point=0.0, margin=0.1):
    """Random numbers at least ``margin`` away from ``point`` (on both sides of it)."""
    magnitude = rng.uniform(margin, 1.5, size=shape)
    return point + magnitude * rng.choice([-1.0, 1.0], size=shape)


def distinct(rng, shape):
    """Random numbers whose pairwise gaps are at least 0.1: no ties for max."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 + rng.uniform(0, 0.01, size=n)).reshape(shape) - n * 0.05


def on_device(index):
    """An index whose arrays live on the backend's device (getitem accepts Tensors as index arrays)."""
    if isinstance(index, tuple):
        return tuple(on_device(i) for i in index)
    return Tensor(index) if isinstance(index, np.ndarray) else index


# ---------------------------------------------------------------------- elementwise arithmetic
BINARY_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}
BROADCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((2, 3, 4), (4,)),  # b is broadcast along two new leading axes
    ((3, 1), (1, 4)),  # both are broadcast along an axis of length 1
    ((2, 1, 4), (3, 1)),
    ((), (2, 3)),  # a 0-d tensor against a matrix
    ((5,), ()),
]


@uses_float64
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("op", BINARY_OPS.values(), ids=BINARY_OPS.keys())
def test_binary_op_gradients_with_broadcasting(op, shapes, rng):
    a = rng.standard_normal(shapes[0])
    b = away_from(rng, shapes[1], margin=0.5)  # a divisor away from zero
    check_grad(op, a, b)


CONSTANT = np.array([0.5, -1.5, 2.0, 3.0])  # a NumPy array that broadcasts against the (3, 4) tensor
MIXED_OPERANDS = {
    "2.0 * t": lambda t: 2.0 * t,
    "t * 2": lambda t: t * 2,
    "1.5 - t": lambda t: 1.5 - t,
    "t - 1.5": lambda t: t - 1.5,
    "3.0 / t": lambda t: 3.0 / t,
    "t / 3.0": lambda t: t / 3.0,
    "1 + t": lambda t: 1 + t,
    "array - t": lambda t: CONSTANT - t,
    "t - array": lambda t: t - CONSTANT,
    "array * t": lambda t: CONSTANT * t,
    "array / t": lambda t: CONSTANT / t,
    "t + array": lambda t: t + CONSTANT,
    "np.float64 * t": lambda t: np.float64(2.0) * t,
}


@uses_float64
@pytest.mark.parametrize("fn", MIXED_OPERANDS.values(), ids=MIXED_OPERANDS.keys())
def test_python_numbers_and_numpy_arrays_work_on_either_side(fn, rng):
    x = away_from(rng, (3, 4), margin=0.5)
    t = leaf(x)

    np.testing.assert_allclose(fn(t).numpy(), fn(x), err_msg="forward differs from the same NumPy expression")
    gradcheck(fn, [t])


@uses_float64
def test_neg_gradient(rng):
    check_grad(lambda a: -a, rng.standard_normal((3, 4)))


@uses_float64
@pytest.mark.parametrize("exponent", [2, 3, -1, 0.5, 2.5, 1])
def test_power_gradient_with_constant_exponent(exponent, rng):
    x = rng.uniform(0.5, 2.0, size=(3, 4))  # positive, so that fractional powers are defined
    check_grad(lambda a: a ** exponent, x)


@uses_float64
def test_square_of_negative_numbers_has_gradient_2x(rng):
    x = -rng.uniform(0.5, 2.0, size=5)
    t = leaf(x)

    (t ** 2).sum().backward()

    np.testing.assert_allclose(tinyllm.to_numpy(t.grad), 2 * x)


# ---------------------------------------------------------------------- matrix product
MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),  # batched
    ((2, 3, 3, 4), (2, 3, 4, 5)),  # two batch axes
    ((2, 3, 4, 5), (5, 6)),  # a matrix applied to every item of a batch
    ((4, 5), (2, 5, 3)),
    ((2, 1, 3, 4), (3, 4, 2)),  # batch axes broadcast against each other: (2, 1) with (3,)
    ((4,), (4, 5)),  # 1-D on the left: a row vector
    ((3, 4), (4,)),  # 1-D on the right: a column vector
    ((4,), (4,)),  # dot product, a 0-d result
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
]


@uses_float64
@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_gradient(shapes, rng):
    check_grad(lambda a, b: a @ b, rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1]))


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_forward_matches_numpy(shapes, rng):
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])

    out = Tensor(a) @ Tensor(b)

    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-5)


def test_matmul_with_a_numpy_array_on_the_left(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))

    out = a @ Tensor(b)  # ndarray defers to Tensor.__rmatmul__

    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- reductions
REDUCTIONS = [  # (axis, keepdims) over a (2, 3, 4) input
    (None, False),
    (None, True),
    (0, False),
    (1, True),
    (-1, False),
    ((0, 2), False),
    ((0, -1), True),
    ((-3, -2, -1), False),
]


@uses_float64
@pytest.mark.parametrize("axis, keepdims", REDUCTIONS, ids=str)
@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
def test_reduction_gradient(reduction, axis, keepdims, rng):
    x = distinct(rng, (2, 3, 4))  # no ties, so max is differentiable everywhere here
    check_grad(lambda a: getattr(a, reduction)(axis=axis, keepdims=keepdims), x)


@pytest.mark.parametrize("axis, keepdims", REDUCTIONS, ids=str)
@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
def test_reduction_forward_matches_numpy(reduction, axis, keepdims, rng):
    x = rng.standard_normal((2, 3, 4))

    out = getattr(Tensor(x), reduction)(axis=axis, keepdims=keepdims)

    expected = getattr(x, reduction)(axis=axis, keepdims=keepdims)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


@uses_float64
def test_max_splits_the_gradient_evenly_between_ties():
    # Row 0 has its maximum 3 twice; row 1 has a single maximum. The derivative is undefined at a tie,
    # so the convention (each tied element gets an equal share) is checked by hand.
    x = leaf([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]])

    x.max(axis=1).sum().backward()

    np.testing.assert_allclose(tinyllm.to_numpy(x.grad), [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


@uses_float64
def test_global_max_with_a_three_way_tie_gives_each_a_third():
    x = leaf([[5.0, 1.0], [5.0, 5.0]])

    x.max().backward()

    np.testing.assert_allclose(tinyllm.to_numpy(x.grad), [[1 / 3, 0.0], [1 / 3, 1 / 3]])


# ---------------------------------------------------------------------- shape
@uses_float64
@pytest.mark.parametrize("shape", [(6, 4), (-1,), (4, 3, 2), (2, 12)], ids=str)
def test_reshape_gradient(shape, rng):
    check_grad(lambda a: a.reshape(shape), rng.standard_normal((2, 3, 4)))


TRANSPOSES = {
    ".T": lambda a: a.T,
    "transpose()": lambda a: a.transpose(),
    "transpose(1, 0, 2)": lambda a: a.transpose(1, 0, 2),
    "permute((2, 0, 1))": lambda a: a.permute((2, 0, 1)),
    "transpose(-1, 0, 1)": lambda a: a.transpose(-1, 0, 1),
}


@uses_float64
@pytest.mark.parametrize("fn", TRANSPOSES.values(), ids=TRANSPOSES.keys())
def test_transpose_gradient(fn, rng):
    check_grad(fn, rng.standard_normal((2, 3, 4)))


def test_transpose_rejects_axes_that_are_not_a_permutation():
    with pytest.raises(ValueError, match="permutation"):
        Tensor(np.zeros((2, 3))).transpose(0, 0)


# ---------------------------------------------------------------------- indexing
INDICES = {  # into a (4, 5, 3) input
    "integer": 1,
    "negative integer": -1,
    "slice": slice(1, 3),
    "slice and integer": (slice(None), 2),
    "negative step": slice(None, None, -1),
    "negative step, slice, integer": (slice(3, 0, -2), slice(None), 1),
    "ellipsis": (Ellipsis, 0),
    "gather with repeats": np.array([0, 2, 2, 3, 0]),
    "2-D gather": np.array([[0, 1], [1, 1]]),
    "boolean mask": np.array([[True, False, True, False, False]] * 2 + [[False] * 5, [True] * 5]),
    "tuple of arrays": (np.array([0, 1, 1, 3]), np.array([2, 4, 4, 0])),
    "slice then array": (slice(None), np.array([1, 1, 0])),
}


@uses_float64
@pytest.mark.parametrize("index", INDICES.values(), ids=INDICES.keys())
def test_getitem_gradient(index, rng):
    check_grad(lambda a: a[on_device(index)], rng.standard_normal((4, 5, 3)))


@pytest.mark.parametrize("index", INDICES.values(), ids=INDICES.keys())
def test_getitem_forward_matches_numpy(index, rng):
    x = rng.standard_normal((4, 5, 3))

    np.testing.assert_allclose(Tensor(x)[on_device(index)].numpy(), x[index], rtol=1e-6)


@uses_float64
def test_gather_adds_the_gradient_of_every_repeat():
    x = leaf([10.0, 20.0, 30.0, 40.0])

    x[on_device(np.array([0, 2, 2, 2]))].sum().backward()

    np.testing.assert_allclose(tinyllm.to_numpy(x.grad), [1.0, 0.0, 3.0, 0.0])


# ---------------------------------------------------------------------- elementwise functions
UNARY = {  # name: (op, NumPy formula, input maker)
    "exp": (lambda a: a.exp(), np.exp, lambda rng, s: rng.standard_normal(s)),
    "log": (lambda a: a.log(), np.log, lambda rng, s: rng.uniform(0.5, 2.0, size=s)),
    "tanh": (lambda a: a.tanh(), np.tanh, lambda rng, s: rng.standard_normal(s)),
    "sigmoid": (lambda a: a.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), lambda rng, s: 3 * rng.standard_normal(s)),
    "relu": (lambda a: a.relu(), lambda x: np.maximum(x, 0), lambda rng, s: away_from(rng, s, 0.0)),
    "clip": (lambda a: a.clip(-0.5, 0.5), lambda x: np.clip(x, -0.5, 0.5),
             lambda rng, s: away_from(rng, s, 0.5) * rng.choice([-1.0, 1.0], size=s)),
}


@uses_float64
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), ()], ids=str)
@pytest.mark.parametrize("name", UNARY.keys())
def test_unary_gradient(name, shape, rng):
    op, _, make_input = UNARY[name]
    check_grad(op, make_input(rng, shape))


@pytest.mark.parametrize("name", UNARY.keys())
def test_unary_forward_matches_numpy(name, rng):
    op, formula, make_input = UNARY[name]
    x = make_input(rng, (3, 4))

    np.testing.assert_allclose(op(Tensor(x)).numpy(), formula(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_of_large_inputs_neither_overflows_nor_warns(dtype):
    with tinyllm.default_dtype(dtype):
        x = Tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]), requires_grad=True)
        with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
            warnings.simplefilter("error")
            y = x.sigmoid()
            y.sum().backward()

    np.testing.assert_allclose(y.numpy(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert np.isfinite(tinyllm.to_numpy(x.grad)).all()


@uses_float64
@pytest.mark.parametrize("op", [ag.maximum, ag.minimum], ids=["maximum", "minimum"])
@pytest.mark.parametrize("small_shape", [(3, 4), (4,), (3, 1), ()], ids=str)
@pytest.mark.parametrize("swap", [False, True], ids=["big-small", "small-big"])
def test_maximum_and_minimum_gradients(op, small_shape, swap, rng):
    small = rng.standard_normal(small_shape)
    big = small + away_from(rng, (3, 4))  # |big - small| >= 0.1 everywhere: no ties
    check_grad(op, *((small, big) if swap else (big, small)))


@uses_float64
def test_maximum_with_a_number_is_a_relu_at_that_level(rng):
    x = away_from(rng, (3, 4), point=0.2)
    t = leaf(x)

    ag.maximum(t, 0.2).sum().backward()

    np.testing.assert_allclose(tinyllm.to_numpy(t.grad), (x > 0.2).astype(float))


@uses_float64
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4), (3, 4)), ((3, 4), (3, 4), (4,)), ((3, 1), (3, 4), ())],
                         ids=str)
def test_where_gradient(shapes, rng):
    condition_shape, a_shape, b_shape = shapes
    condition = rng.random(condition_shape) > 0.5
    check_grad(lambda a, b: ag.where(condition, a, b), rng.standard_normal(a_shape), rng.standard_normal(b_shape))


@uses_float64
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_gradient(axis, rng):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    shapes = [tuple(n + i if ax == axis % 3 else n for ax, n in enumerate(s)) for i, s in enumerate(shapes)]
    check_grad(lambda *ts: ag.concatenate(ts, axis=axis), *(rng.standard_normal(s) for s in shapes))


@uses_float64
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stack_gradient(axis, rng):
    check_grad(lambda *ts: ag.stack(ts, axis=axis), *(rng.standard_normal((3, 4)) for _ in range(3)))


def test_concatenate_and_stack_forward_match_numpy(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))

    np.testing.assert_allclose(ag.concatenate([Tensor(a), Tensor(b)], axis=1).numpy(),
                               np.concatenate([a, b], axis=1), rtol=1e-6)
    np.testing.assert_allclose(ag.stack([Tensor(a), Tensor(b)], axis=-1).numpy(), np.stack([a, b], axis=-1),
                               rtol=1e-6)


@uses_float64
def test_a_composition_of_primitives_matches_its_numpy_formula_and_gradient(rng):
    # softmax over the last axis, written with primitives (the numerically stable form)
    def softmax(x):
        e = (x - x.max(axis=-1, keepdims=True)).exp()
        return e / e.sum(axis=-1, keepdims=True)

    x = distinct(rng, (2, 5))
    expected = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)

    np.testing.assert_allclose(softmax(leaf(x)).numpy(), expected, rtol=1e-12)
    check_grad(softmax, x)


# ---------------------------------------------------------------------- the graph walk
@pytest.mark.parametrize("depth", [5_000, 20_000])
def test_backward_through_a_deep_chain_needs_no_recursion(depth):
    assert depth > sys.getrecursionlimit()  # a recursive walk would fail here
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(depth):
        y = y + x  # y = (depth + 1) x, built one op at a time

    y.backward()

    assert x.grad.item() == depth + 1


def test_backward_twice_on_separate_graphs_adds_the_gradients():
    x = Tensor(np.ones(3), requires_grad=True)

    (x * 2.0).sum().backward()
    (x * 3.0).sum().backward()

    np.testing.assert_array_equal(tinyllm.to_numpy(x.grad), [5.0, 5.0, 5.0])


def test_gradients_shared_by_an_add_do_not_alias_after_accumulation():
    # The backward of x + y hands the same array to both inputs; accumulating into it in place must not
    # change the other input's gradient.
    x, y = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    (x + y).sum().backward()
    (x + y).sum().backward()
    assert x.grad is not y.grad

    (x * 10.0).sum().backward()  # x alone

    np.testing.assert_array_equal(tinyllm.to_numpy(x.grad), [12.0, 12.0, 12.0])
    np.testing.assert_array_equal(tinyllm.to_numpy(y.grad), [2.0, 2.0, 2.0])


def test_a_tensor_used_twice_gets_both_contributions():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)

    (x * x).sum().backward()

    np.testing.assert_allclose(tinyllm.to_numpy(x.grad), [2.0, -4.0, 6.0])


def test_interior_gradients_are_freed_after_backward():
    x = Tensor(np.ones(3), requires_grad=True)
    hidden = x * 2.0
    loss = hidden.sum()

    loss.backward()

    assert hidden.grad is None and loss.grad is None, "interior gradients should be released"
    assert hidden.is_leaf, "the interior node should have dropped its backward closure (and saved arrays)"
    assert x.grad is not None


def test_backward_on_a_leaf_gives_it_gradient_one():
    x = Tensor(np.array(3.0), requires_grad=True)

    x.backward()

    assert x.grad.item() == 1.0


def test_backward_with_an_explicit_gradient_for_a_non_scalar():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)

    (x * 3.0).backward(np.array([1.0, 10.0]))

    np.testing.assert_allclose(tinyllm.to_numpy(x.grad), [3.0, 30.0])


def test_no_gradient_reaches_an_input_that_does_not_require_it():
    x, w = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3))

    (x * w).sum().backward()

    assert w.grad is None


# ---------------------------------------------------------------------- no_grad and detach
def test_no_grad_builds_no_graph():
    x = Tensor(np.ones(3), requires_grad=True)

    with no_grad():
        y = (x * 2.0).sum()

    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_restores_the_previous_state_even_when_nested():
    with no_grad():
        with no_grad():
            pass
        assert not ag.is_grad_enabled()
    assert ag.is_grad_enabled()


def test_no_grad_in_one_thread_leaves_the_others_recording():
    """Two threads whose no_grad blocks overlap (enter A, enter B, leave A, leave B) — a server's
    threads generating while another trains — leave every thread recording gradients."""
    import threading
    steps = [threading.Event() for _ in range(3)]
    seen = {}

    def thread_a():
        with no_grad():
            steps[0].set()
            steps[1].wait(5)
        seen["a"] = ag.is_grad_enabled()
        steps[2].set()

    def thread_b():
        steps[0].wait(5)
        with no_grad():
            steps[1].set()
            steps[2].wait(5)
            seen["b inside"] = ag.is_grad_enabled()
        seen["b"] = ag.is_grad_enabled()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    with no_grad():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not ag.is_grad_enabled()
    assert seen == {"a": True, "b inside": False, "b": True} and ag.is_grad_enabled()
    with ag.set_grad_enabled(False):
        with ag.set_grad_enabled(True):
            assert ag.is_grad_enabled()
        assert not ag.is_grad_enabled()


def test_detach_cuts_the_graph():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)

    (x * x.detach()).sum().backward()  # the detached factor is a constant

    assert not x.detach().requires_grad
    np.testing.assert_allclose(tinyllm.to_numpy(x.grad), [1.0, 2.0, 3.0])


# ---------------------------------------------------------------------- bad input
def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))


def test_backward_on_a_non_scalar_without_a_gradient_names_the_shape():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2.0

    with pytest.raises(RuntimeError, match=r"\(2, 3\)"):
        y.backward()


def test_backward_on_a_tensor_that_does_not_require_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (Tensor(np.ones(3)) * 2.0).sum().backward()


def test_backward_with_a_wrongly_shaped_gradient_raises():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2.0

    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_an_integer_tensor_cannot_require_grad():
    with pytest.raises(ValueError, match="int"):
        Tensor(np.array([1, 2, 3]), requires_grad=True)


def test_a_tensor_exponent_is_refused():
    with pytest.raises(TypeError, match="constant number"):
        Tensor(np.ones(3), requires_grad=True) ** Tensor(np.array(2.0))


def test_an_integer_tensor_times_a_float_is_not_truncated():
    np.testing.assert_allclose((Tensor(np.array([1, 2, 3])) * 0.5).numpy(), [0.5, 1.0, 1.5])


# ---------------------------------------------------------------------- float32 stays float32
FLOAT32_OPS = {
    "t * 2.0": lambda t: t * 2.0,
    "2.0 * t": lambda t: 2.0 * t,
    "t / 3": lambda t: t / 3,
    "1 - t": lambda t: 1 - t,
    "np.float64(2) * t": lambda t: np.float64(2.0) * t,
    "t + float64 array": lambda t: t + np.ones(4),
    "t ** 2": lambda t: t ** 2,
    "t ** 0.5": lambda t: t ** 0.5,
    "t ** np.float64(2)": lambda t: t ** np.float64(2.0),
    "t @ float64 array": lambda t: t @ np.ones((4, 2)),
    "mean": lambda t: t.mean(axis=0),
    "max": lambda t: t.max(axis=1),
    "exp": lambda t: t.exp(),
    "log": lambda t: t.log(),
    "tanh": lambda t: t.tanh(),
    "sigmoid": lambda t: t.sigmoid(),
    "relu": lambda t: t.relu(),
    "clip": lambda t: t.clip(0.6, 1.5),
    "maximum with 1.0": lambda t: ag.maximum(t, 1.0),
    "where with 0.0": lambda t: ag.where(np.eye(3, 4, dtype=bool), t, 0.0),
    "gather": lambda t: t[on_device(np.array([0, 0, 2]))],
    "concatenate": lambda t: ag.concatenate([t, t], axis=1),
}


@pytest.mark.parametrize("fn", FLOAT32_OPS.values(), ids=FLOAT32_OPS.keys())
def test_float32_stays_float32_in_results_and_gradients(fn, rng):
    with tinyllm.default_dtype("float32"):
        x = Tensor(rng.uniform(0.5, 2.0, size=(3, 4)), requires_grad=True)

        out = fn(x)
        out.sum().backward()

    assert out.dtype == np.float32, f"the result was upcast to {out.dtype}"
    assert x.grad.dtype == np.float32, f"the gradient was upcast to {x.grad.dtype}"


def test_array_of_unwraps_tensors_and_passes_arrays_through():
    """A raw array comes back itself, not its ``.data`` (on CuPy that is a memory pointer)."""
    from tinyllm.autograd import array_of
    a = np.arange(3)
    assert array_of(a) is a
    t = Tensor(a)
    assert array_of(t) is t.data
    assert array_of([1, 2]) == [1, 2]
