"""Tests of tinyllm.optim: the update rules against hand-written NumPy (and PyTorch when it is installed),
parameter groups, saving and restoring optimizer state, gradient clipping and the learning-rate schedule."""

import math

import numpy as np
import pytest

from tinyllm import backend
from tinyllm.nn import Parameter
from tinyllm.optim import SGD, AdamW, clip_factor, clip_grad_norm, grad_norm, warmup_cosine_lr

pytestmark = pytest.mark.usefixtures("float64")

SHAPES = [(3, 4), (5,)]
STEPS = 3


def make_params(rng):
    return [Parameter(rng.standard_normal(shape)) for shape in SHAPES]


def make_grads(rng, steps=STEPS):
    """grads[step][i]: the gradient of parameter i at each step (fixed in advance, so runs can be compared)."""
    return [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(steps)]


def values(params):
    return [p.numpy().copy() for p in params]


def run(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = backend.asarray(g.copy())
        optimizer.step()


def reference_adamw(params, grads, lr, betas, eps, weight_decay):
    """AdamW (decoupled decay) exactly as in Loshchilov & Hutter / PyTorch, one parameter at a time."""
    beta1, beta2 = betas
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            params[i] = params[i] * (1 - lr * weight_decay)            # decay first, not through the gradient
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1**t)                               # bias correction
            v_hat = v[i] / (1 - beta2**t)
            params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


# ====================================================================== AdamW
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["no_decay", "decay"])
def test_adamw_matches_the_reference_update_for_three_steps(weight_decay, rng):
    params, grads = make_params(rng), make_grads(rng)
    start = values(params)
    settings = dict(lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)

    run(AdamW(params, **settings), params, grads)

    for mine, expected in zip(values(params), reference_adamw(start, grads, **settings)):
        np.testing.assert_allclose(mine, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["no_decay", "decay"])
def test_adamw_matches_pytorch(weight_decay, rng):
    torch = pytest.importorskip("torch")
    params, grads = make_params(rng), make_grads(rng)
    torch_params = [torch.tensor(p.numpy().copy(), requires_grad=True) for p in params]
    settings = dict(lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    torch_optimizer = torch.optim.AdamW(torch_params, **settings)

    run(AdamW(params, **settings), params, grads)
    for step_grads in grads:
        for p, g in zip(torch_params, step_grads):
            p.grad = torch.tensor(g)
        torch_optimizer.step()

    for mine, theirs in zip(values(params), torch_params):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=0, atol=1e-6)


def test_the_first_adamw_step_moves_each_element_by_about_lr(rng):
    params = make_params(rng)
    start = values(params)

    run(AdamW(params, lr=0.01, weight_decay=0.0), params, make_grads(rng, steps=1))

    # m̂ = g and v̂ = g² after one step, so the update is lr · g / |g| = ±lr.
    for before, after in zip(start, values(params)):
        np.testing.assert_allclose(np.abs(after - before), 0.01, rtol=1e-5)


def test_param_groups_apply_decay_only_where_asked(rng):
    decayed, plain = Parameter(rng.standard_normal(4)), Parameter(rng.standard_normal(4))
    start_decayed, start_plain = decayed.numpy().copy(), plain.numpy().copy()
    optimizer = AdamW([{"params": [decayed], "weight_decay": 0.5}, {"params": [plain], "weight_decay": 0.0}], lr=0.1)

    decayed.grad, plain.grad = backend.xp.zeros(4), backend.xp.zeros(4)  # zero gradient: only decay can move them
    optimizer.step()

    np.testing.assert_allclose(decayed.numpy(), start_decayed * (1 - 0.1 * 0.5), rtol=1e-12)
    np.testing.assert_array_equal(plain.numpy(), start_plain)


def test_group_lr_scale_multiplies_the_learning_rate(rng):
    a, b = Parameter(np.zeros(3)), Parameter(np.zeros(3))
    optimizer = AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr=0.1, weight_decay=0.0)

    a.grad, b.grad = backend.xp.ones(3), backend.xp.ones(3)
    optimizer.step()

    np.testing.assert_allclose(a.numpy(), -0.1, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), -0.05, rtol=1e-6)


