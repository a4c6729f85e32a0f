"""Mixture of experts:
a router sends each token to k of E feed-forward "experts" and mixes their outputs.

    x (N, C) ──router──► logits (N, E) ──softmax──► p (N, E) ──top-k──► experts e_1 … e_k,
                                                                         weights w_1 … w_k
    y_n = Σ_j w_nj · FFN_{e_nj}(x_n)
    FFN_e(x) = (silu(x W_gate,eᵀ) ⊙ x W_up,eᵀ) W_down,eᵀ          (SwiGLU)

A token pays for k experts, while the layer holds E of them: more parameters at the same compute per
token (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021; Mixtral, Jiang et al. 2024).

Routing (``top_k_experts``, ``router_weights``): the k experts with the largest router probabilities
(ties go to the lower expert index, so routing is deterministic for a fixed input). Their weights
are the *renormalised* top-k probabilities w_j = p_{e_j} / Σ_i p_{e_i} (Mixtral; the same as a
softmax over the k chosen logits) when k > 1, and the raw probability w = p_e when k = 1 (Switch):
renormalising a single weight would make it always 1, and the router would then learn only from the
auxiliary loss. ``normalize`` overrides. The top-k choice itself is piecewise constant, so gradients
reach the router only through the weights (and the auxiliary loss): a token tells the router "this
expert's output helped / hurt", not "try another one".

Dispatch (``moe_experts``): the N·k (token, expert) assignments are sorted by expert with one stable
argsort, the tokens gathered in that order (one fancy-index copy, (N·k, C)), and each expert runs
its SwiGLU on its contiguous slice with three matmuls — a Python loop over experts, never over
tokens. Each expert's weighted output is written to its assignment's slot, and a token's output is
the sum of its k slots. The backward runs the same loop: the gradient of each slot is gathered from
dy, pushed through that expert's SwiGLU (hand-derived, below), and the input gradients are scattered
back to the tokens the same way (no ``add.at``: each slot is a distinct row, and the sum over a
token's k slots is a reshape and a sum).

Load balancing (``load_balancing_loss``): without it, a router that starts slightly favouring one
expert sends it more tokens, trains it more, favours it more — collapse. The Switch/Mixtral
auxiliary loss is

    L_aux = E · Σ_e f_e · P_e,      f_e = fraction of the N·k assignments that went to e  (Σ f = 1)
                                    P_e = mean over tokens of the router probability p_{n,e}

f is a count (no gradient); P carries the gradient: dL_aux/dp_{n,e} = E f_e / N, pushing probability
away from over-used experts. L_aux = 1 when routing is uniform (f = P = 1/E) and grows to E when one
expert takes everything. (f here counts assignments, so it sums to 1 for any k; Hugging Face's
Mixtral loss counts per top-k slot and is k times this.) The model adds
``aux_loss_coef · Σ_layers L_aux`` to its training loss.
"""

from __future__ import annotations

import math

from .. import backend
from ..autograd import Tensor, array_of, fused_op
from .dense import linear, sigmoid, silu_derivative
from .losses import softmax


