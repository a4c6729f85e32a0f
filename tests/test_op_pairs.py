"""Each fused op's raw pair, ``name_forward`` / ``name_backward`` on arrays, checked on its own: its
backward against finite differences (the pair wrapped by ``autograd.fused_op`` and run through
``gradcheck``), and its results equal to the Tensor op that the models use (for the ops outside
``functional``'s core files: the Tensor op gradchecked, and the pair run by hand giving its output
and gradients). Plus the small helpers next to the pairs."""

import math

import numpy as np
import pytest

from tinyllm import backend, default_dtype
from tinyllm.autograd import Tensor, fused_op
from tinyllm.backend import to_numpy
from tinyllm import lora
from tinyllm.finetune import classify
from tinyllm.functional import attention, dense, gelu_erf, int8, losses, norms, rope
from tinyllm.functional.moe import (check_expert_top_k, load_balancing_loss,
                                    load_balancing_loss_backward, load_balancing_loss_forward,
                                    moe_experts_backward, moe_experts_forward, router_weights,
                                    router_weights_backward, router_weights_forward, top_k_experts)
from tinyllm.quantize import Int8Weight
from tinyllm.rl import kl, logprobs
from tinyllm.testing import gradcheck

TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def _float64_and_fresh_draws():
    global R
    R = np.random.default_rng(0)         # each test draws the same inputs however it is selected
    with default_dtype("float64"):
        yield


def leaf(array):
    return Tensor(backend.asarray(np.asarray(array, dtype=np.float64)), requires_grad=True)


def leaves(*shapes):
    """Standard-normal float64 leaves of the given shapes."""
    return [leaf(R.standard_normal(shape)) for shape in shapes]


def pair_op(forward, backward, constants=()):
    """The raw pair as a Tensor function of its differentiable inputs (``constants`` follow
    them)."""
    def op(*tensors):
        out, cache = forward(*(t.data for t in tensors), *constants)
        return fused_op(backward, out, cache, *tensors, *(None for _ in constants))
    return op


def check_pair(forward, backward, inputs, constants=()):
    error = gradcheck(pair_op(forward, backward, constants), inputs, seed=3)
    assert error < TOLERANCE, \
        f"{forward.__name__}/{backward.__name__}: relative gradient error {error:.3g}"


R = np.random.default_rng(0)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_pair(with_bias):
    inputs = [leaf(R.standard_normal((2, 3, 4))), leaf(R.standard_normal((5, 4)))]
    if with_bias:
        inputs.append(leaf(R.standard_normal(5)))
        check_pair(dense.linear_forward, dense.linear_backward, inputs)
    else:
        check_pair(dense.linear_forward,
                   lambda dy, cache, needs: dense.linear_backward(dy, cache, needs + (False,)),
                   inputs, constants=(None,))


def test_int8_linear_pair_differentiates_the_input_and_bias():
    q = backend.asarray(R.integers(-127, 128, size=(5, 4)).astype(np.int8))
    scale = backend.asarray(R.uniform(0.01, 0.1, size=5))

    def op(x, b):                         # q and scale are frozen: not inputs of the graph
        out, cache = int8.int8_linear_forward(x.data, q, scale, b.data)
        return fused_op(int8.int8_linear_backward, out, cache, x, None, None, b)

    error = gradcheck(op, [leaf(R.standard_normal((2, 3, 4))), leaf(R.standard_normal(5))], seed=3)
    assert error < TOLERANCE, f"int8_linear pair: relative gradient error {error:.3g}"
    x = backend.asarray(R.standard_normal((3, 4)))
    expected, _ = dense.linear_forward(x, q.astype(np.float64) * scale[:, None], None)   # W = q · s
    np.testing.assert_allclose(to_numpy(int8.int8_linear_forward(x, q, scale, None)[0]),
                               to_numpy(expected), rtol=1e-13)


