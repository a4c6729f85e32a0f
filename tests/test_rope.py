"""Tests of tinyllm.functional.rope: rotary position embeddings.

The gradient (the inverse rotation) against finite differences; the forward against the rotate-half formula
written out with NumPy; and the two properties that make RoPE a *relative* position code — position 0 is the
identity, and a query·key score depends only on the offset between their positions. Then RoPE inside the
fused self-attention, and the tables' cache.
"""

import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F
from tinyllm import backend
from tinyllm.autograd import Tensor
from tinyllm.functional import rope
from tinyllm.testing import gradcheck
from tinyllm.backend import to_numpy

uses_float64 = pytest.mark.usefixtures("float64")


def leaf(array) -> Tensor:
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def np_rope(x, positions, theta=10000.0):
    """Rotate-half RoPE, the slow and obvious way: x (..., T, D), positions (T,) or (B, T) for x (B, H, T, D)."""
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2) / d)                   # (D/2,)
    angles = np.asarray(positions, dtype=np.float64)[..., None] * freqs     # (T, D/2) or (B, T, D/2)
    if angles.ndim == 3:
        angles = angles[:, None]                                  # (B, 1, T, D/2)
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)          # (…, D): pair i ↔ i + D/2 share an angle
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)
    rotate_half = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * cos + rotate_half * sin


def rotate(x, positions, theta=10000.0):
    return F.rotary_embedding(Tensor(x, dtype=np.float64), positions, theta).numpy()


# ---------------------------------------------------------------------------------------- the op
@uses_float64
@pytest.mark.parametrize("positions", [np.array([0, 1, 2, 3]), np.array([[5, 0, 9, 2], [1, 1, 3, 300]])],
                         ids=["shared", "per_row"])
def test_rotary_embedding_gradients(positions, rng):
    x = leaf(rng.standard_normal((2, 3, 4, 6)))
    error = gradcheck(lambda x: F.rotary_embedding(x, positions), [x], seed=1234)
    assert error < 1e-6, f"relative gradient error {error:.3g}"


@pytest.mark.parametrize("theta", [10000.0, 500.0])
def test_rotary_embedding_is_the_rotate_half_formula(theta, rng):
    x = rng.standard_normal((2, 3, 5, 8))
    positions = np.array([[0, 1, 2, 7, 1000], [3, 3, 4, 5, 6]])

    np.testing.assert_allclose(rotate(x, positions, theta), np_rope(x, positions, theta), rtol=1e-12, atol=1e-12)


def test_rotation_by_position_zero_is_the_identity(rng):
    x = rng.standard_normal((1, 2, 3, 4))

    np.testing.assert_array_equal(rotate(x, np.zeros(3, dtype=np.int64)), x)


def test_rotation_keeps_the_length_of_every_vector(rng):
    x = rng.standard_normal((2, 2, 6, 8))

    y = rotate(x, np.arange(6) * 13)

    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


def test_query_key_scores_depend_only_on_the_offset_between_positions(rng):
    # q at position m and k at position n score qᵀ R((n - m)ω) k: shifting both by the same amount changes
    # nothing, while changing the offset does.
    q, k = rng.standard_normal((1, 1, 1, 8)), rng.standard_normal((1, 1, 1, 8))

    def score(m, n):
        return float((rotate(q, np.array([m])) * rotate(k, np.array([n]))).sum())

    for offset in (0, 1, 5, -3):
        scores = [score(m, m + offset) for m in (3, 10, 100, 1000)]
        np.testing.assert_allclose(scores, scores[0], rtol=1e-9, atol=1e-12,
                                   err_msg=f"offset {offset}: the score changed with the absolute position")
    assert abs(score(3, 4) - score(3, 9)) > 1e-3, "different offsets should give different scores"


def test_the_backward_is_the_inverse_rotation(rng):
    x = rng.standard_normal((2, 1, 3, 4))
    positions = np.array([2, 5, 11])
    cos, sin = rope.rope_cos_sin(positions, 4, dtype=np.float64)

    back = rope.apply_rotary(rope.apply_rotary(backend.asarray(x), cos, sin), cos, sin, inverse=True)

    np.testing.assert_allclose(backend.to_numpy(back), x, rtol=1e-12, atol=1e-14)


