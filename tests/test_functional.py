"""Tests of tinyllm.functional: every fused op against finite differences and against a plain-NumPy formula.

Each op gets
  * a gradient check: ``gradcheck`` in float64 on small random inputs of several shapes (batch axes included),
    asserting the norm-wise relative error it returns is below 1e-6;
  * a forward check against the textbook formula written out below with NumPy;
  * checks that bad input raises a ValueError whose message names what was wrong.
The last section checks the memory claims of the docstrings: what each backward closure keeps alive.

Inputs are built with NumPy and wrapped in ``Tensor`` (which moves them to the backend's device); results are
compared through ``.numpy()``, so the file also runs on CuPy with ``TINYLLM_DEVICE=cuda``.
"""

import math

import numpy as np
import pytest

import tinyllm.functional as F
from tinyllm import backend
from tinyllm.autograd import Tensor
from tinyllm.functional.attention import (attention_backward, attention_bias, attention_forward,
                                         blockwise_attention_backward, blockwise_attention_forward, check_heads,
                                         grouped_query_attention_backward, grouped_query_attention_forward,
                                         query_blocks, split_qkv)
from tinyllm.testing import gradcheck
from tinyllm.backend import to_numpy

uses_float64 = pytest.mark.usefixtures("float64")
TOLERANCE = 1e-6  # the largest relative error a float64 gradient check may report


def leaf(array) -> Tensor:
    """A tensor that requires grad (float64 under the ``float64`` fixture)."""
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def check(fn, *inputs):
    """Gradient-check ``fn`` and assert the worst relative error is tiny.

    The upstream gradient's seed differs from the ``rng`` fixture's (0): with the same seed the upstream
    gradient would equal the first input drawn, and for layer norm dy = x has an (almost) zero input gradient,
    which makes a relative error meaningless.
    """
    error = gradcheck(fn, list(inputs), seed=1234)
    assert error < TOLERANCE, f"relative gradient error {error:.3g} is not below {TOLERANCE}"
    return error


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ====================================================================== linear
LINEAR_SHAPES = [(5, 4), (2, 3, 4), (2, 2, 3, 4)]  # x's shape: (N, C_in) and with one or two batch axes


@uses_float64
@pytest.mark.parametrize("x_shape", LINEAR_SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_linear_gradients(x_shape, with_bias, rng):
    x, w = leaf(rng.standard_normal(x_shape)), leaf(rng.standard_normal((3, x_shape[-1])))
    if with_bias:
        check(F.linear, x, w, leaf(rng.standard_normal(3)))
    else:
        check(F.linear, x, w)


def test_linear_is_x_times_w_transposed_plus_b(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)

    y = F.linear(Tensor(x), Tensor(w), Tensor(b))

    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y.numpy(), (x @ w.T + b).astype(np.float32), rtol=1e-5, atol=1e-5)


def test_linear_names_the_shapes_when_features_do_not_match():
    x, w = Tensor(np.zeros((2, 3, 4))), Tensor(np.zeros((5, 6)))

    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(5, 6\)"):
        F.linear(x, w)


def test_linear_rejects_a_bias_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"bias of shape \(4,\)"):
        F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((5, 3))), Tensor(np.zeros(4)))


# ====================================================================== embedding
@uses_float64
@pytest.mark.parametrize("idx_shape", [(6,), (2, 5), (2, 2, 3)], ids=str)
def test_embedding_gradients(idx_shape, rng):
    idx = rng.integers(0, 4, size=idx_shape)  # 4 rows looked up many times: repeats are certain
    check(lambda w: F.embedding(idx, w), leaf(rng.standard_normal((4, 3))))


def test_embedding_looks_up_rows(rng):
    table, idx = rng.standard_normal((7, 3)), np.array([[0, 6, 2], [2, 2, 5]])

    y = F.embedding(idx, Tensor(table))

    np.testing.assert_array_equal(y.numpy(), table[idx].astype(np.float32))


def test_embedding_accumulates_the_gradient_of_repeated_indices():
    weight = Tensor(np.zeros((5, 2)), requires_grad=True)
    idx = np.array([[1, 3, 1], [1, 0, 3]])            # row 1 three times, row 3 twice, row 0 once
    upstream = np.arange(12, dtype=np.float32).reshape(2, 3, 2)

    F.embedding(idx, weight).backward(upstream)

    expected = np.zeros((5, 2), dtype=np.float32)
    for position, row in np.ndenumerate(idx):
        expected[row] += upstream[position]
    np.testing.assert_array_equal(backend.to_numpy(weight.grad), expected)
    assert expected[1].tolist() == [0 + 4 + 6, 1 + 5 + 7]  # the three lookups of row 1 add up


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_embedding_rejects_an_index_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"index {bad} is out of range for a table of 5 rows"):
        F.embedding(np.array([0, bad, 1]), Tensor(np.zeros((5, 2))))


def test_embedding_rejects_float_indices():
    with pytest.raises(ValueError, match="integers"):
        F.embedding(np.array([0.0, 1.0]), Tensor(np.zeros((5, 2))))


# ====================================================================== gelu
@uses_float64
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4)], ids=str)
def test_gelu_gradients(shape, rng):
    check(F.gelu, leaf(3 * rng.standard_normal(shape)))


def test_gelu_is_the_tanh_formula(rng):
    x = np.concatenate([np.linspace(-6, 6, 49), rng.standard_normal(20)])

    y = F.gelu(Tensor(x, dtype=np.float64)).numpy()

    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-15)


def test_gelu_keeps_float32():
    assert F.gelu(Tensor(np.ones(3, dtype=np.float32))).dtype == np.float32


# ====================================================================== dropout
def test_dropout_with_p_zero_or_in_eval_is_the_identity(rng):
    x = Tensor(rng.standard_normal((4, 5)))

    for y in (F.dropout(x, 0.0), F.dropout(x, 0.5, training=False)):
        np.testing.assert_array_equal(y.numpy(), x.numpy())


