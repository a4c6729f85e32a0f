"""Tests of LoRA (tinyllm.lora): the fused op's gradients, what is frozen, merging, adapter files, errors.

The promises: a fresh adapter changes nothing (B = 0); only A and B (and named extras) learn; merging folds
the update into W without changing a single output beyond rounding; an adapter saved next to a base run
loads back into the same function.
"""

import numpy as np
import pytest

from tinyllm import Tensor, backend
from tinyllm.checkpoint import save_model
from tinyllm.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRALinear, apply_lora, lora_layers, lora_linear,
                          load_adapter, load_pretrained_with_adapter, merge_lora, save_adapter)
from tinyllm.model import GPT, GPTConfig
from tinyllm.nn import Linear
from tinyllm.testing import gradcheck
from tinyllm.tokenizer import CharTokenizer

TINY = dict(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_gpt(seed=0):
    return GPT(GPTConfig(**TINY), seed=seed)


def randomise_adapters(model, rng, scale=0.3):
    """B starts at zero, which would make dA zero too; random B makes every gradient worth checking."""
    for _, layer in lora_layers(model):
        layer.lora_B.data[...] = backend.asarray(rng.standard_normal(layer.lora_B.shape) * scale)


def logits_of(model, idx):
    model.eval()
    return model(idx)[0].numpy()


# ---------------------------------------------------------------------------------------------- the fused op

def test_lora_linear_forward_is_the_formula(float64, rng):
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    a, bb = rng.standard_normal((2, 5)), rng.standard_normal((4, 2))
    y = lora_linear(Tensor(x), Tensor(w), Tensor(b), Tensor(a), Tensor(bb), scale=1.5)
    expected = x @ w.T + b + 1.5 * (x @ a.T) @ bb.T
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, err_msg="y must be x Wᵀ + b + s (x Aᵀ) Bᵀ")


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-base", "trainable-base"])
def test_lora_linear_gradients_match_finite_differences(float64, rng, frozen):
    x = Tensor(rng.standard_normal((2, 3, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 5)), requires_grad=not frozen)
    b = Tensor(rng.standard_normal(4), requires_grad=not frozen)
    a = Tensor(rng.standard_normal((2, 5)), requires_grad=True)
    bb = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    error = gradcheck(lambda *t: lora_linear(*t, scale=2.0), [x, w, b, a, bb])
    assert error < 1e-7, f"lora_linear's backward differs from finite differences by {error:.2e}"
    if frozen:
        assert w.grad is None and b.grad is None, "a frozen base weight must receive no gradient"


def test_lora_dropout_gradient_matches_finite_differences(float64, rng):
    # Dropout draws a fresh mask per call; a generator re-seeded inside the function makes every call
    # (the analytic one and each finite-difference one) use the same mask.
    x = Tensor(rng.standard_normal((3, 5)), requires_grad=True)
    w, a = Tensor(rng.standard_normal((4, 5))), Tensor(rng.standard_normal((2, 5)), requires_grad=True)
    bb = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    error = gradcheck(lambda x, a, bb: lora_linear(x, w, None, a, bb, 2.0, dropout=0.4, training=True,
                                                   generator=backend.rng(7)), [x, a, bb])
    assert error < 1e-7, f"lora_linear with dropout: relative error {error:.2e}"


def test_lora_wrapped_linear_gradients(float64, rng):
    layer = LoRALinear(Linear(6, 3), rank=2, alpha=4)
    layer.lora_B.data[...] = backend.asarray(rng.standard_normal((3, 2)))
    x = Tensor(rng.standard_normal((4, 6)), requires_grad=True)
    error = gradcheck(lambda x, a, b: layer(x), [x, layer.lora_A, layer.lora_B])
    assert error < 1e-7
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.scale == 2.0, "scale must be alpha / rank"


# ---------------------------------------------------------------------------------------------- a LoRA GPT