def test_rotary_embedding_keeps_float32(rng):
    x = Tensor(rng.standard_normal((1, 1, 2, 4)).astype(np.float32))
    assert F.rotary_embedding(x, np.array([0, 1])).dtype == np.float32


# ---------------------------------------------------------------------------------------- errors
def test_an_odd_head_dimension_is_an_error_naming_it():
    with pytest.raises(ValueError, match="even head dimension.*head_dim=5"):
        F.rotary_embedding(Tensor(np.zeros((1, 1, 2, 5))), np.array([0, 1]))


def test_positions_must_match_the_time_axis_and_be_non_negative_integers():
    x = Tensor(np.zeros((2, 1, 3, 4)))
    with pytest.raises(ValueError, match=r"positions of shape \(4,\) do not match x \(2, 1, 3, 4\)"):
        F.rotary_embedding(x, np.arange(4))
    with pytest.raises(ValueError, match="must be >= 0"):
        F.rotary_embedding(x, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="integers"):
        F.rotary_embedding(x, np.array([0.0, 1.0, 2.0]))


# ---------------------------------------------------------------------------------------- inside attention
def test_self_attention_with_rope_equals_attention_on_rotated_queries_and_keys(rng):
    b, t, n_head, n_kv_head, d = 2, 5, 4, 2, 6
    qkv = rng.standard_normal((b, t, (n_head + 2 * n_kv_head) * d))
    positions = np.array([[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]])

    y = F.self_attention(Tensor(qkv, dtype=np.float64), n_head, n_kv_head=n_kv_head,
                         rope=rope.rope_cos_sin(positions, d, dtype=np.float64)).numpy()

    q, k, v = np.split(qkv, [n_head * d, (n_head + n_kv_head) * d], axis=-1)
    q, k, v = (a.reshape(b, t, -1, d).transpose(0, 2, 1, 3) for a in (q, k, v))
    expected = F.scaled_dot_product_attention(*(Tensor(a, dtype=np.float64) for a in (
        np_rope(q, positions), np_rope(k, positions), v))).numpy()
    np.testing.assert_allclose(y, expected.transpose(0, 2, 1, 3).reshape(b, t, n_head * d), rtol=1e-12, atol=1e-12)


@uses_float64
@pytest.mark.parametrize("n_kv_head", [4, 2], ids=["mha", "gqa"])
def test_self_attention_with_rope_gradients(n_kv_head, rng):
    positions = np.array([[0, 1, 2, 3], [7, 8, 9, 10]])
    cos_sin = rope.rope_cos_sin(positions, 4, dtype=np.float64)
    qkv = leaf(rng.standard_normal((2, 4, (4 + 2 * n_kv_head) * 4)))
    error = gradcheck(lambda qkv: F.self_attention(qkv, 4, n_kv_head=n_kv_head, rope=cos_sin), [qkv], seed=1234)
    assert error < 1e-6, f"relative gradient error {error:.3g}"


# ---------------------------------------------------------------------------------------- the tables
def test_tables_are_cached_per_head_size_theta_and_dtype_and_grow_on_demand():
    first = rope.rope_tables(8, 10, 10000.0, np.float64)
    assert rope.rope_tables(8, 10, 10000.0, np.float64)[0] is first[0], "the same key must reuse the tables"
    assert rope.rope_tables(8, 10, 500.0, np.float64)[0] is not first[0]
    assert rope.rope_tables(8, 10, 10000.0, np.float32)[0].dtype == np.float32
    grown = rope.rope_tables(8, 5000, 10000.0, np.float64)
    assert grown[0].shape[0] >= 5000 and grown[0].shape[1] == 8
    np.testing.assert_array_equal(to_numpy(grown[0][: first[0].shape[0]]), to_numpy(first[0]))


def test_tables_follow_the_default_dtype():
    with tinyllm.default_dtype("float64"):
        cos, _ = rope.rope_cos_sin(np.arange(3), 4)
    assert cos.dtype == np.float64 and cos.shape == (3, 4)