def test_embedding_pair_adds_repeated_rows():
    idx = backend.asarray(np.array([[0, 2, 2], [1, 0, 2]]))
    w = leaf(R.standard_normal((4, 3)))
    check_pair(lambda w: dense.embedding_forward(idx, w),
               lambda dy, cache, needs: dense.embedding_backward(dy, cache)[1:], [w])
    y, cache = dense.embedding_forward(idx, w.data)
    _, dw = dense.embedding_backward(backend.xp.ones_like(y), cache)
    assert to_numpy(dw)[:, 0].tolist() == [2.0, 1.0, 3.0, 0.0], "dW[v] counts every lookup of row v"


@pytest.mark.parametrize("pair", [(dense.gelu_forward, dense.gelu_backward),
                                  (dense.silu_forward, dense.silu_backward),
                                  (gelu_erf.gelu_erf_forward, gelu_erf.gelu_erf_backward)],
                         ids=["gelu", "silu", "gelu_erf"])
def test_elementwise_pairs(pair):
    check_pair(*pair, [leaf(3 * R.standard_normal((4, 5)))])


def test_swiglu_pair_and_the_silu_derivative():
    check_pair(dense.swiglu_forward, dense.swiglu_backward,
               [leaf(R.standard_normal((3, 4))), leaf(R.standard_normal((3, 4)))])
    x = np.linspace(-6, 6, 13)
    h = 1e-6
    silu = lambda v: v / (1 + np.exp(-v))                  # noqa: E731
    numeric = (silu(x + h) - silu(x - h)) / (2 * h)
    sig = to_numpy(dense.sigmoid(backend.asarray(x)))
    np.testing.assert_allclose(dense.silu_derivative(x, sig), numeric, rtol=1e-7, atol=1e-9)


def test_dropout_mask_and_pair():
    generator = backend.rng(0)
    mask = to_numpy(dense.dropout_mask((200, 50), 0.25, np.float64, generator))
    assert set(np.unique(mask)) == {0.0, 1 / 0.75} and abs(mask.mean() - 1.0) < 0.02
    check_pair(dense.dropout_forward, lambda dy, m, needs: dense.dropout_backward(dy, m) + (None,),
               [leaf(R.standard_normal((4, 6)))], constants=(backend.asarray(mask[:4, :6]),))