def test_dropout_keeps_about_one_minus_p_and_scales_survivors():
    p = 0.3
    x = Tensor(np.full((200, 500), 2.0))

    y = F.dropout(x, p, generator=backend.rng(0)).numpy()

    kept = y != 0
    # 100 000 Bernoulli(0.7) draws: the kept fraction's standard deviation is ~0.0015.
    assert abs(kept.mean() - (1 - p)) < 0.01, f"kept fraction {kept.mean():.4f}, expected ≈ {1 - p}"
    np.testing.assert_allclose(y[kept], 2.0 / (1 - p), rtol=1e-6)


def test_dropout_with_the_same_seed_drops_the_same_elements(rng):
    x = Tensor(rng.standard_normal((8, 16)))

    first = F.dropout(x, 0.5, generator=backend.rng(123)).numpy()
    again = F.dropout(x, 0.5, generator=backend.rng(123)).numpy()
    other = F.dropout(x, 0.5, generator=backend.rng(124)).numpy()

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first != 0, other != 0), "a different seed should give a different mask"


def test_dropout_gradient_is_the_mask():
    x = Tensor(np.ones((6, 7)), requires_grad=True)

    y = F.dropout(x, 0.4, generator=backend.rng(1))
    y.backward(np.ones(y.shape))

    # d(x·m)/dx = m, and with x = 1 the output *is* the mask.
    np.testing.assert_array_equal(backend.to_numpy(x.grad), y.numpy())


@uses_float64
def test_dropout_gradients(rng):
    # A fresh generator with a fixed seed per call: every forward of the check drops the same elements.
    check(lambda x: F.dropout(x, 0.3, generator=backend.rng(7)), leaf(rng.standard_normal((3, 4, 5))))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_p_outside_zero_one(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout(Tensor(np.ones(3)), p)


# ====================================================================== layer_norm
@uses_float64
@pytest.mark.parametrize("shape", [(3, 8), (2, 3, 8), (2, 2, 3, 5)], ids=str)
def test_layer_norm_gradients(shape, rng):
    c = shape[-1]
    x = leaf(rng.standard_normal(shape) * 2 + 1)
    w, b = leaf(1 + 0.5 * rng.standard_normal(c)), leaf(rng.standard_normal(c))
    check(F.layer_norm, x, w, b)


@uses_float64
@pytest.mark.parametrize("which", ["weight_only", "bias_only", "neither"])
def test_layer_norm_gradients_without_weight_or_bias(which, rng):
    x = leaf(rng.standard_normal((2, 3, 6)))
    w = leaf(1 + 0.5 * rng.standard_normal(6)) if which == "weight_only" else None
    b = leaf(rng.standard_normal(6)) if which == "bias_only" else None
    check(lambda x, *_: F.layer_norm(x, w, b), x, *[t for t in (w, b) if t is not None])


def test_layer_norm_rows_have_mean_zero_and_variance_one(rng):
    x = rng.standard_normal((4, 5, 32)) * 3 + 7

    y = F.layer_norm(Tensor(x), Tensor(np.ones(32)), Tensor(np.zeros(32))).numpy()

    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=-1), 1, atol=1e-3)  # σ²/(σ² + ε) with σ² ≈ 9


def test_layer_norm_is_the_formula_with_weight_and_bias(rng):
    x, w, b = rng.standard_normal((2, 3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    eps = 1e-5

    y = F.layer_norm(Tensor(x, dtype=np.float64), Tensor(w, dtype=np.float64), Tensor(b, dtype=np.float64), eps)

    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # the biased variance, as in PyTorch
    np.testing.assert_allclose(y.numpy(), (x - mean) / np.sqrt(var + eps) * w + b, rtol=1e-12, atol=1e-12)


def test_layer_norm_rejects_a_weight_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"\(4,\).*8 channels"):
        F.layer_norm(Tensor(np.zeros((2, 8))), Tensor(np.ones(4)), None)


@pytest.mark.parametrize("bias_shape", [(4,), (1,)], ids=str)
def test_layer_norm_rejects_a_bias_of_the_wrong_size(bias_shape):
    # A (1,) bias would broadcast in the forward, then receive a (C,) gradient: it must be refused up front.
    with pytest.raises(ValueError, match=r"bias of shape .*8 channels"):
        F.layer_norm(Tensor(np.zeros((2, 8))), Tensor(np.ones(8)), Tensor(np.zeros(bias_shape)))


# ====================================================================== softmax and log_softmax
SOFTMAX_CASES = [((5,), -1), ((3, 6), -1), ((2, 3, 4), -1), ((2, 3, 4), 1), ((4, 3), 0)]


@uses_float64
@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES, ids=str)
@pytest.mark.parametrize("op", [F.softmax, F.log_softmax], ids=["softmax", "log_softmax"])
def test_softmax_and_log_softmax_gradients(op, shape, axis, rng):
    check(lambda x: op(x, axis=axis), leaf(2 * rng.standard_normal(shape)))


@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES, ids=str)
def test_softmax_rows_sum_to_one_and_equal_exp_over_sum(shape, axis, rng):
    x = 3 * rng.standard_normal(shape)

    p = F.softmax(Tensor(x, dtype=np.float64), axis=axis).numpy()

    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p, np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True), rtol=1e-12)


def test_softmax_is_stable_for_huge_logits():
    p = F.softmax(Tensor(np.array([[1000.0, 1000.0, -1000.0]]))).numpy()

    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES, ids=str)
