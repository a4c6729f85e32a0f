"""Tests of tinyllm.functional.moe: the mixture-of-experts layer's routing, dispatch and load-balancing loss.

Finite differences need care here: the top-k choice is a step function of the router scores, so an input
whose k-th and (k+1)-th router probabilities are within ~eps of each other would flip its choice inside the
central difference and make the "numeric gradient" meaningless. ``routed_inputs`` draws inputs whose
routing has a clear margin at every token.
"""

import numpy as np
import pytest

import tinyllm.functional as F
from tinyllm.autograd import Tensor
from tinyllm.functional.moe import expert_load, top_k_experts
from tinyllm.testing import gradcheck
from tinyllm.backend import to_numpy
from tinyllm import backend

uses_float64 = pytest.mark.usefixtures("float64")
TOLERANCE = 1e-6


def leaf(array) -> Tensor:
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def routed_inputs(rng, n=7, c=6, hidden=5, n_expert=4, k=2, margin=1e-3):
    """x (N, C), router (E, C) and SwiGLU expert weights, with every token's k-th router probability at least
    ``margin`` above its (k+1)-th (and no ties among the chosen, so the order is clear too)."""
    while True:
        x, router = rng.standard_normal((n, c)), rng.standard_normal((n_expert, c))
        ranked = -np.sort(-np_softmax(x @ router.T), axis=-1)              # (N, E) descending
        if np.all(-np.diff(ranked[:, : k + 1], axis=-1) > margin):
            break
    scale_in, scale_hidden = 1 / np.sqrt(c), 1 / np.sqrt(hidden)          # outputs of order 1: small rounding
    experts = (rng.standard_normal((n_expert, hidden, c)) * scale_in, rng.standard_normal((n_expert, hidden, c)) * scale_in,
               rng.standard_normal((n_expert, c, hidden)) * scale_hidden)
    return x, router, experts


def np_moe(x, router, w_gate, w_up, w_down, k, normalize=None):
    """The layer token by token, written out: route, weight, run k experts, mix. Returns (y, aux, load)."""
    normalize = k > 1 if normalize is None else normalize
    n_expert = router.shape[0]
    probs = np_softmax(x @ router.T)                                       # (N, E)
    y, counts = np.zeros_like(x), np.zeros(n_expert)
    for n in range(len(x)):
        chosen = np.argsort(-probs[n], kind="stable")[:k]
        weights = probs[n, chosen] / (probs[n, chosen].sum() if normalize else 1.0)
        for weight, e in zip(weights, chosen):
            gate, up = w_gate[e] @ x[n], w_up[e] @ x[n]
            y[n] += weight * (w_down[e] @ (gate / (1 + np.exp(-gate)) * up))
            counts[e] += 1
    load = counts / counts.sum()
    aux = n_expert * np.sum(load * probs.mean(axis=0))
    return y, aux, load


def run_moe(x, router, experts, k, normalize=None):
    y, aux, load = F.moe(*(Tensor(a, dtype=np.float64) for a in (x, router, *experts)), k, normalize)
    return y.numpy(), aux.item(), to_numpy(load)


# ---------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("k", [1, 2, 3])
def test_moe_equals_routing_each_token_by_hand(k, rng):
    x, router, experts = routed_inputs(rng, k=k)

    y, aux, load = run_moe(x, router, experts, k)

    y_ref, aux_ref, load_ref = np_moe(x, router, *experts, k)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert aux == pytest.approx(aux_ref, rel=1e-12)
    np.testing.assert_allclose(load, load_ref, rtol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_top_k_weights_are_renormalised_or_raw_probabilities(normalize, rng):
    x, router, experts = routed_inputs(rng, k=2)

    y, _, _ = run_moe(x, router, experts, 2, normalize)

    np.testing.assert_allclose(y, np_moe(x, router, *experts, 2, normalize)[0], rtol=1e-12, atol=1e-12)


def test_one_expert_with_top_1_is_the_dense_swiglu_mlp(rng):
    # The router's softmax over a single expert is 1 for every token: the layer is exactly that expert.
    x = rng.standard_normal((2, 5, 6))
    w_gate, w_up, w_down = rng.standard_normal((1, 8, 6)), rng.standard_normal((1, 8, 6)), rng.standard_normal((1, 6, 8))
    t = lambda a: Tensor(a, dtype=np.float64)

    y, _, load = F.moe(t(x), t(rng.standard_normal((1, 6))), t(w_gate), t(w_up), t(w_down), top_k=1)

    dense = F.linear(F.swiglu(F.linear(t(x), t(w_gate[0])), F.linear(t(x), t(w_up[0]))), t(w_down[0]))
    np.testing.assert_allclose(y.numpy(), dense.numpy(), rtol=1e-12, atol=1e-12)
    assert load.tolist() == [1.0]


def test_routing_is_deterministic_and_ties_go_to_the_lower_expert(rng):
    x, router, experts = routed_inputs(rng, k=2)
    first, second = run_moe(x, router, experts, 2), run_moe(x, router, experts, 2)
    np.testing.assert_array_equal(first[0], second[0])

    tied = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.1, 0.4]])
    assert top_k_experts(backend.asarray(tied), 2).tolist() == [[0, 1], [1, 3]]


