"""Tests of the KL estimators (tinyllm.rl.kl): k3 is never negative and 0 where the models agree; k1 and k3 are
unbiased (their mean under samples from π is the exact KL); their gradients check in float64."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm import Tensor
from tinyllm.rl.kl import kl_k1, kl_k2, kl_k3
from tinyllm.testing import gradcheck
from tinyllm.backend import to_numpy

log_probs = st.floats(min_value=-30.0, max_value=0.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(log_probs, log_probs), min_size=1, max_size=20))
def test_k3_is_never_negative(pairs):
    logp, ref = (np.array(x, dtype=np.float64) for x in zip(*pairs))
    assert (kl_k3(Tensor(logp), Tensor(ref)).numpy() >= -1e-12).all()


def test_k3_and_k1_are_zero_when_policy_equals_reference(rng):
    logp = np.log(rng.dirichlet(np.ones(6)))
    np.testing.assert_allclose(kl_k3(Tensor(logp), Tensor(logp)).numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(kl_k1(Tensor(logp), Tensor(logp)).numpy(), 0.0, atol=1e-7)


def test_k1_and_k3_are_unbiased_and_k2_is_close(rng):
    pi, ref = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
    exact = float((pi * np.log(pi / ref)).sum())
    # The expectation over y ~ π, computed exactly as a π-weighted sum over the five outcomes.
    lp, lr = Tensor(np.log(pi), dtype=np.float64), Tensor(np.log(ref), dtype=np.float64)
    assert float((pi * kl_k1(lp, lr).numpy()).sum()) == pytest.approx(exact, rel=1e-9)
    assert float((pi * kl_k3(lp, lr).numpy()).sum()) == pytest.approx(exact, rel=1e-9)
    assert float((pi * kl_k2(lp, lr).numpy()).sum()) >= 0
    # ...and by sampling: the k3 average over 200k draws is within a few standard errors of the exact KL.
    draws = rng.choice(5, size=200_000, p=pi)
    values = kl_k3(Tensor(np.log(pi[draws]), dtype=np.float64), Tensor(np.log(ref[draws]), dtype=np.float64)).numpy()
    assert abs(values.mean() - exact) < 5 * values.std() / np.sqrt(values.size)


def test_kl_estimators_gradients(float64, rng):
    logp = Tensor(np.log(rng.dirichlet(np.ones(8))), requires_grad=True)
    ref = Tensor(np.log(rng.dirichlet(np.ones(8))), requires_grad=True)
    for estimator in (kl_k1, kl_k2, kl_k3):
        assert gradcheck(estimator, [logp, ref]) < 1e-6, estimator.__name__


def test_k3_gradient_is_one_minus_ratio(float64):
    logp = Tensor(np.array([-1.0, -2.0]), requires_grad=True)
    ref = np.array([-1.5, -2.0])
    kl_k3(logp, Tensor(ref)).sum().backward()
    np.testing.assert_allclose(to_numpy(logp.grad), 1 - np.exp(ref - logp.numpy()), atol=1e-12)