def test_log_softmax_is_log_of_softmax(shape, axis, rng):
    x = Tensor(3 * rng.standard_normal(shape), dtype=np.float64)

    log_p = F.log_softmax(x, axis=axis).numpy()

    np.testing.assert_allclose(log_p, np.log(F.softmax(x, axis=axis).numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_p, np.log(np_softmax(x.numpy(), axis)), rtol=1e-12, atol=1e-12)


def test_log_softmax_stays_finite_where_softmax_underflows():
    log_p = F.log_softmax(Tensor(np.array([0.0, -2000.0]))).numpy()

    np.testing.assert_allclose(log_p, [0.0, -2000.0])


# ====================================================================== cross_entropy
def np_cross_entropy(logits, targets, ignore_index=-100):
    """Per-position -log softmax(z)[t], and which positions count."""
    z, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    valid = t != ignore_index
    log_p = np.log(np_softmax(z))
    losses = np.where(valid, -log_p[np.arange(t.size), np.where(valid, t, 0)], 0.0)
    return losses.reshape(targets.shape), valid.reshape(targets.shape)


@uses_float64
@pytest.mark.parametrize("logits_shape", [(6, 5), (2, 3, 5), (2, 2, 2, 4)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradients(logits_shape, reduction, rng):
    targets = rng.integers(0, logits_shape[-1], size=logits_shape[:-1])
    targets.reshape(-1)[::3] = -100  # some positions ignored
    check(lambda z: F.cross_entropy(z, targets, reduction=reduction), leaf(2 * rng.standard_normal(logits_shape)))


@uses_float64
def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n(rng):
    logits, targets = 2 * rng.standard_normal((7, 5)), rng.integers(0, 5, size=7)
    z = leaf(logits)
    F.cross_entropy(z, targets).backward()
    np.testing.assert_allclose(to_numpy(z.grad), -np.eye(5)[targets] / 7 + np_softmax(logits) / 7, rtol=1e-12, atol=1e-15)
    check(lambda z: F.cross_entropy(z, targets), leaf(logits))


def test_cross_entropy_is_minus_mean_log_probability_of_the_targets(rng):
    logits, targets = rng.standard_normal((2, 4, 7)), rng.integers(0, 7, size=(2, 4))

    loss = F.cross_entropy(Tensor(logits, dtype=np.float64), targets)

    expected = -np.mean(np.log(np_softmax(logits))[np.arange(2)[:, None], np.arange(4), targets])
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_ignores_positions_and_gives_them_exactly_zero_gradient(rng):
    logits = rng.standard_normal((5, 4))
    targets = np.array([2, -100, 0, -100, 3])
    z = Tensor(logits, requires_grad=True, dtype=np.float64)

    loss = F.cross_entropy(z, targets)
    loss.backward()

    losses, valid = np_cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(losses[valid].mean(), rel=1e-12)  # mean over the 3 counted rows only
    grad = backend.to_numpy(z.grad)
    assert np.all(grad[~valid] == 0.0), "ignored rows must get exactly zero gradient"
    onehot = np.eye(4)[targets[valid]]
    np.testing.assert_allclose(grad[valid], (np_softmax(logits[valid]) - onehot) / valid.sum(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_honours_a_custom_ignore_index(rng):
    logits, targets = rng.standard_normal((4, 3)), np.array([1, 2, 1, 2])

    loss = F.cross_entropy(Tensor(logits, dtype=np.float64), targets, ignore_index=2)

    losses, valid = np_cross_entropy(logits, targets, ignore_index=2)
    assert valid.tolist() == [True, False, True, False]
    assert loss.item() == pytest.approx(losses[valid].mean(), rel=1e-12)


def test_cross_entropy_sum_and_none_reductions(rng):
    logits, targets = rng.standard_normal((2, 3, 6)), np.array([[0, 5, -100], [-100, 2, 2]])
    z = Tensor(logits, dtype=np.float64)

    total = F.cross_entropy(z, targets, reduction="sum")
    each = F.cross_entropy(z, targets, reduction="none")

    losses, _ = np_cross_entropy(logits, targets)
    assert total.item() == pytest.approx(losses.sum(), rel=1e-12)
    assert each.shape == (2, 3)
    np.testing.assert_allclose(each.numpy(), losses, rtol=1e-12)
    assert each.numpy()[0, 2] == 0.0 and each.numpy()[1, 0] == 0.0, "ignored positions have loss 0"


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_with_every_target_ignored_is_zero_with_zero_gradient(reduction, rng):
    z = Tensor(rng.standard_normal((3, 5)), requires_grad=True)

    loss = F.cross_entropy(z, np.full(3, -100), reduction=reduction)
    loss.backward()

    assert loss.item() == 0.0 and np.isfinite(loss.item())
    assert np.all(backend.to_numpy(z.grad) == 0.0)


def test_cross_entropy_keeps_float32(rng):
    loss = F.cross_entropy(Tensor(rng.standard_normal((3, 5))), np.array([0, 1, 2]))
    assert loss.dtype == np.float32


def test_cross_entropy_names_an_out_of_range_target_and_its_position():
    with pytest.raises(ValueError, match=r"target 7 at position 2 is outside \[0, 5\)"):
        F.cross_entropy(Tensor(np.zeros((4, 5))), np.array([0, 4, 7, 1]))


def test_cross_entropy_rejects_a_negative_target_that_is_not_ignore_index():
    with pytest.raises(ValueError, match=r"target -3 at position 1"):
        F.cross_entropy(Tensor(np.zeros((2, 5))), np.array([0, -3]))


def test_cross_entropy_rejects_targets_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"targets of shape \(2, 4\).*logits of shape \(2, 3, 5\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3, 5))), np.zeros((2, 4), dtype=np.int64))


def test_cross_entropy_rejects_float_targets_and_unknown_reductions():
    with pytest.raises(ValueError, match="integers"):
        F.cross_entropy(Tensor(np.zeros((2, 5))), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(Tensor(np.zeros((2, 5))), np.array([0, 1]), reduction="avg")


# ====================================================================== attention
def np_attention(q, k, v, causal=True, mask=None):
    """softmax(Q Kᵀ/√D) V with the causal and padding masks written out; fully masked rows give 0."""
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)            # (B, H, Tq, Tk)
    allowed = np.ones(scores.shape, dtype=bool)
    if causal:  # query i sits at absolute position Tk - Tq + i and sees keys up to it
        query_pos = np.arange(t_q)[:, None] + (t_k - t_q)
        allowed &= np.arange(t_k)[None, :] <= query_pos
    if mask is not None:
        allowed &= np.broadcast_to(mask, scores.shape)
    scores = np.where(allowed, scores, -np.inf)
    probs = np.zeros_like(scores)
    rows = allowed.any(axis=-1)
    probs[rows] = np_softmax(scores[rows])
    return probs @ v


def qkv_arrays(rng, b=2, h=3, t_q=5, t_k=5, d=4):
    return rng.standard_normal((b, h, t_q, d)), rng.standard_normal((b, h, t_k, d)), rng.standard_normal((b, h, t_k, d))


def padding_mask(lengths, t):
    """(B, 1, 1, T): True for the first ``lengths[b]`` keys of each sequence."""
    return (np.arange(t)[None, :] < np.array(lengths)[:, None])[:, None, None, :]


def sdpa64(q, k, v, **kwargs):
    return F.scaled_dot_product_attention(*(Tensor(a, dtype=np.float64) for a in (q, k, v)), **kwargs).numpy()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_attention_is_masked_softmax_of_scaled_scores_times_values(causal, rng):
    q, k, v = qkv_arrays(rng)

    np.testing.assert_allclose(sdpa64(q, k, v, causal=causal), np_attention(q, k, v, causal), rtol=1e-12, atol=1e-12)


def test_causal_attention_first_query_sees_only_the_first_key(rng):
    q, k, v = qkv_arrays(rng)

    y = sdpa64(q, k, v, causal=True)

    np.testing.assert_allclose(y[:, :, 0], v[:, :, 0], rtol=1e-12)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_attention_with_a_padding_mask(causal, rng):
    q, k, v = qkv_arrays(rng, b=3, t_q=6, t_k=6)
    mask = padding_mask([6, 4, 1], 6)                           # (B, 1, 1, T)

    y = sdpa64(q, k, v, causal=causal, mask=mask)

    np.testing.assert_allclose(y, np_attention(q, k, v, causal, mask), rtol=1e-12, atol=1e-12)
    # Sequence 2 has one real key: every query reads exactly value 0.
    np.testing.assert_allclose(y[2], np.broadcast_to(v[2, :, :1], y[2].shape), rtol=1e-12)


def test_attention_query_that_sees_no_key_outputs_zeros(rng):
    q, k, v = qkv_arrays(rng, b=1, h=1, t_q=3, t_k=3)
    mask = np.array([False, True, True])[None, None, None, :]   # key 0 is padding; causal query 0 sees only it

    y = sdpa64(q, k, v, causal=True, mask=mask)

    assert np.all(y[0, 0, 0] == 0.0) and np.all(np.isfinite(y))
    np.testing.assert_allclose(y, np_attention(q, k, v, True, mask), rtol=1e-12, atol=1e-12)


def test_attention_with_fewer_queries_than_keys_is_the_kv_cache_case(rng):
    q, k, v = qkv_arrays(rng, t_q=7, t_k=7)

    full = sdpa64(q, k, v, causal=True)
    last_two = sdpa64(q[:, :, -2:], k, v, causal=True)          # queries 5 and 6 against all 7 cached keys

    np.testing.assert_allclose(last_two, np_attention(q[:, :, -2:], k, v, True), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last_two, full[:, :, -2:], rtol=1e-12, atol=1e-12)


ATTENTION_GRAD_CASES = {
    "causal": dict(t_q=4, t_k=4, causal=True, mask=None),
    "full_cross": dict(t_q=3, t_k=5, causal=False, mask=None),
    "kv_cache": dict(t_q=2, t_k=5, causal=True, mask=None),
    "padding": dict(t_q=4, t_k=4, causal=True, mask=padding_mask([4, 2], 4)),
    "padding_full": dict(t_q=4, t_k=4, causal=False, mask=padding_mask([3, 1], 4)),
}


@uses_float64
@pytest.mark.parametrize("case", ATTENTION_GRAD_CASES.values(), ids=ATTENTION_GRAD_CASES.keys())
def test_attention_gradients(case, rng):
    q, k, v = (leaf(a) for a in qkv_arrays(rng, b=2, h=2, t_q=case["t_q"], t_k=case["t_k"], d=3))
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, case["causal"], case["mask"]), q, k, v)


def split_heads(qkv, n_head):
    """(B, T, 3C) → three (B, H, T, D) arrays, written out the slow and obvious way."""
    b, t, three_c = qkv.shape
    c = three_c // 3
    return [qkv[..., i * c:(i + 1) * c].reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3) for i in range(3)]


@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "causal_padding"])
def test_self_attention_equals_attention_on_split_heads(with_mask, rng):
    b, t, n_head, c = 2, 5, 3, 12
    qkv = rng.standard_normal((b, t, 3 * c))
    mask = padding_mask([5, 3], t) if with_mask else None

    y = F.self_attention(Tensor(qkv, dtype=np.float64), n_head, mask=mask).numpy()

    heads = sdpa64(*split_heads(qkv, n_head), causal=True, mask=mask)         # (B, H, T, D)
    merged = heads.transpose(0, 2, 1, 3).reshape(b, t, c)                     # heads side by side
    np.testing.assert_allclose(y, merged, rtol=1e-12, atol=1e-12)