def test_whole_lora_gpt_gradients_reach_only_the_adapters(float64, rng):
    model = tiny_gpt()
    report = apply_lora(model, rank=2, alpha=4)
    randomise_adapters(model, rng)
    idx, targets = rng.integers(0, 20, size=(2, 8)), rng.integers(0, 20, size=(2, 8))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    error = gradcheck(lambda *_: model(idx, targets)[1], list(trainable.values()), max_elements=12)

    assert error < 1e-6, f"LoRA GPT gradient differs from finite differences by {error:.2e}"
    assert set(trainable) == {f"blocks.{i}.{t}.lora_{m}" for i in range(2)
                              for t in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj") for m in "AB"}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen == [], f"frozen parameters received gradients: {frozen}"
    assert len(report["wrapped"]) == 8 and report["trainable"] == sum(p.size for p in trainable.values())


def test_fresh_adapter_leaves_the_model_unchanged(float64, rng):
    base = tiny_gpt()
    idx = rng.integers(0, 20, size=(2, 8))
    before = logits_of(base, idx)
    apply_lora(base, rank=4)
    np.testing.assert_array_equal(logits_of(base, idx), before, err_msg="B = 0 must make a fresh LoRA model the base model")


def test_merge_lora_keeps_outputs_and_restores_plain_linears(float64, rng):
    model = tiny_gpt()
    apply_lora(model, rank=3, alpha=6)
    randomise_adapters(model, rng)
    idx = rng.integers(0, 20, size=(2, 8))
    with_adapters = logits_of(model, idx)

    merge_lora(model)

    np.testing.assert_allclose(logits_of(model, idx), with_adapters, atol=1e-6, rtol=0)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    assert set(model.state_dict()) == set(tiny_gpt().state_dict()), "a merged model must have the base model's names"


def test_lora_trains_a_small_fraction_and_learns(rng):
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config, seed=0)
    report = apply_lora(model, rank=2, alpha=4, targets=("attn.qkv", "attn.proj"))
    assert report["fraction"] < 0.10, f"LoRA trains {report['fraction']:.1%} of the parameters"
    from tinyllm.optim import AdamW
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = rng.integers(0, 50, size=(4, 16))
    losses = []
    for _ in range(15):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        model.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, f"LoRA did not reduce the loss: {losses[0]:.3f} → {losses[-1]:.3f}"
    assert len(optimizer.exp_avg) == 8, "AdamW must hold moments for the adapters only"


# ---------------------------------------------------------------------------------------------- files

def test_adapter_saves_small_and_loads_on_top_of_its_base(tmp_path, rng):
    base = tiny_gpt()
    save_model(tmp_path / "base", base, CharTokenizer.from_text("abcdefghijklmnopqrst"))
    model = tiny_gpt()
    apply_lora(model, rank=2, alpha=4, targets=("attn.qkv",))
    randomise_adapters(model, rng)
    idx = rng.integers(0, 20, size=(2, 8))
    expected = logits_of(model, idx)

    save_adapter(tmp_path / "adapter", model, base=tmp_path / "base")
    loaded, tokenizer = load_pretrained_with_adapter(tmp_path / "adapter")

    np.testing.assert_array_equal(logits_of(loaded, idx), expected)
    assert tokenizer is not None and (tmp_path / "adapter" / ADAPTER_CONFIG).exists()
    size = (tmp_path / "adapter" / ADAPTER_WEIGHTS).stat().st_size
    assert size < (tmp_path / "base" / "model.safetensors").stat().st_size / 5, "an adapter file must be small"


def test_load_adapter_rejects_tensors_the_model_lacks(tmp_path):
    model = tiny_gpt()
    apply_lora(model, rank=2, targets=("mlp.fc",))
    save_adapter(tmp_path, model)
    other = GPT(GPTConfig(**{**TINY, "n_layer": 1}))
    with pytest.raises(ValueError, match="not parameters of the model"):
        load_adapter(other, tmp_path)


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("rank", [0, -2, 1.5])
def test_bad_rank_is_a_clear_error(rank):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        apply_lora(tiny_gpt(), rank=rank)


def test_target_matching_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\['attn.qvk'\] match no Linear layer.*attn.qkv"):
        apply_lora(tiny_gpt(), targets=("attn.qvk",))


def test_applying_twice_and_merging_nothing_are_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(model)
    apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model)


def test_trainable_names_modules_by_path_or_suffix():
    model = tiny_gpt()
    apply_lora(model, rank=2, targets=("mlp.fc",), trainable=("ln_f", "ln_2", "blocks.1.attn"))
    extras = sorted(n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)
    assert extras == ["blocks.0.ln_2.bias", "blocks.0.ln_2.weight", "blocks.1.attn.proj.bias", "blocks.1.attn.proj.weight",
                      "blocks.1.attn.qkv.bias", "blocks.1.attn.qkv.weight", "blocks.1.ln_2.bias", "blocks.1.ln_2.weight",
                      "ln_f.bias", "ln_f.weight"]