def check_expert_top_k(k, n_expert: int) -> None:
    """Each token goes to k of the n_expert experts: 1 ≤ k ≤ n_expert."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_expert:
        raise ValueError(f"expert_top_k={k} must be between 1 and n_expert={n_expert}")


def top_k_experts(probs, k: int):
    """Raw (N..., E) router probabilities → (N..., k) integer ids of the k most probable experts,
    most probable first; ties go to the lower expert id (a stable sort), so routing is a fixed
    function of x."""
    check_expert_top_k(k, probs.shape[-1])
    return backend.xp.argsort(-probs, axis=-1, kind="stable")[..., :k]


def router_weights_forward(probs, indices, normalize: bool):
    """The mixing weight of each chosen expert: probs (N..., E) and indices (N..., k) → (N..., k).
    normalize:  w_j = p_j / S,  S = Σ_i p_i over the k chosen;  otherwise w_j = p_j."""
    chosen = backend.xp.take_along_axis(probs, indices, axis=-1)     # p_j (N..., k)
    total = chosen.sum(axis=-1, keepdims=True) if normalize else None   # S (N..., 1)
    weights = chosen / total if normalize else chosen                 # w_j = p_j / S
    return weights, (probs.shape, indices, weights, total)


def router_weights_backward(dw, cache, needs=(True, False)):
    """One gradient per input (probs, indices); the ids get none. With normalisation,
        dp_i = Σ_j dw_j (δ_ij / S - p_j / S²) = (dw_i - Σ_j dw_j w_j) / S      for each chosen i,
    otherwise dp_i = dw_i. Unchosen experts get dp = 0."""
    xp = backend.xp
    probs_shape, indices, weights, total = cache
    if total is not None:                                    # undoes w_j = p_j / S
        dchosen = dw - xp.einsum("...j,...j->...", dw, weights)[..., None]
        dchosen /= total
    else:
        dchosen = dw
    n_expert, k = probs_shape[-1], indices.shape[-1]
    dprobs = xp.zeros((indices.size // k, n_expert), dtype=dw.dtype)          # (N, E)
    rows = xp.arange(dprobs.shape[0])[:, None]
    # undoes chosen = p[indices]: the k chosen per row
    dprobs[rows, indices.reshape(-1, k)] = dchosen.reshape(-1, k)
    return dprobs.reshape(probs_shape), None


def router_weights(probs: Tensor, indices, normalize: bool | None = None) -> Tensor:
    """The top-k mixing weights (``router_weights_forward``); ``normalize`` defaults to k > 1.
    Saves the weights (N·k) and S (N)."""
    normalize = indices.shape[-1] > 1 if normalize is None else normalize
    weights, cache = router_weights_forward(probs.data, indices, normalize)
    return fused_op(router_weights_backward, weights, cache, probs, indices)


def expert_load(indices, n_expert: int):
    """Fraction of the (token, expert) assignments that went to each expert: an (E,)
    array summing to 1."""
    counts = backend.xp.bincount(indices.reshape(-1), minlength=n_expert)
    return counts / max(indices.size, 1)


def load_balancing_loss_forward(probs, indices):
    """L_aux = E · Σ_e f_e · P_e (see the module docstring): a scalar. probs (N..., E),
    indices (N..., k)."""
    n_expert = probs.shape[-1]
    fraction = expert_load(indices, n_expert).astype(probs.dtype)   # (E,) f_e
    mean_prob = probs.reshape(-1, n_expert).mean(axis=0)            # (E,) P_e
    loss = n_expert * backend.xp.dot(fraction, mean_prob)
    return backend.xp.asarray(loss, dtype=probs.dtype), (fraction, probs.shape)


def load_balancing_loss_backward(dloss, cache, needs=(True, False)):
    """dL/dp_{n,e} = E · f_e / N for every token n (f is a count and has no gradient)."""
    fraction, probs_shape = cache
    n_expert = probs_shape[-1]
    n_tokens = math.prod(probs_shape) // n_expert
    # undoes L = E Σ_e f_e mean_n p_{n,e}: the same row for every token
    row = fraction * (n_expert / n_tokens)
    row *= dloss
    return backend.xp.broadcast_to(row, probs_shape).copy(), None


def load_balancing_loss(probs: Tensor, indices) -> Tensor:
    """The Switch/Mixtral auxiliary loss (``load_balancing_loss_forward``). Saves f (E values)."""
    loss, cache = load_balancing_loss_forward(probs.data, indices)
    return fused_op(load_balancing_loss_backward, loss, cache, probs, indices)


def moe_experts_forward(x, indices, weights, w_gate, w_up, w_down):
    """y_n = Σ_j w_nj · FFN_{e_nj}(x_n), each expert a SwiGLU MLP, tokens dispatched by sorting
    (see above).

    Shapes: x (..., C); indices (..., k) expert ids; weights (..., k); w_gate and w_up (E, H, C);
    w_down (E, C, H); y (..., C). For the rows X_e (n_e, C) routed to expert e with weights a
    (n_e,):
        G = X_e W_gateᵀ,  U = X_e W_upᵀ,  h = silu(G) ⊙ U,  O = h W_downᵀ,  y-slot = a ⊙ O
    Saves the sort (N·k ids) and G, U (N·k × H each); X_e is re-gathered and h recomputed in the
    backward.
    """
    xp = backend.xp
    n_expert, k, channels = w_gate.shape[0], indices.shape[-1], x.shape[-1]
    x2d = x.reshape(-1, channels)                            # (N, C)
    # (N·k,) assignment a = n·k + j → expert
    flat = indices.reshape(-1)
    order = xp.argsort(flat, kind="stable")                  # assignments grouped by expert
    # (N·k,) the token of each sorted assignment
    token_of = order // k
    bounds = [0] + backend.to_numpy(xp.cumsum(xp.bincount(flat, minlength=n_expert))).tolist()
    a_sorted = weights.reshape(-1)[order]                    # (N·k,)
    x_sorted = x2d[token_of]                                 # (N·k, C) gather
    # (N·k, H) G of every assignment
    gate_pre = xp.empty((flat.size, w_gate.shape[1]), dtype=x.dtype)
    up_pre = xp.empty_like(gate_pre)                                    # (N·k, H) U
    # (N·k, C) weighted outputs, assignment order
    slots = xp.empty((flat.size, channels), dtype=x.dtype)
    for e, (s, t) in enumerate(zip(bounds, bounds[1:])):
        if s == t:
            continue
        gate_pre[s:t] = x_sorted[s:t] @ w_gate[e].T          # G (n_e, H)
        up_pre[s:t] = x_sorted[s:t] @ w_up[e].T              # U (n_e, H)
        h = gate_pre[s:t] * sigmoid(gate_pre[s:t]) * up_pre[s:t]         # h = silu(G) ⊙ U
        # a ⊙ O, back to assignment order
        slots[order[s:t]] = (h @ w_down[e].T) * a_sorted[s:t, None]
    # a token's output: the sum of its k slots
    y = slots.reshape(-1, k, channels).sum(axis=1)
    cache = (x2d, x.shape, k, order, token_of, bounds, a_sorted, gate_pre, up_pre, w_gate, w_up,
             w_down)
    return y.reshape(x.shape), cache


def moe_experts_backward(dy, cache, needs=(True, False, True, True, True, True)):
    """With dY_e the output gradient of expert e's rows (gathered from dy):
        da = rowsum(dY_e ⊙ O) = rowsum((dY_e W_down) ⊙ h)         (no need to keep O)
        dW_down = (a ⊙ dY_e)ᵀ h,     dh = a ⊙ (dY_e W_down)
        dU = dh ⊙ silu(G),           dG = dh ⊙ U ⊙ silu'(G)                (``swiglu``'s rule)
        dW_gate = dGᵀ X_e,  dW_up = dUᵀ X_e,   dX_e = dG W_gate + dU W_up
    and dx_n = Σ over n's k slots of dX (un-sorted: each slot is a distinct row, so no add.at is
    needed). Experts that no token chose get a zero gradient."""
    xp = backend.xp
    x2d, x_shape, k, order, token_of, bounds, a_sorted, gate_pre, up_pre = cache[:9]
    w_gate, w_up, w_down = cache[9:]
    dy_sorted = dy.reshape(-1, x2d.shape[1])[token_of]       # (N·k, C) each slot's output gradient
    x_sorted = x2d[token_of]                                 # (N·k, C)
    dx_sorted, da_sorted = xp.zeros_like(x_sorted), xp.empty(len(order), dtype=dy.dtype)
    dW = [xp.zeros_like(w) if need else None for w, need in zip((w_gate, w_up, w_down), needs[3:])]
    for e, (s, t) in enumerate(zip(bounds, bounds[1:])):
        if s == t:
            continue
        g, u, a = gate_pre[s:t], up_pre[s:t], a_sorted[s:t, None]
        sig = sigmoid(g)
        h = g * sig * u                                      # recomputed  h = silu(G) ⊙ U
        dh = dy_sorted[s:t] @ w_down[e]                      # (n_e, H)  dY_e W_down
        da_sorted[s:t] = (dh * h).sum(axis=1)                # undoes y-slot = a ⊙ O
        if needs[5]:
            dW[2][e] = (dy_sorted[s:t] * a).T @ h            # undoes O = h W_downᵀ
        dh = dh * a
        du, dg = dh * g * sig, dh * u * silu_derivative(g, sig)          # undo h = silu(G) ⊙ U
        if needs[3]:
            dW[0][e] = dg.T @ x_sorted[s:t]                  # undo G = X W_gateᵀ and U = X W_upᵀ
        if needs[4]:
            dW[1][e] = du.T @ x_sorted[s:t]
        if needs[0]:
            dx_sorted[s:t] = dg @ w_gate[e] + du @ w_up[e]
    dx = dweights = None
    if needs[0]:
        dx_slots = xp.empty_like(dx_sorted)
        dx_slots[order] = dx_sorted                          # sorted → assignment order
        dx = dx_slots.reshape(-1, k, x2d.shape[1]).sum(axis=1).reshape(x_shape)
    if needs[2]:
        dweights = xp.empty_like(da_sorted)
        dweights[order] = da_sorted
        dweights = dweights.reshape(*x_shape[:-1], k)
    return dx, None, dweights, *dW


def moe_experts(x: Tensor, indices, weights: Tensor, w_gate: Tensor, w_up: Tensor,
                w_down: Tensor) -> Tensor:
    """The experts' outputs mixed by ``weights`` (``moe_experts_forward``)."""
    n_expert, _, channels = w_gate.shape
    if w_up.shape != w_gate.shape or w_down.shape != (n_expert, channels, w_gate.shape[1]):
        raise ValueError(f"moe_experts: w_gate {w_gate.shape} and w_up {w_up.shape} must be "
                         f"(E, H, C) and w_down {w_down.shape} must be (E, C, H)")
    if x.shape[-1] != channels:
        raise ValueError(f"moe_experts: input of shape {x.shape} has {x.shape[-1]} features "
                         f"but the experts expect {channels}")
    indices = backend.xp.asarray(array_of(indices))
    if indices.shape != x.shape[:-1] + indices.shape[-1:] or weights.shape != indices.shape:
        raise ValueError(f"moe_experts: indices {indices.shape} and weights {weights.shape} "
                         f"must both be {x.shape[:-1]} + (k,) for x of shape {x.shape}")
    lowest, highest = backend.host_min_max(indices) if indices.size else (0, 0)
    if lowest < 0 or highest >= n_expert:
        raise ValueError(f"moe_experts: expert ids must be in [0, {n_expert}), got "
                         f"{lowest}…{highest}")
    y, cache = moe_experts_forward(x.data, indices, weights.data, w_gate.data, w_up.data,
                                   w_down.data)
    return fused_op(moe_experts_backward, y, cache, x, indices, weights, w_gate, w_up, w_down)


def moe(x: Tensor, router_weight: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, top_k: int,
        normalize: bool | None = None):
    """A whole MoE feed-forward layer: route, dispatch, mix. Returns (y (..., C), aux loss (scalar
    Tensor), expert load (E,) raw array of assignment fractions).

    router_weight (E, C) (a bias-free linear layer);
    expert weights as in ``moe_experts``. Five graph nodes:
    router linear, softmax, the top-k weights, the experts, and the auxiliary loss.
    """
    n_expert = router_weight.shape[0]
    if w_gate.shape[0] != n_expert:
        raise ValueError(f"moe: the router scores {n_expert} experts but the expert weights hold "
                         f"{w_gate.shape[0]}")
    probs = softmax(linear(x, router_weight))                # (..., E)
    indices = top_k_experts(probs.data, top_k)               # (..., k)
    weights = router_weights(probs, indices, normalize)       # (..., k)
    y = moe_experts(x, indices, weights, w_gate, w_up, w_down)
    return y, load_balancing_loss(probs, indices), expert_load(indices, n_expert)