@uses_float64
@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "causal_padding"])
def test_self_attention_gradients(with_mask, rng):
    mask = padding_mask([4, 2], 4) if with_mask else None
    check(lambda qkv: F.self_attention(qkv, 2, mask=mask), leaf(rng.standard_normal((2, 4, 3 * 6))))


@pytest.fixture
def small_query_blocks(monkeypatch):
    """Blocks of 2 queries, so that these tiny shapes go through blockwise_attention_forward's loop."""
    import tinyllm.functional.attention as attention
    monkeypatch.setattr(attention, "QUERY_BLOCK", 2)
    return attention


def _mask_with_diagonal(rng, shape):
    mask = rng.random(shape) < 0.6
    mask[..., np.arange(shape[-2]), np.arange(shape[-2]) + shape[-1] - shape[-2]] = True   # every query sees itself
    return mask


QUERY_BLOCK_CASES = {                         # heads, kv heads, queries, keys, mask
    "self": (2, 2, 7, 7, None),
    "kv_cache_offset": (2, 2, 5, 9, None),
    "grouped": (4, 2, 6, 6, None),
    "padding": (2, 2, 7, 7, padding_mask([7, 3], 7)),
    "per_query_grouped": (2, 1, 6, 8, "random"),
}


@uses_float64
@pytest.mark.parametrize("case", QUERY_BLOCK_CASES.values(), ids=QUERY_BLOCK_CASES.keys())
def test_attention_in_query_blocks_equals_the_reference_and_gradchecks(case, small_query_blocks, rng):
    n_head, n_kv_head, t_q, t_k, mask = case
    mask = _mask_with_diagonal(rng, (2, n_head, t_q, t_k)) if isinstance(mask, str) else mask
    q, k, v = rng.standard_normal((2, n_head, t_q, 3)), rng.standard_normal((2, n_kv_head, t_k, 3)), rng.standard_normal((2, n_kv_head, t_k, 3))
    assert len(query_blocks(t_q, t_k, small_query_blocks.QUERY_BLOCK)) > 1

    y = sdpa64(q, k, v, causal=True, mask=mask)

    group = n_head // n_kv_head
    expected = np_attention(q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), causal=True, mask=mask)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, True, mask), leaf(q), leaf(k), leaf(v))