def test_parameters_without_gradient_are_left_alone(rng):
    params = make_params(rng)
    frozen = Parameter(rng.standard_normal(3), requires_grad=False)
    start = values(params)
    optimizer = AdamW(params + [frozen], lr=0.1, weight_decay=0.5)

    assert frozen not in optimizer.parameters()
    params[0].grad = backend.xp.ones(SHAPES[0])               # params[1].grad stays None
    optimizer.step()

    assert not np.allclose(params[0].numpy(), start[0])
    np.testing.assert_array_equal(params[1].numpy(), start[1])  # not even decayed


def test_adamw_state_dict_round_trip_continues_identically(rng):
    params, grads = make_params(rng), make_grads(rng, steps=4)
    optimizer = AdamW(params, lr=0.01, weight_decay=0.1)
    run(optimizer, params, grads[:2])
    saved = {k: (backend.to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in optimizer.state_dict().items()}
    twin = [Parameter(p.numpy().copy()) for p in params]
    twin_optimizer = AdamW(twin, lr=0.5, weight_decay=0.1)     # a different lr: the state brings the right one

    twin_optimizer.load_state_dict(saved)
    run(optimizer, params, grads[2:])
    run(twin_optimizer, twin, grads[2:])

    assert twin_optimizer.step_count == optimizer.step_count == 4
    for mine, theirs in zip(values(params), values(twin)):
        np.testing.assert_array_equal(mine, theirs)


def test_adamw_load_state_dict_rejects_state_for_other_parameters(rng):
    optimizer = AdamW(make_params(rng))
    state = dict(AdamW([Parameter(np.zeros(2))]).state_dict())
    with pytest.raises(ValueError, match="1 parameters but this optimizer has 2"):
        optimizer.load_state_dict(state)

    state = dict(optimizer.state_dict())
    state["exp_avg.1"] = np.zeros(7)
    with pytest.raises(ValueError, match=r"exp_avg.1 has shape \(7,\)"):
        optimizer.load_state_dict(state)


# ====================================================================== SGD
def reference_sgd(params, grads, lr, momentum, weight_decay):
    params = [p.copy() for p in params]
    velocity = [None] * len(params)
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            g = g + weight_decay * params[i]
            velocity[i] = g if velocity[i] is None else momentum * velocity[i] + g
            params[i] = params[i] - lr * velocity[i]
    return params


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01)], ids=str)
def test_sgd_matches_the_reference_update(momentum, weight_decay, rng):
    params, grads = make_params(rng), make_grads(rng)
    start = values(params)

    run(SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay), params, grads)

    for mine, expected in zip(values(params), reference_sgd(start, grads, 0.1, momentum, weight_decay)):
        np.testing.assert_allclose(mine, expected, rtol=1e-12, atol=1e-14)


def test_sgd_with_momentum_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    params, grads = make_params(rng), make_grads(rng)
    torch_params = [torch.tensor(p.numpy().copy(), requires_grad=True) for p in params]
    torch_optimizer = torch.optim.SGD(torch_params, lr=0.1, momentum=0.9, weight_decay=0.01)

    run(SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01), params, grads)
    for step_grads in grads:
        for p, g in zip(torch_params, step_grads):
            p.grad = torch.tensor(g)
        torch_optimizer.step()

    for mine, theirs in zip(values(params), torch_params):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", [AdamW, SGD])
def test_an_empty_parameter_list_is_an_error(optimizer):
    with pytest.raises(ValueError, match="empty parameter list"):
        optimizer([])
    with pytest.raises(ValueError, match="empty parameter list"):
        optimizer(p for p in [])


def test_optimizer_zero_grad(rng):
    params = make_params(rng)
    optimizer = SGD(params)
    for p in params:
        p.grad = backend.xp.ones(p.shape)

    optimizer.zero_grad()

    assert all(p.grad is None for p in params)


