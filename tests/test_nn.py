"""Tests of tinyllm.nn: how modules find their parameters, save and load them, switch modes, and that the
layers' gradients are right (finite differences in float64)."""

import numpy as np
import pytest

from tinyllm import backend, default_dtype
from tinyllm.autograd import Tensor
from tinyllm.nn import (GELU, MLP, CausalSelfAttention, Dropout, Embedding, LayerNorm, Linear, Module,
                        Parameter)
from tinyllm.testing import gradcheck

TOLERANCE = 1e-6


class Block(Module):
    def __init__(self, dim, generator):
        self.norm = LayerNorm(dim)
        self.mlp = MLP(dim, hidden=2 * dim, dropout=0.5, generator=generator)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TinyNet(Module):
    """An embedding, a list of blocks, and an output layer whose weight is tied to the embedding."""

    def __init__(self, vocab=7, dim=4, n_blocks=2, seed=0):
        generator = backend.rng(seed)
        self.embed = Embedding(vocab, dim, generator=generator)
        self.blocks = [Block(dim, generator) for _ in range(n_blocks)]
        self.head = Linear(dim, vocab, bias=False, generator=generator)
        self.head.weight = self.embed.weight            # tied: one array, two uses
        self.scale = Tensor(np.ones(1))                 # a plain Tensor is not a parameter
        self.name = "tiny"                              # nor is anything else

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


BLOCK_NAMES = ["norm.weight", "norm.bias", "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias"]
EXPECTED_NAMES = ["embed.weight"] + [f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_NAMES]


def copy_state(module):
    return {name: backend.to_numpy(array).copy() for name, array in module.state_dict().items()}


# ====================================================================== registration
def test_named_parameters_walks_nested_modules_and_lists_in_order():
    names = [name for name, _ in TinyNet().named_parameters()]

    assert names == EXPECTED_NAMES


def test_a_tied_weight_is_listed_and_counted_once():
    net = TinyNet(vocab=7, dim=4)

    params = net.parameters()

    assert sum(p is net.embed.weight for p in params) == 1
    per_block = 4 + 4 + (8 * 4 + 8) + (4 * 8 + 4)     # norm weight, bias, fc, proj
    assert net.num_parameters() == 7 * 4 + 2 * per_block
    assert "head.weight" not in dict(net.named_parameters())


def test_parameters_are_the_named_parameters_in_the_same_order():
    net = TinyNet()

    assert [id(p) for p in net.parameters()] == [id(p) for _, p in net.named_parameters()]
    assert all(isinstance(p, Parameter) and p.requires_grad for p in net.parameters())


def test_named_modules_names_list_items_by_index():
    names = [name for name, _ in TinyNet().named_modules()]

    assert names[:4] == ["", "embed", "blocks.0", "blocks.0.norm"]
    assert "blocks.1.mlp.dropout" in names and "head" in names


def test_num_parameters_of_a_linear_layer_and_trainable_only():
    layer = Linear(3, 4)
    assert layer.num_parameters() == 3 * 4 + 4
    assert Linear(3, 4, bias=False).num_parameters() == 12

    layer.bias.requires_grad = False

    assert layer.num_parameters(trainable_only=True) == 12
    assert layer.num_parameters() == 16


def test_module_without_forward_says_so():
    with pytest.raises(NotImplementedError):
        Module()(1)


def test_layers_build_their_parameters_in_the_default_dtype():
    with default_dtype("float64"):
        layer = Linear(3, 2)
    assert layer.weight.dtype == np.float64 and layer.bias.dtype == np.float64
    assert Linear(3, 2).weight.dtype == np.float32


def test_linear_initialisation_uses_one_over_sqrt_fan_in():
    weight = Linear(400, 300, generator=backend.rng(0)).weight.numpy()

    assert weight.std() == pytest.approx(1 / np.sqrt(400), rel=0.02)
    assert Linear(400, 300).bias.numpy().tolist() == [0.0] * 300


def test_attention_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="n_embd=10 must be divisible by n_head=3"):
        CausalSelfAttention(10, 3)


# ====================================================================== state_dict
def test_state_dict_round_trip_makes_an_identical_model():
    source, target = TinyNet(seed=0).eval(), TinyNet(seed=1).eval()
    ids = np.array([[1, 2, 3], [6, 0, 5]])
    assert not np.allclose(source(ids).numpy(), target(ids).numpy())

    target.load_state_dict(copy_state(source))

    assert list(source.state_dict()) == EXPECTED_NAMES
    np.testing.assert_array_equal(target(ids).numpy(), source(ids).numpy())
    assert target.head.weight is target.embed.weight, "loading copies into the arrays; ties survive"


def test_state_dict_holds_the_parameters_own_arrays():
    net = TinyNet()

    assert net.state_dict()["embed.weight"] is net.embed.weight.data