@uses_float64
def test_raw_blockwise_attention_equals_one_block_forward_and_backward(small_query_blocks, rng):
    q, k, v, dy = (backend.asarray(rng.standard_normal(shape), dtype=np.float64)
                   for shape in ((2, 4, 5, 3), (2, 2, 9, 3), (2, 2, 9, 3), (2, 4, 5, 3)))

    y, caches = blockwise_attention_forward(q, k, v, block=2)
    grads = blockwise_attention_backward(dy, caches)

    assert [c[:3] for c in caches] == [(0, 2, 6), (2, 4, 8), (4, 5, 9)]   # queries against the keys they see
    y_whole, cache = grouped_query_attention_forward(q, k, v, attention_bias(5, 9, True, None, q.dtype))
    np.testing.assert_allclose(to_numpy(y), to_numpy(y_whole), rtol=1e-12, atol=1e-12)
    for got, expected in zip(grads, grouped_query_attention_backward(dy, cache), strict=True):
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-11, atol=1e-12)


@uses_float64
def test_self_attention_in_query_blocks_gradients(small_query_blocks, rng):
    check(lambda qkv: F.self_attention(qkv, 2, mask=padding_mask([5, 4], 5)), leaf(rng.standard_normal((2, 5, 3 * 6))))


@uses_float64
def test_raw_attention_forward_and_backward_agree_with_primitive_autograd(rng):
    """attention_forward/attention_backward against the same math composed from autograd primitives."""
    q, k, v = qkv_arrays(rng, b=2, h=2, t_q=3, t_k=5, d=4)
    upstream = rng.standard_normal((2, 2, 3, 4))

    bias = attention_bias(3, 5, True, None, np.float64)
    y, cache = attention_forward(*(backend.asarray(a) for a in (q, k, v)), bias)
    dq, dk, dv = attention_backward(backend.asarray(upstream), cache)

    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    future = np.triu(np.ones((3, 5), dtype=bool), k=5 - 3 + 1)
    scores = (tq @ tk.transpose(0, 1, 3, 2)) * (1 / math.sqrt(4)) + np.where(future, -1e9, 0.0)
    e = (scores - scores.max(axis=-1, keepdims=True)).exp()
    y_ref = (e / e.sum(axis=-1, keepdims=True)) @ tv
    y_ref.backward(upstream)

    np.testing.assert_allclose(backend.to_numpy(y), y_ref.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(cache[3]).sum(axis=-1), 1.0, rtol=1e-12)   # P
    for name, mine, ref in (("dq", dq, tq), ("dk", dk, tk), ("dv", dv, tv)):
        np.testing.assert_allclose(backend.to_numpy(mine), backend.to_numpy(ref.grad), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("shapes", [
    ((2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 6, 4)),   # k and v differ
    ((2, 3, 5, 4), (2, 3, 5, 8), (2, 3, 5, 8)),   # head sizes differ
    ((2, 3, 5, 4), (1, 3, 5, 4), (1, 3, 5, 4)),   # batch differs
    ((3, 5, 4), (3, 5, 4), (3, 5, 4)),            # no head axis
    ((2, 3, 5, 4), (2, 3, 7, 5, 4), (2, 3, 7, 5, 4)),  # k and v with an extra axis
], ids=["k_vs_v", "head_size", "batch", "3d", "5d_kv"])
def test_attention_rejects_mismatched_q_k_v_and_names_the_shapes(shapes):
    q, k, v = (Tensor(np.zeros(s)) for s in shapes)

    with pytest.raises(ValueError, match=r"got q \(.*\), k \(.*\), v \(.*\)"):
        F.scaled_dot_product_attention(q, k, v)


def test_causal_attention_rejects_more_queries_than_keys():
    q, kv = Tensor(np.zeros((1, 1, 4, 2))), Tensor(np.zeros((1, 1, 3, 2)))
    with pytest.raises(ValueError, match="4 queries, 3 keys"):
        F.scaled_dot_product_attention(q, kv, kv, causal=True)


def test_attention_rejects_a_non_boolean_mask():
    x = Tensor(np.zeros((2, 1, 3, 2)))
    with pytest.raises(ValueError, match="boolean"):
        F.scaled_dot_product_attention(x, x, x, mask=np.ones((2, 1, 1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="boolean"):
        F.self_attention(Tensor(np.zeros((2, 3, 6))), 1, mask=np.ones((2, 1, 1, 3), dtype=np.float32))


@pytest.mark.parametrize("mask_shape", [(3, 1, 1, 4), (2, 1, 1, 5), (4, 2, 1, 1, 4)], ids=str)
def test_attention_rejects_a_mask_that_does_not_broadcast_to_the_scores(mask_shape):
    x = Tensor(np.zeros((2, 1, 4, 2)))                          # scores (2, 1, 4, 4)
    with pytest.raises(ValueError, match=rf"mask of shape \({mask_shape[0]}, .*does not broadcast.*\(2, 1, 4, 4\)"):
        F.scaled_dot_product_attention(x, x, x, mask=np.ones(mask_shape, dtype=bool))


def test_attention_rejects_a_mask_that_would_grow_the_batch():
    # Broadcasting *with* the scores is not enough: a (4, 1, 1, T) mask for B = 1 would silently make 4 outputs.
    x = Tensor(np.zeros((1, 2, 3, 2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        F.scaled_dot_product_attention(x, x, x, mask=np.ones((4, 1, 1, 3), dtype=bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        F.self_attention(Tensor(np.zeros((1, 3, 6))), 2, mask=np.ones((4, 1, 1, 3), dtype=bool))


def test_self_attention_rejects_channels_not_split_into_heads():
    with pytest.raises(ValueError, match="n_head=4"):
        F.self_attention(Tensor(np.zeros((1, 2, 18))), 4)       # C = 6 is not divisible by 4
    with pytest.raises(ValueError, match="3 × C"):
        F.self_attention(Tensor(np.zeros((1, 2, 10))), 1)


# ====================================================================== rms_norm
@uses_float64
@pytest.mark.parametrize("shape", [(3, 8), (2, 3, 8), (2, 2, 3, 5)], ids=str)
def test_rms_norm_gradients(shape, rng):
    x = leaf(rng.standard_normal(shape) * 2 + 1)
    check(F.rms_norm, x, leaf(1 + 0.5 * rng.standard_normal(shape[-1])))


@uses_float64
def test_rms_norm_gradients_without_weight(rng):
    check(lambda x: F.rms_norm(x, None), leaf(rng.standard_normal((2, 3, 6))))


def test_rms_norm_is_the_formula(rng):
    x, w = rng.standard_normal((2, 3, 6)) * 3 + 2, rng.standard_normal(6)
    eps = 1e-5

    y = F.rms_norm(Tensor(x, dtype=np.float64), Tensor(w, dtype=np.float64), eps).numpy()

    # No mean is subtracted: only each row's root-mean-square is divided out.
    np.testing.assert_allclose(y, x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps) * w, rtol=1e-12, atol=1e-12)


def test_rms_norm_rows_have_unit_root_mean_square_and_keep_their_mean_sign(rng):
    x = rng.standard_normal((4, 32)) + 5

    y = F.rms_norm(Tensor(x, dtype=np.float64), None).numpy()

    np.testing.assert_allclose(np.sqrt((y ** 2).mean(axis=-1)), 1, atol=1e-5)
    assert np.all(y.mean(axis=-1) > 0.9), "unlike layer_norm, rms_norm must not centre the rows"


def test_rms_norm_keeps_float32_and_rejects_a_weight_of_the_wrong_size():
    assert F.rms_norm(Tensor(np.ones((2, 4), dtype=np.float32)), Tensor(np.ones(4, dtype=np.float32))).dtype == np.float32
    with pytest.raises(ValueError, match=r"rms_norm: weight of shape \(5,\).*4 channels"):
        F.rms_norm(Tensor(np.zeros((2, 4))), Tensor(np.ones(5)))


# ====================================================================== silu and swiglu
@uses_float64
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4)], ids=str)
def test_silu_gradients(shape, rng):
    check(F.silu, leaf(3 * rng.standard_normal(shape)))


@uses_float64
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)], ids=str)
def test_swiglu_gradients(shape, rng):
    check(F.swiglu, leaf(3 * rng.standard_normal(shape)), leaf(rng.standard_normal(shape)))


def test_silu_is_x_times_sigmoid_and_finite_far_out():
    x = np.concatenate([np.linspace(-8, 8, 33), [-800.0, 800.0]])

    y = F.silu(Tensor(x, dtype=np.float64)).numpy()

    with np.errstate(over="ignore"):
        expected = x / (1 + np.exp(-x))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-300)
    assert y[-2] == 0.0 and y[-1] == 800.0


