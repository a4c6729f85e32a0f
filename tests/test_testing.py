"""Tests of tinyllm.testing.gradcheck: it passes correct backwards, catches wrong ones, and says where."""

import numpy as np
import pytest

import tinyllm
from tinyllm.autograd import Tensor
from tinyllm.testing import gradcheck

pytestmark = pytest.mark.usefixtures("float64")


def leaf(array) -> Tensor:
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def identity_with_doubled_gradient(a):
    """out = a, whose true gradient is dout, with a backward that wrongly returns 2 * dout."""
    return Tensor._make(a.data, (a,), lambda g: (2 * g,))


def test_a_wrong_backward_is_caught_with_the_input_and_both_values(rng):
    a = leaf(rng.standard_normal((2, 3)))

    with pytest.raises(AssertionError) as failure:
        gradcheck(identity_with_doubled_gradient, [a])

    message = str(failure.value)
    assert "input 0" in message and "(2, 3)" in message, message
    assert "element (" in message, message
    analytic, numeric = (float(message.split(word)[1].split()[0]) for word in ("analytic ", "numeric "))
    assert analytic == pytest.approx(2 * numeric), message


def test_the_failing_input_is_named_when_only_one_of_several_is_wrong(rng):
    def add_with_wrong_second_gradient(a, b):
        return Tensor._make(a.data + b.data, (a, b), lambda g: (g, 2 * g))

    a, b = leaf(rng.standard_normal(3)), leaf(rng.standard_normal(3))

    with pytest.raises(AssertionError, match="input 1"):
        gradcheck(add_with_wrong_second_gradient, [a, b])


def test_a_correct_op_passes_with_a_tiny_relative_error(rng):
    a = leaf(rng.standard_normal((3, 4)))

    worst_relative_error = gradcheck(lambda a: (a * a).tanh(), [a])

    assert 0.0 <= worst_relative_error < 1e-6


def test_float32_inputs_are_refused(rng):
    with tinyllm.default_dtype("float32"):
        a = Tensor(rng.standard_normal(3), requires_grad=True)

    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda a: a * 2.0, [a])


def test_nothing_to_check_is_an_error():
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda a: a * 2.0, [Tensor(np.ones(3))])


def test_max_elements_checks_only_that_many_elements(rng):
    calls = []

    def counted_square(a):
        calls.append(1)
        return a * a

    gradcheck(counted_square, [leaf(rng.standard_normal((10, 10)))], max_elements=5)

    assert len(calls) == 1 + 2 * 5  # one analytic pass, then two forward passes per sampled element


def test_inputs_are_restored_after_the_check(rng):
    x = rng.standard_normal((3, 4))
    a = leaf(x)

    gradcheck(lambda a: a.exp(), [a])

    np.testing.assert_array_equal(a.numpy(), x)


def test_a_non_contiguous_input_is_perturbed_in_place(rng):
    # A transposed view: reshape(-1) of it would be a copy, and perturbing the copy would leave the input
    # unchanged (numeric gradient 0).
    a = Tensor(rng.standard_normal((4, 3)).T, requires_grad=True)

    gradcheck(lambda a: a * a, [a])


def test_other_arguments_and_tuple_outputs_are_accepted(rng):
    a = leaf(rng.standard_normal(4))

    gradcheck(lambda a, scale: (a * scale, "ignored extra output"), [a, 3.0])


def test_an_input_that_does_not_affect_the_output_has_zero_gradient(rng):
    a, unused = leaf(rng.standard_normal(3)), leaf(rng.standard_normal(3))

    gradcheck(lambda a, unused: a * 2.0, [a, unused])