# ====================================================================== clip_grad_norm
def test_clip_grad_norm_returns_the_norm_before_clipping_and_scales_to_max_norm(rng):
    params = make_params(rng)
    grads = [10 * rng.standard_normal(shape) for shape in SHAPES]
    for p, g in zip(params, grads):
        p.grad = backend.asarray(g)
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))

    returned = clip_grad_norm(params, max_norm=1.0)

    assert returned == pytest.approx(norm, rel=1e-12)
    clipped = [backend.to_numpy(p.grad) for p in params]
    assert math.sqrt(sum(float((g**2).sum()) for g in clipped)) == pytest.approx(1.0, rel=1e-5)
    for g, original in zip(clipped, grads):  # one common scale: directions kept
        np.testing.assert_allclose(g, original / norm, rtol=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone(rng):
    p = Parameter(np.zeros(3))
    p.grad = backend.asarray(np.array([0.1, -0.2, 0.2]))

    assert clip_grad_norm([p], max_norm=1.0) == pytest.approx(0.3)

    np.testing.assert_array_equal(backend.to_numpy(p.grad), [0.1, -0.2, 0.2])


def test_clip_grad_norm_accepts_a_generator_and_skips_missing_gradients():
    with_grad, without = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    with_grad.grad = backend.asarray(np.array([3.0, 4.0]))

    norm = clip_grad_norm((p for p in [with_grad, without]), max_norm=1.0)

    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(backend.to_numpy(with_grad.grad), [0.6, 0.8], rtol=1e-5)
    assert without.grad is None


def test_clip_factor_is_one_within_the_limit_without_a_limit_and_for_non_finite_norms():
    assert clip_factor(0.5, 1.0) == 1.0
    assert clip_factor(5.0, None) == 1.0
    assert clip_factor(float("inf"), 1.0) == 1.0 and clip_factor(float("nan"), 1.0) == 1.0
    assert clip_factor(4.0, 1.0) == pytest.approx(0.25, rel=1e-6)


def test_adamw_with_grad_scale_equals_clipping_the_gradients_first(rng):
    """The training loops fold clipping into the update: step(grad_scale=clip_factor(norm)) is the same
    update as clip_grad_norm then step(), for every parameter, over several steps."""
    grads = [[10 * rng.standard_normal(shape) for shape in SHAPES] for _ in range(3)]
    clipped_first, folded = make_params(np.random.default_rng(0)), make_params(np.random.default_rng(0))
    opt_a = AdamW(clipped_first, lr=0.1, weight_decay=0.1)
    opt_b = AdamW(folded, lr=0.1, weight_decay=0.1)
    for step_grads in grads:
        for a, b, g in zip(clipped_first, folded, step_grads):
            a.grad, b.grad = backend.asarray(g), backend.asarray(g)
        clip_grad_norm(clipped_first, 1.0)
        opt_a.step()
        norm = grad_norm(folded)
        assert clip_factor(norm, 1.0) < 0.5                     # the clip really bites
        opt_b.step(grad_scale=clip_factor(norm, 1.0))
    for a, b in zip(clipped_first, folded):
        np.testing.assert_allclose(backend.to_numpy(b.data), backend.to_numpy(a.data), rtol=1e-12, atol=1e-14)


def test_clip_grad_norm_does_not_touch_non_finite_gradients():
    p = Parameter(np.zeros(2))
    p.grad = backend.asarray(np.array([np.inf, 1.0]))

    assert math.isinf(clip_grad_norm([p], max_norm=1.0))
    assert backend.to_numpy(p.grad)[1] == 1.0


# ====================================================================== warmup_cosine_lr
def test_warmup_cosine_lr_at_its_landmarks():
    lr = lambda step: warmup_cosine_lr(step, max_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)

    assert lr(0) == pytest.approx(0.1)        # first warmup step: max_lr · 1/10
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)        # end of warmup
    assert lr(10) == pytest.approx(1.0)       # start of the decay
    assert lr(60) == pytest.approx(0.55)      # halfway through the decay: (max + min) / 2
    assert lr(110) == pytest.approx(0.1)      # end
    assert lr(10_000) == pytest.approx(0.1)   # after the end it stays at min_lr


def test_warmup_cosine_lr_rises_then_falls():
    lrs = [warmup_cosine_lr(s, 3e-4, 3e-5, 20, 200) for s in range(250)]

    assert all(a < b for a, b in zip(lrs[:19], lrs[1:20]))
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))
    assert max(lrs) == pytest.approx(3e-4) and min(lrs[20:]) == pytest.approx(3e-5)