def test_swiglu_is_silu_of_gate_times_up(rng):
    gate, up = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))

    y = F.swiglu(Tensor(gate, dtype=np.float64), Tensor(up, dtype=np.float64)).numpy()

    np.testing.assert_allclose(y, gate / (1 + np.exp(-gate)) * up, rtol=1e-12, atol=1e-14)


def test_swiglu_keeps_float32_and_rejects_mismatched_shapes():
    ones = np.ones((2, 3), dtype=np.float32)
    assert F.swiglu(Tensor(ones), Tensor(ones)).dtype == np.float32
    assert F.silu(Tensor(ones)).dtype == np.float32
    with pytest.raises(ValueError, match=r"gate \(2, 3\) and up \(2, 4\)"):
        F.swiglu(Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 4))))


# ====================================================================== grouped-query attention
def repeat_kv(a, group):
    """(B, H_kv, T, D) → (B, H_kv·G, T, D): each kv head copied for its G query heads (HF's repeat_kv)."""
    return np.repeat(a, group, axis=1)


@pytest.mark.parametrize("n_kv_head", [1, 2], ids=["multi_query", "two_groups"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_grouped_query_attention_equals_attention_with_repeated_kv_heads(n_kv_head, causal, rng):
    q = rng.standard_normal((2, 4, 5, 3))
    k, v = rng.standard_normal((2, n_kv_head, 5, 3)), rng.standard_normal((2, n_kv_head, 5, 3))
    mask = padding_mask([5, 3], 5)

    y = sdpa64(q, k, v, causal=causal, mask=mask)

    group = 4 // n_kv_head
    expected = np_attention(q, repeat_kv(k, group), repeat_kv(v, group), causal, mask)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_grouped_query_attention_with_a_per_head_mask(rng):
    # A mask with a head axis must reach the right query head through the (H_kv, G) grouping.
    q, k, v = rng.standard_normal((1, 4, 4, 2)), rng.standard_normal((1, 2, 4, 2)), rng.standard_normal((1, 2, 4, 2))
    mask = rng.random((1, 4, 4, 4)) < 0.7
    mask[..., 0] = True                                          # every query sees at least one key

    y = sdpa64(q, k, v, causal=False, mask=mask)

    np.testing.assert_allclose(y, np_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), False, mask), rtol=1e-12, atol=1e-12)