def test_load_state_dict_names_missing_unexpected_and_mis_shaped_keys():
    net = TinyNet()
    state = copy_state(net)
    del state["blocks.1.norm.bias"]
    state["blocks.9.norm.bias"] = np.zeros(4)
    state["blocks.0.mlp.fc.weight"] = np.zeros((3, 3))
    before = copy_state(net)

    with pytest.raises(ValueError) as failure:
        net.load_state_dict(state)

    message = str(failure.value)
    assert "missing keys: blocks.1.norm.bias" in message, message
    assert "unexpected keys: blocks.9.norm.bias" in message, message
    assert "blocks.0.mlp.fc.weight: checkpoint (3, 3) vs model (8, 4)" in message, message
    for name, array in copy_state(net).items():  # nothing was half-loaded
        np.testing.assert_array_equal(array, before[name])


def test_load_state_dict_not_strict_skips_missing_and_unexpected_but_not_shapes():
    net, other = TinyNet(seed=0), TinyNet(seed=1)
    state = copy_state(other)
    del state["embed.weight"]
    state["extra"] = np.zeros(2)

    net.load_state_dict(state, strict=False)

    np.testing.assert_array_equal(net.blocks[0].mlp.fc.weight.numpy(), other.blocks[0].mlp.fc.weight.numpy())
    assert not np.array_equal(net.embed.weight.numpy(), other.embed.weight.numpy())
    with pytest.raises(ValueError, match="shape mismatches"):
        net.load_state_dict({"embed.weight": np.zeros((2, 2))}, strict=False)


# ====================================================================== modes and gradients
def test_train_and_eval_reach_every_module():
    net = TinyNet()

    net.eval()
    assert all(not m.training for _, m in net.named_modules())
    assert net.train() is net
    assert all(m.training for _, m in net.named_modules())


def test_dropout_is_active_only_in_training_mode():
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3, 8)))
    mlp = MLP(8, dropout=0.5, std=0.5, proj_std=0.5, generator=backend.rng(0))

    mlp.eval()
    first, second = mlp(x).numpy(), mlp(x).numpy()
    mlp.train()
    trained = mlp(x).numpy()

    np.testing.assert_array_equal(first, second)
    assert (first != 0).all()
    zeros = trained == 0
    assert 0.3 < zeros.mean() < 0.7, f"about half should be dropped, got {zeros.mean():.2f}"
    np.testing.assert_allclose(trained[~zeros], 2 * first[~zeros], rtol=1e-5)  # survivors scaled by 1/(1-p)


def test_dropout_module_follows_its_training_flag():
    drop = Dropout(0.9)
    x = Tensor(np.ones(100))

    assert (drop.eval()(x).numpy() == 1).all()
    assert (drop.train()(x).numpy() == 0).any()


def test_zero_grad_clears_every_gradient():
    net = TinyNet()
    net(np.array([[1, 2]])).sum().backward()
    assert all(p.grad is not None for p in net.parameters())

    net.zero_grad()

    assert all(p.grad is None for p in net.parameters())


def module_gradcheck(module, x):
    """Check the gradients of ``module(x)`` with respect to x and every parameter."""
    params = module.parameters()
    error = gradcheck(lambda x, *_: module(x), [x, *params], seed=1234)
    assert error < TOLERANCE, f"relative gradient error {error:.3g}"


def leaf(shape, rng):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


@pytest.mark.usefixtures("float64")
def test_linear_gradients(rng):
    module_gradcheck(Linear(4, 3, generator=backend.rng(0)), leaf((2, 3, 4), rng))


@pytest.mark.usefixtures("float64")
def test_layer_norm_gradients(rng):
    norm = LayerNorm(5)
    norm.weight.data[...] = backend.asarray(1 + 0.5 * rng.standard_normal(5))  # away from the (symmetric) ones/zeros start
    norm.bias.data[...] = backend.asarray(rng.standard_normal(5))
    module_gradcheck(norm, leaf((2, 3, 5), rng))


@pytest.mark.usefixtures("float64")
def test_mlp_gradients(rng):
    mlp = MLP(4, hidden=8, std=0.5, proj_std=0.5, generator=backend.rng(0))
    module_gradcheck(mlp, leaf((2, 3, 4), rng))


@pytest.mark.usefixtures("float64")
def test_gelu_module_gradients(rng):
    module_gradcheck(GELU(), leaf((3, 4), rng))


@pytest.mark.usefixtures("float64")
def test_causal_self_attention_gradients(rng):
    attention = CausalSelfAttention(6, 2, std=0.5, proj_std=0.5, generator=backend.rng(0))
    module_gradcheck(attention, leaf((2, 4, 6), rng))


@pytest.mark.usefixtures("float64")
def test_embedding_gradients():
    table = Embedding(5, 3, std=1.0, generator=backend.rng(0))
    ids = np.array([[0, 4, 4], [2, 0, 4]])
    error = gradcheck(lambda w: table(ids), [table.weight], seed=1234)
    assert error < TOLERANCE


def test_causal_self_attention_is_causal(rng):
    attention = CausalSelfAttention(8, 2, std=0.5, proj_std=0.5, generator=backend.rng(0))
    x = rng.standard_normal((1, 5, 8))
    changed = x.copy()
    changed[0, 3:] += 1.0                                      # alter the future of position 2

    y, y_changed = attention(Tensor(x)).numpy(), attention(Tensor(changed)).numpy()

    np.testing.assert_allclose(y[0, :3], y_changed[0, :3], rtol=1e-6)
    assert not np.allclose(y[0, 3:], y_changed[0, 3:])