def test_normal_cdf_matches_math_erf():
    x = np.linspace(-8, 8, 41)
    expected = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(to_numpy(gelu_erf.normal_cdf(backend.asarray(x))), expected,
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("affine", [True, False])
def test_norm_pairs(affine):
    x = leaf(R.standard_normal((2, 3, 6)))
    if affine:
        w, b = leaf(1 + 0.3 * R.standard_normal(6)), leaf(R.standard_normal(6))
        check_pair(lambda x, w, b: norms.layer_norm_forward(x, w, b, 1e-5),
                   norms.layer_norm_backward, [x, w, b])
        check_pair(lambda x, w: norms.rms_norm_forward(x, w, 1e-5), norms.rms_norm_backward, [x, w])
    else:
        check_pair(lambda x: norms.layer_norm_forward(x, None, None, 1e-5),
                   lambda dy, c, needs: norms.layer_norm_backward(dy, c, needs + (False,) * 2)[:1],
                   [x])
        check_pair(lambda x: norms.rms_norm_forward(x, None, 1e-5),
                   lambda dy, c, needs: norms.rms_norm_backward(dy, c, needs + (False,))[:1], [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_pair(reduction):
    t = np.array([0, 3, 1, 4, 2, 0])
    valid = t != 4                                          # one ignored position
    def forward(z):
        return losses.cross_entropy_forward(z, backend.asarray(np.where(valid, t, 0)),
                                            backend.asarray(valid), int(valid.sum()), reduction)

    check_pair(forward, losses.cross_entropy_backward, [leaf(2 * R.standard_normal((6, 5)))])
    z = R.standard_normal((6, 5))
    out, _ = forward(backend.asarray(z))
    expected = (np.log(np.exp(z).sum(1)) - z[np.arange(6), np.where(valid, t, 0)]) * valid
    expected = {"mean": expected.sum() / valid.sum(), "sum": expected.sum(),
                "none": expected}[reduction]
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-12)


def test_moe_experts_pair_and_the_top_k_check():
    indices = backend.asarray(np.array([[0, 2], [2, 1], [0, 1]]))          # expert 3 gets no token
    inputs = [leaf(R.standard_normal((3, 4))), leaf(R.random((3, 2)))] + \
        [leaf(0.5 * R.standard_normal(shape)) for shape in ((4, 5, 4), (4, 5, 4), (4, 4, 5))]

    def forward(x, weights, w_gate, w_up, w_down):
        return moe_experts_forward(x, indices, weights, w_gate, w_up, w_down)

    def backward(dy, cache, needs):
        grads = moe_experts_backward(dy, cache, (needs[0], False) + needs[1:])
        return (grads[0],) + grads[2:]
    check_pair(forward, backward, inputs)
    check_expert_top_k(2, 4)
    for bad in (0, 5, True, 1.5):
        with pytest.raises(ValueError, match="expert_top_k"):
            check_expert_top_k(bad, 4)


def test_rope_frequencies_and_the_llama3_scaling():
    plain = rope.rope_frequencies(8, 10000.0)
    np.testing.assert_allclose(plain, 10000.0 ** (-np.arange(0, 8, 2) / 8))
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    scaled = rope.rope_frequencies(8, 10000.0, scaling)
    wavelength = 2 * np.pi / plain
    assert scaled[0] == plain[0], "a fast pair (short wavelength) is kept"
    assert np.all(scaled[wavelength > 64] == plain[wavelength > 64] / 8), \
        "a slow pair is stretched by the factor"
    rope.check_rope_scaling(None)
    rope.check_rope_scaling({"rope_type": "default"})
    for bad in ({"rope_type": "yarn"}, {**scaling, "factor": 0},
                {**scaling, "high_freq_factor": 0.5}):
        with pytest.raises(ValueError, match="rope_scaling"):
            rope.check_rope_scaling(bad)


def no_grads_for_constants(backward, count):
    """A backward of the differentiable inputs only, with None for the ``count`` constants after
    them."""
    return lambda dy, cache, needs: (*backward(dy, cache), *(None,) * count)


def test_attention_pair_with_a_causal_bias_and_keys_from_a_cache():
    q, k, v = leaves((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 5))
    bias = attention.attention_bias(4, 6, True, None, np.float64)      # query i sees keys 0 … 2 + i
    check_pair(attention.attention_forward, no_grads_for_constants(attention.attention_backward, 1),
               [q, k, v], constants=(bias,))


def test_grouped_query_attention_pair_equals_attention_on_repeated_keys_and_values():
    q, k, v = leaves((2, 4, 3, 5), (2, 2, 3, 5), (2, 2, 3, 5))
    mask = backend.asarray(R.random((2, 4, 3, 3)) < 0.7) | backend.xp.eye(3, dtype=bool)  # per head
    bias = attention.attention_bias(3, 3, False, mask, np.float64)
    check_pair(attention.grouped_query_attention_forward,
               no_grads_for_constants(attention.grouped_query_attention_backward, 1), [q, k, v],
               constants=(bias,))

    y, _ = attention.grouped_query_attention_forward(q.data, k.data, v.data, bias)
    # kv head j serves query heads 2j and 2j+1
    repeated = [backend.xp.repeat(t.data, 2, axis=1) for t in (k, v)]
    y_repeated, _ = attention.attention_forward(q.data, *repeated, bias)
    np.testing.assert_allclose(to_numpy(y), to_numpy(y_repeated), rtol=1e-12, atol=1e-12)


def test_blockwise_attention_pair_equals_the_one_block_pair():
    q, k, v = leaves((1, 2, 5, 3), (1, 1, 7, 3), (1, 1, 7, 3))
    check_pair(attention.blockwise_attention_forward,
               no_grads_for_constants(attention.blockwise_attention_backward, 2), [q, k, v],
               constants=(None, 2))
    y, _ = attention.blockwise_attention_forward(q.data, k.data, v.data, None, 2)
    y_whole, _ = attention.grouped_query_attention_forward(
        q.data, k.data, v.data, attention.attention_bias(5, 7, True, None, np.float64))
    np.testing.assert_allclose(to_numpy(y), to_numpy(y_whole), rtol=1e-12, atol=1e-12)


def test_attention_bias_is_zero_where_allowed_and_minus_infinity_elsewhere():
    bias = to_numpy(attention.attention_bias(2, 4, True, None, np.float32))
    assert np.array_equal(np.isfinite(bias), [[True, True, True, False], [True, True, True, True]])
    assert attention.attention_bias(2, 4, False, None, np.float32) is None


def test_softmax_rows_gives_zero_probabilities_to_a_row_that_sees_no_key():
    S = backend.asarray(np.array([[0.0, 1.0, -np.inf], [-np.inf, -np.inf, -np.inf]]))
    P = to_numpy(attention.softmax_rows_(S))
    np.testing.assert_allclose(P[0], np.exp([0, 1, -np.inf]) / np.exp([0, 1]).sum(), rtol=1e-15)
    assert np.array_equal(P[1], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("t_q", [3, 5], ids=["one_block", "query_blocks"])
def test_multi_head_attention_pair_in_one_block_and_in_query_blocks(t_q, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 2)            # 5 queries: blocks of 2, 2 and 1
    q, k, v = leaves((1, 2, t_q, 3), (1, 1, 6, 3), (1, 1, 6, 3))
    check_pair(attention.multi_head_attention_forward,
               no_grads_for_constants(attention.multi_head_attention_backward, 2), [q, k, v],
               constants=(True, None))


def test_self_attention_pair_with_grouped_heads_and_rope():
    qkv = leaf(R.standard_normal((2, 4, (4 + 2 * 2) * 2)))         # H = 4, H_kv = 2, D = 2
    rope_tables = rope.rope_cos_sin(np.arange(4), 2, dtype=np.float64)
    check_pair(attention.self_attention_forward,
               no_grads_for_constants(
                   lambda dy, cache: attention.self_attention_backward(dy, cache)[:1], 5),
               [qkv], constants=(4, 2, True, None, rope_tables))


def test_row_blocks_cover_every_row_once_with_at_most_row_block_weights(monkeypatch):
    from tinyllm.functional import int8
    monkeypatch.setattr(int8, "ROW_BLOCK", 10)
    blocks = int8.row_blocks(7, 3)                               # 3 rows of 3 weights per block
    assert blocks == [(0, 3), (3, 6), (6, 7)]
    assert int8.row_blocks(2, 50) == [(0, 1), (1, 2)]     # a row wider than a block: one row each


# ------------------------------------------------------- the Tensor ops and the pairs they run

def check_op_runs_its_pair(op, inputs, forward, backward, pair_args, needs):
    """The Tensor op ``op(*inputs)`` against finite differences, then its raw pair run by hand,
    ``forward(*pair_args)`` and ``backward(dout, cache, needs)``, giving the op's output and the
    gradients the op left on the inputs that require grad (in order; the pair's Nones skipped)."""
    error = gradcheck(op, inputs, seed=3)
    assert error < TOLERANCE, f"{forward.__name__}: relative gradient error {error:.3g}"
    tensors = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    for t in tensors:
        t.grad = None
    out = op(*inputs)
    dout = backend.asarray(R.standard_normal(out.shape))
    out.backward(dout.copy())
    raw_out, cache = forward(*pair_args)
    np.testing.assert_array_equal(to_numpy(raw_out), out.numpy())
    grads = [g for g in backward(dout, cache, needs) if g is not None]
    assert len(grads) == len(tensors), f"{backward.__name__}: {len(grads)} gradients"
    for g, t in zip(grads, tensors):
        np.testing.assert_allclose(to_numpy(g), to_numpy(t.grad), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax_run_their_pairs(axis):
    x = leaf(2 * R.standard_normal((3, 5)))
    check_op_runs_its_pair(lambda x: losses.softmax(x, axis), [x], losses.softmax_forward,
                           losses.softmax_backward, (x.data, axis), (True,))
    check_op_runs_its_pair(lambda x: losses.log_softmax(x, axis), [x], losses.log_softmax_forward,
                           losses.log_softmax_backward, (x.data, axis), (True,))


@pytest.mark.parametrize("positions", [np.array([0, 3, 1]), np.array([[0, 1, 2], [4, 5, 6]])],
                         ids=["shared", "per_row"])
def test_rotary_embedding_runs_its_pair(positions):
    x = leaf(R.standard_normal((2, 2, 3, 4)))
    cos, sin = rope.rope_cos_sin(positions, 4, dtype=np.float64)
    check_op_runs_its_pair(lambda x: rope.rotary_embedding(x, positions), [x],
                           rope.rotary_embedding_forward, rope.rotary_embedding_backward,
                           (x.data, cos, sin), (True,))


@pytest.mark.parametrize("normalize", [True, False])
def test_router_weights_and_load_balancing_loss_run_their_pairs(normalize):
    logits = R.standard_normal((2, 3, 4))                          # (N..., E)
    probs = leaf(np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True))
    indices = top_k_experts(probs.data, 2)
    check_op_runs_its_pair(lambda p: router_weights(p, indices, normalize), [probs],
                           router_weights_forward, router_weights_backward,
                           (probs.data, indices, normalize), (True, False))
    check_op_runs_its_pair(lambda p: load_balancing_loss(p, indices), [probs],
                           load_balancing_loss_forward, load_balancing_loss_backward,
                           (probs.data, indices), (True, False))


def test_last_token_states_runs_its_pair():
    hidden = leaf(R.standard_normal((3, 4, 2)))
    lengths = backend.asarray(np.array([4, 1, 2]))
    check_op_runs_its_pair(lambda h: classify.last_token_states(h, lengths), [hidden],
                           classify.last_token_states_forward, classify.last_token_states_backward,
                           (hidden.data, lengths), (True, False))


def test_rl_ops_run_their_pairs():
    logp, ref_logp = leaf(-R.random((3, 4))), leaf(-R.random(4))    # ref_logp broadcast over rows
    check_op_runs_its_pair(kl.kl_k3, [logp, ref_logp], kl.kl_k3_forward, kl.kl_k3_backward,
                           (logp.data, ref_logp.data), (True, True))
    z = leaf(2 * R.standard_normal((2, 3, 5)))
    check_op_runs_its_pair(logprobs.token_entropy, [z], logprobs.token_entropy_forward,
                           logprobs.token_entropy_backward, (z.data,), (True,))
    x = leaf(np.array([-40.0, -3.0, -0.5, 0.0, 0.7, 5.0, 40.0]))
    check_op_runs_its_pair(logprobs.log_sigmoid, [x], logprobs.log_sigmoid_forward,
                           logprobs.log_sigmoid_backward, (x.data,), (True,))


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no_mask", "dropout_mask"])
def test_lora_linear_runs_its_pair(dropout):
    """A full finetune's view (W and b train too), with and without the adapter's dropout mask."""
    x, w, b, lora_a, lora_b = leaves((2, 3, 4), (5, 4), 5, (2, 4), (5, 2))
    training = dropout > 0

    def op(x, w, b, lora_a, lora_b):      # the same mask at every call: a fresh generator each time
        return lora.lora_linear(x, w, b, lora_a, lora_b, 2.0, dropout, training, backend.rng(7))

    mask = dense.dropout_mask((6, 4), dropout, np.float64, backend.rng(7)) if training else None
    check_op_runs_its_pair(op, [x, w, b, lora_a, lora_b], lora.lora_linear_forward,
                           lora.lora_linear_backward,
                           (x.data, w.data, b.data, lora_a.data, lora_b.data, 2.0, mask),
                           (True,) * 5)


def test_lora_linear_on_an_int8_weight_runs_its_pair():
    weight = Int8Weight.of(Tensor(backend.asarray(R.standard_normal((5, 4)))))
    x, b, lora_a, lora_b = leaves((3, 4), 5, (2, 4), (5, 2))
    check_op_runs_its_pair(lambda x, b, a, bb: lora.lora_linear(x, weight, b, a, bb, 0.5),
                           [x, b, lora_a, lora_b], lora.lora_linear_forward,
                           lora.lora_linear_backward,
                           (x.data, weight.int8.data, b.data, lora_a.data, lora_b.data, 0.5, None,
                            weight.scale.data), (True, False, True, True, True))