@uses_float64
@pytest.mark.parametrize("case", ["causal", "kv_cache", "padding"])
def test_grouped_query_attention_gradients(case, rng):
    t_q = 2 if case == "kv_cache" else 4
    mask = padding_mask([4, 2], 4) if case == "padding" else None
    q = leaf(rng.standard_normal((2, 4, t_q, 3)))
    k, v = leaf(rng.standard_normal((2, 2, 4, 3))), leaf(rng.standard_normal((2, 2, 4, 3)))
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, True, mask), q, k, v)


def split_gqa_heads(qkv, n_head, n_kv_head):
    """(B, T, (H + 2 H_kv)·D) → q (B, H, T, D), k and v (B, H_kv, T, D), the slow and obvious way."""
    b, t, width = qkv.shape
    d = width // (n_head + 2 * n_kv_head)
    q, k, v = np.split(qkv, [n_head * d, (n_head + n_kv_head) * d], axis=-1)
    return [a.reshape(b, t, -1, d).transpose(0, 2, 1, 3) for a in (q, k, v)]


def test_self_attention_with_fewer_kv_heads_equals_attention_on_split_heads(rng):
    b, t, n_head, n_kv_head, d = 2, 5, 6, 2, 4
    qkv = rng.standard_normal((b, t, (n_head + 2 * n_kv_head) * d))

    y = F.self_attention(Tensor(qkv, dtype=np.float64), n_head, n_kv_head=n_kv_head).numpy()

    q, k, v = split_gqa_heads(qkv, n_head, n_kv_head)
    heads = np_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), causal=True)     # (B, H, T, D)
    np.testing.assert_allclose(y, heads.transpose(0, 2, 1, 3).reshape(b, t, n_head * d), rtol=1e-12, atol=1e-12)


@uses_float64
@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "causal_padding"])
def test_self_attention_with_fewer_kv_heads_gradients(with_mask, rng):
    mask = padding_mask([4, 2], 4) if with_mask else None
    check(lambda qkv: F.self_attention(qkv, 4, mask=mask, n_kv_head=2), leaf(rng.standard_normal((2, 4, 8 * 3))))


def test_attention_names_query_heads_that_kv_heads_do_not_divide():
    q, kv = Tensor(np.zeros((1, 3, 2, 4))), Tensor(np.zeros((1, 2, 2, 4)))
    with pytest.raises(ValueError, match="3 query heads must be a multiple of the 2 key/value heads"):
        F.scaled_dot_product_attention(q, kv, kv)
    with pytest.raises(ValueError, match="n_head=6 must be divisible by n_kv_head=4"):
        F.self_attention(Tensor(np.zeros((1, 2, 14 * 2))), 6, n_kv_head=4)


# ====================================================================== memory: what each backward keeps
def _arrays_in(nested):
    for item in nested:
        if isinstance(item, (list, tuple)):
            yield from _arrays_in(item)
        elif isinstance(item, backend.xp.ndarray):
            yield item


def saved_extra_elements(out, inputs):
    """Elements of the arrays that ``out``'s backward closure keeps alive, besides the inputs' own arrays.

    Walks the closure cells (and the cells of closures found there, for wrapped backwards); Tensors found must
    be inputs, and arrays that share memory with an input (views such as split heads) are not counted.
    """
    xp = backend.xp
    input_arrays = [t.data for t in inputs]
    seen, extra, pending = set(), 0, [out._backward]
    while pending:
        fn = pending.pop()
        for cell in fn.__closure__ or ():
            value = cell.cell_contents
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, (list, tuple)):                     # e.g. per-block saved arrays
                extra += sum(v.size for v in _arrays_in(value)
                             if not any(xp.may_share_memory(v, a) for a in input_arrays))
            elif callable(value) and getattr(value, "__closure__", None):
                pending.append(value)
            elif isinstance(value, Tensor):
                assert any(value is t for t in inputs), f"backward keeps a Tensor {value} that is not an input"
            elif isinstance(value, xp.ndarray):
                if not any(xp.may_share_memory(value, a) for a in input_arrays):
                    extra += value.size
    return extra


def test_attention_backward_keeps_only_the_probabilities_and_the_output(rng):
    b, h, t_q, t_k, d = 2, 3, 4, 6, 5
    q, k, v = (Tensor(a, requires_grad=True) for a in qkv_arrays(rng, b, h, t_q, t_k, d))

    out = F.scaled_dot_product_attention(q, k, v, causal=True, mask=padding_mask([6, 3], t_k))

    # P (B, H, Tq, Tk) and Y (B, H, Tq, D), for rowsum(dP ⊙ P) = rowsum(dY ⊙ Y)
    assert saved_extra_elements(out, (q, k, v)) == b * h * t_q * t_k + b * h * t_q * d