def test_expert_load_counts_assignments_and_sums_to_one():
    load = to_numpy(expert_load(backend.asarray(np.array([[0, 1], [0, 3], [0, 1]])), 4))

    np.testing.assert_allclose(load, [3 / 6, 2 / 6, 0, 1 / 6])


def test_balancing_loss_is_one_for_uniform_router_and_n_expert_for_collapse(rng):
    x = rng.standard_normal((16, 6))
    _, router, experts = routed_inputs(rng, n=16, k=1)

    _, uniform, _ = run_moe(x, np.zeros_like(router), experts, 1)          # every probability 1/E
    collapsed_router = np.zeros_like(router)
    collapsed_router[0] = 1e3 * np.sign(x).sum(axis=0)                       # expert 0 wins every token by far
    _, collapsed, load = run_moe(np.abs(x) * np.sign(x.sum(axis=0)), collapsed_router, experts, 1)

    assert uniform == pytest.approx(1.0, rel=1e-12)
    assert load.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert collapsed == pytest.approx(4.0, rel=1e-6), "one expert taking every token with p≈1 costs n_expert"


# ---------------------------------------------------------------------------------------- gradients
@uses_float64
@pytest.mark.parametrize("k", [1, 2, 3])
def test_moe_layer_gradients_including_the_balancing_loss(k, rng):
    x, router, experts = routed_inputs(rng, k=k)
    inputs = [leaf(a) for a in (x, router, *experts)]

    def layer(x, router, w_gate, w_up, w_down):
        y, aux, _ = F.moe(x, router, w_gate, w_up, w_down, k)
        return y + aux * 3.0                                               # both paths into every input

    error = gradcheck(layer, inputs, seed=1234)
    assert error < TOLERANCE, f"relative gradient error {error:.3g}"


@uses_float64
def test_balancing_loss_gradient_reaches_the_router(rng):
    x, router, experts = routed_inputs(rng, k=2)
    experts = [Tensor(a, dtype=np.float64) for a in experts]
    error = gradcheck(lambda x, r: F.moe(x, r, *experts, 2)[1], [leaf(x), leaf(router)], seed=1234)
    assert error < TOLERANCE, f"relative gradient error {error:.3g}"


@uses_float64
def test_expert_dispatch_gradients_for_given_weights_and_an_idle_expert(rng):
    # Expert 2 gets no token: its weights must get an exactly zero gradient, the others the right one.
    x = leaf(rng.standard_normal((2, 3, 4)))
    indices = np.array([[[0, 1], [3, 0], [1, 3]], [[1, 0], [0, 3], [3, 1]]])
    weights = leaf(rng.random((2, 3, 2)))
    w_gate, w_up, w_down = leaf(rng.standard_normal((4, 5, 4))), leaf(rng.standard_normal((4, 5, 4))), leaf(rng.standard_normal((4, 4, 5)))

    error = gradcheck(lambda *a: F.moe_experts(a[0], indices, *a[1:]), [x, weights, w_gate, w_up, w_down], seed=1234)

    assert error < TOLERANCE, f"relative gradient error {error:.3g}"
    assert np.all(to_numpy(w_gate.grad[2]) == 0) and np.all(to_numpy(w_down.grad[2]) == 0)


@uses_float64
@pytest.mark.parametrize("normalize", [True, False])
def test_router_weights_gradients(normalize, rng):
    probs = leaf(np_softmax(rng.standard_normal((5, 4))))
    indices = backend.asarray(np.argsort(-probs.numpy(), axis=-1)[:, :2])
    error = gradcheck(lambda p: F.router_weights(p, indices, normalize), [probs], seed=1234)
    assert error < TOLERANCE, f"relative gradient error {error:.3g}"


@uses_float64
def test_load_balancing_loss_gradient(rng):
    probs = leaf(np_softmax(rng.standard_normal((6, 3))))
    indices = backend.asarray(np.argsort(-probs.numpy(), axis=-1)[:, :1])
    error = gradcheck(lambda p: F.load_balancing_loss(p, indices), [probs], seed=1234)
    assert error < TOLERANCE, f"relative gradient error {error:.3g}"


# ---------------------------------------------------------------------------------------- errors
def test_top_k_larger_than_the_number_of_experts_is_an_error_naming_both():
    x, router = Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 3)))
    experts = Tensor(np.zeros((4, 5, 3))), Tensor(np.zeros((4, 5, 3))), Tensor(np.zeros((4, 3, 5)))
    with pytest.raises(ValueError, match="expert_top_k=5 must be between 1 and n_expert=4"):
        F.moe(x, router, *experts, top_k=5)


def test_expert_weights_of_the_wrong_shape_are_named():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"w_down \(4, 5, 3\) must be \(E, C, H\)"):
        F.moe_experts(x, np.zeros((2, 1), dtype=np.int64), Tensor(np.ones((2, 1))), Tensor(np.zeros((4, 5, 3))),
                      Tensor(np.zeros((4, 5, 3))), Tensor(np.zeros((4, 5, 3))))
    with pytest.raises(ValueError, match=r"expert ids must be in \[0, 4\)"):
        F.moe_experts(x, np.full((2, 1), 4), Tensor(np.ones((2, 1))), Tensor(np.zeros((4, 5, 3))),
                      Tensor(np.zeros((4, 5, 3))), Tensor(np.zeros((4, 3, 5))))