def test_self_attention_backward_keeps_only_the_probabilities_and_the_output(rng):
    b, t, n_head, c = 2, 6, 3, 12
    qkv = Tensor(rng.standard_normal((b, t, 3 * c)), requires_grad=True)

    out = F.self_attention(qkv, n_head)

    # P (B, H, T, T) and the heads' output (B, H, T, D); q, k and v are views into the input qkv.
    assert saved_extra_elements(out, (qkv,)) == b * n_head * t * t + b * t * c


def test_attention_in_query_blocks_keeps_only_the_probabilities_it_computed(small_query_blocks, rng):
    b, h, t, d = 2, 3, 8, 5
    q, k, v = (Tensor(a, requires_grad=True) for a in qkv_arrays(rng, b, h, t, t, d))

    out = F.scaled_dot_product_attention(q, k, v, causal=True)

    # Blocks of 2 queries see 2, 4, 6, 8 keys: 40 probabilities per head instead of 64; and Y.
    assert saved_extra_elements(out, (q, k, v)) == b * h * 2 * (2 + 4 + 6 + 8) + b * h * t * d


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_norm_backward_keeps_only_x_hat_and_rstd(affine, rng):
    x = Tensor(rng.standard_normal((4, 5, 16)), requires_grad=True)
    params = (Tensor(np.ones(16), requires_grad=True), Tensor(np.zeros(16), requires_grad=True)) if affine else (None, None)

    out = F.layer_norm(x, *params)

    rows = 4 * 5
    assert saved_extra_elements(out, (x,) + tuple(p for p in params if p is not None)) <= x.size + rows


def test_cross_entropy_backward_keeps_the_probabilities_and_per_row_indices(rng):
    logits = Tensor(rng.standard_normal((3, 4, 50)), requires_grad=True)

    out = F.cross_entropy(logits, rng.integers(0, 50, size=(3, 4)))

    rows = 3 * 4
    assert saved_extra_elements(out, (logits,)) <= logits.size + 4 * rows  # p (N, V) + a few (N,) vectors


def test_gelu_and_dropout_keep_at_most_one_array_of_the_input_size(rng):
    x = Tensor(rng.standard_normal((3, 40)), requires_grad=True)

    assert saved_extra_elements(F.gelu(x), (x,)) <= x.size               # tanh u (x itself is the input)
    assert saved_extra_elements(F.dropout(x, 0.5), (x,)) <= x.size      # the scaled mask


def test_rms_norm_backward_keeps_only_x_hat_and_rstd(rng):
    x, w = Tensor(rng.standard_normal((4, 5, 16)), requires_grad=True), Tensor(np.ones(16), requires_grad=True)

    assert saved_extra_elements(F.rms_norm(x, w), (x, w)) <= x.size + 4 * 5


def test_silu_and_swiglu_keep_one_array_of_the_input_size(rng):
    gate, up = (Tensor(rng.standard_normal((3, 40)), requires_grad=True) for _ in range(2))

    assert saved_extra_elements(F.silu(gate), (gate,)) <= gate.size              # σ(x)
    assert saved_extra_elements(F.swiglu(gate, up), (gate, up)) <= gate.size     # σ(gate)


def test_grouped_self_attention_keeps_probs_and_queries_of_the_query_heads_only(rng):
    # With H_kv < H: P (B, H, T, T), the stacked queries (B, T, C) and the output Y (B, T, C): K
    # and V are never repeated.
    b, t, n_head, n_kv_head, d = 2, 6, 4, 1, 3
    qkv = Tensor(rng.standard_normal((b, t, (n_head + 2 * n_kv_head) * d)), requires_grad=True)

    out = F.self_attention(qkv, n_head, n_kv_head=n_kv_head)

    assert saved_extra_elements(out, (qkv,)) <= b * n_head * t * t + 2 * b * t * n_head * d


def test_moe_experts_backward_keeps_the_hidden_pre_activations_and_the_sort(rng):
    # G and U (N·k × H each) plus four N·k vectors (expert ids, sort order, token of each slot, weights):
    # no (N·k × C) copy of the gathered tokens (re-gathered from x) and no hidden activation h (recomputed).
    n, c, hidden, n_expert, k = 12, 6, 5, 4, 2
    x = Tensor(rng.standard_normal((n, c)), requires_grad=True)
    weights = Tensor(rng.random((n, k)), requires_grad=True)
    experts = [Tensor(rng.standard_normal(s), requires_grad=True)
               for s in ((n_expert, hidden, c), (n_expert, hidden, c), (n_expert, c, hidden))]
    indices = np.stack([rng.permutation(n_expert)[:k] for _ in range(n)])

    out = F.moe_experts(x, indices, weights, *experts)

    assert saved_extra_elements(out, (x, weights, *experts)) <= 2 * n * k * hidden + 4 * n * k


def test_check_heads_defaults_to_multi_head_and_rejects_uneven_groups():
    assert check_heads(6, None) == 6 and check_heads(6, 3) == 3 and check_heads(6, 1) == 1
    for bad in (4, 0):
        with pytest.raises(ValueError, match=rf"n_head=6 must be divisible by n_kv_head={bad}"):
            check_heads(6, bad)


def test_split_qkv_gives_views_of_the_query_key_and_value_heads(rng):
    B, T, H, H_kv, D = 2, 3, 4, 2, 5
    qkv = rng.normal(size=(B, T, (H + 2 * H_kv) * D))
    q, k, v = split_qkv(qkv, H, H_kv)
    assert q.shape == (B, H, T, D) and k.shape == v.shape == (B, H_kv, T, D)
    heads = qkv.reshape(B, T, H + 2 * H_kv, D)
    np.testing.assert_array_equal(q[1, 3, 2], heads[1, 2, 3])
    np.testing.assert_array_equal(k[0, 1, 1], heads[0, 1, H + 1])
    np.testing.assert_array_equal(v[1, 0, 2], heads[1, 2, H + H_kv])
    assert all(np.shares_memory(part, qkv) for part in (q, k, v))      # views: no copies
