"""Tests of tinyllm.quantize: int8 per-row quantization, float16 storage and global magnitude pruning, and
the run directories they write, which load through ``load_pretrained`` like any other."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd import Tensor, no_grad
from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.cli import main as cli_main
from tinyllm.functional import int8
from tinyllm.generate import generate
from tinyllm.half_weights import store_half
from tinyllm.lora import apply_lora, load_pretrained_with_adapter, lora_layers, lora_linear, merge_lora
from tinyllm.model import GPT, GPTConfig
from tinyllm.nn import Embedding, Linear
from tinyllm.optim import AdamW
from tinyllm.quantize import (
    Int8Embedding,
    Int8Linear,
    Int8Weight,
    dequantize_int8,
    file_size,
    float16_state,
    int8_layers,
    model_bytes,
    prunable_names,
    prune_global,
    quantizable_names,
    quantize_int8,
    quantize_model,
    save_compressed,
)
from tinyllm.safetensors import load_file, read_header, save_file
from tinyllm.testing import gradcheck
from tinyllm.tokenizer import BPETokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. A list is a sequence of items; a dict maps keys to values. "
        "def f(x): return x + 1\n") * 30


def tiny_model(**overrides):
    return GPT(GPTConfig(**{**dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64), **overrides}), seed=0)


def logits_of(model, ids):
    with no_grad():
        return model(np.asarray(ids)[None])[0].numpy()


# ====================================================================== int8
def test_int8_quantization_follows_the_formula():
    w = np.array([[0.5, -1.27, 0.01, 0.0],
                  [2.0, 1.0, -0.5, 0.004],
                  [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)

    q, scale = quantize_int8(w)

    np.testing.assert_allclose(scale, [1.27 / 127, 2.0 / 127, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(q[0], [50, -127, 1, 0])
    np.testing.assert_array_equal(q[1], [127, 64, -32, 0])    # 63.5 → 64 and -31.75 → -32 (round half to even)
    assert not q[2].any(), "an all-zero row stays zero (scale 0)"
    assert q.dtype == np.int8 and scale.dtype == np.float32


def test_int8_rounding_error_is_at_most_half_a_step_per_row(rng):
    w = (rng.standard_normal((64, 48)) * rng.uniform(0.01, 3, size=(64, 1))).astype(np.float32)

    q, scale = quantize_int8(w)
    error = np.abs(dequantize_int8(q, scale) - w)

    assert np.all(error <= scale[:, None] / 2 * (1 + 1e-5)), "rounding error exceeds half a quantization step"
    assert q.min() >= -127 and np.all(np.abs(q).max(axis=1) == 127), "each row's largest weight maps to ±127"


def test_quantize_model_keeps_int8_weights_in_memory_at_a_quarter_of_the_bytes():
    model = tiny_model(tie_weights=False)
    ids = np.arange(12) % 50
    before_logits, before_bytes = logits_of(model, ids), model_bytes(model)
    names = set(quantizable_names(model))

    quantize_model(model)

    assert names == {"wte.weight", "wpe.weight", "lm_head.weight"} | {
        f"blocks.{i}.{layer}.weight" for i in range(2) for layer in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    state = model.state_dict()
    assert set(int8_layers(model)) == names
    assert all(state[name + ".int8"].dtype == np.int8 and state[name + ".scale"].shape == (state[name + ".int8"].shape[0],)
               for name in names), "every matrix is held as int8 + one scale per row"
    assert not any(isinstance(m, (Linear, Embedding)) for _, m in model.named_modules()), "no float matrix is left"
    assert state["blocks.0.mlp.fc.bias"].dtype == np.float32 and "blocks.0.ln_1.weight" in state
    assert model_bytes(model) < 0.28 * before_bytes
    np.testing.assert_allclose(logits_of(model, ids), before_logits, atol=0.02)


def test_int8_linear_is_linear_with_the_dequantized_weight_in_any_number_of_row_blocks(float64, rng, monkeypatch):
    weight = Int8Weight(*quantize_int8(rng.standard_normal((13, 6))), dtype="float64")
    x, bias = Tensor(rng.standard_normal((2, 3, 6))), Tensor(rng.standard_normal(13))
    expected = F.linear(x, Tensor(weight.dequantize()), bias).numpy()
    for block in (6, 18, 1 << 20):                    # 1 row, 3 rows and all 13 rows at a time
        monkeypatch.setattr(int8, "ROW_BLOCK", block)
        np.testing.assert_allclose(F.int8_linear(x, weight.int8, weight.scale, bias).numpy(), expected, rtol=1e-13)


@pytest.mark.parametrize("block", [18, 1 << 20], ids=["row-blocks", "one-block"])
def test_int8_linear_gradient_reaches_the_input_and_bias_only(float64, rng, monkeypatch, block):
    monkeypatch.setattr(int8, "ROW_BLOCK", block)
    weight = Int8Weight(*quantize_int8(rng.standard_normal((13, 6))), dtype="float64")
    x, bias = Tensor(rng.standard_normal((2, 3, 6)), requires_grad=True), Tensor(rng.standard_normal(13), requires_grad=True)

    error = gradcheck(lambda x, b: F.int8_linear(x, weight.int8, weight.scale, b), [x, bias])

    assert error < 1e-6, f"int8_linear's backward differs from finite differences by {error:.2e}"
    assert weight.int8.grad is None and weight.scale.grad is None, "int8 weights are frozen"


def test_int8_linear_refuses_what_it_cannot_multiply(rng):
    weight = Int8Weight(*quantize_int8(rng.standard_normal((4, 6))))
    with pytest.raises(ValueError, match="input of shape .* has 5 features but the weight"):
        F.int8_linear(Tensor(rng.standard_normal((2, 5))), weight.int8, weight.scale)
    with pytest.raises(ValueError, match="must be a 2-D int8 matrix"):
        F.int8_linear(Tensor(rng.standard_normal((2, 6))), Tensor(rng.standard_normal((4, 6))), weight.scale)
    with pytest.raises(ValueError, match=r"scale must be float of shape \(4,\)"):
        F.int8_linear(Tensor(rng.standard_normal((2, 6))), weight.int8, Tensor(np.ones(3)))


# ====================================================================== LoRA on an int8 base (QLoRA-style)
def test_lora_on_an_int8_base_gradients_match_finite_differences(float64, rng):
    weight = Int8Weight(*quantize_int8(rng.standard_normal((7, 5))), dtype="float64")
    x = Tensor(rng.standard_normal((2, 3, 5)), requires_grad=True)
    a, b = Tensor(rng.standard_normal((2, 5)), requires_grad=True), Tensor(rng.standard_normal((7, 2)), requires_grad=True)
    bias = Tensor(rng.standard_normal(7), requires_grad=True)

    error = gradcheck(lambda x, a, b, bias: lora_linear(x, weight, bias, a, b, 2.0), [x, a, b, bias])

    assert error < 1e-6, f"LoRA on an int8 base: relative gradient error {error:.2e}"
    float_base = lora_linear(x, Tensor(weight.dequantize()), bias, a, b, 2.0).numpy()
    np.testing.assert_allclose(lora_linear(x, weight, bias, a, b, 2.0).numpy(), float_base, rtol=1e-13)


def test_a_whole_int8_gpt_with_lora_sends_gradients_to_the_adapters_only(float64, rng):
    model = quantize_model(tiny_model(n_layer=1, n_embd=16, vocab_size=20, block_size=8))
    apply_lora(model, rank=2, alpha=4)
    for _, layer in lora_layers(model):
        layer.lora_B.data[...] = backend.asarray(rng.standard_normal(layer.lora_B.shape) * 0.3)
    idx, targets = rng.integers(0, 20, size=(2, 8)), rng.integers(0, 20, size=(2, 8))
    adapters = [p for p in model.parameters() if p.requires_grad]

    error = gradcheck(lambda *_: model(idx, targets)[1], adapters, max_elements=8)

    assert error < 1e-6, f"QLoRA GPT gradient differs from finite differences by {error:.2e}"
    assert len(adapters) == 8 and all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_qlora_learns_and_merges_into_float_layers_that_save_and_load(rng, tmp_path):
    model = quantize_model(tiny_model(n_embd=32))
    frozen = {name: backend.to_numpy(array).copy() for name, array in model.state_dict().items() if name.endswith(".int8")}
    apply_lora(model, rank=4, alpha=8)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = rng.integers(0, 50, size=(4, 16))
    losses = []
    for _ in range(8):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        model.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, f"QLoRA did not reduce the loss: {losses[0]:.3f} → {losses[-1]:.3f}"
    assert all(np.array_equal(backend.to_numpy(model.state_dict()[n]), a) for n, a in frozen.items()), \
        "the int8 weights must not move"
    expected = logits_of(model.eval(), idx[0])

    merge_lora(model)

    assert isinstance(model.blocks[0].mlp.fc, Linear) and isinstance(model.wte, Int8Embedding)
    np.testing.assert_allclose(logits_of(model, idx[0]), expected, atol=1e-5)
    assert not any(p.requires_grad for name in int8_layers(model) for p in model.get_submodule(name).parameters())
    save_model(tmp_path / "merged", model)
    loaded, _ = load_pretrained(tmp_path / "merged")
    np.testing.assert_array_equal(logits_of(loaded, idx[0]), logits_of(model, idx[0]))


@pytest.fixture
def run(tmp_path):
    tokenizer = BPETokenizer.train(TEXT, 300, pattern="gpt4", special_tokens=["<|endoftext|>"])
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    save_model(tmp_path / "run", model, tokenizer, step=3, extra_config={"template": "keep me"})
    return tmp_path / "run", model, tokenizer


def test_an_int8_run_is_about_4x_smaller_and_loads_as_int8(run, tmp_path):
    source, model, tokenizer = run
    ids = tokenizer.encode("The quick brown fox")[:16]
    quantized = quantize_model(copy.deepcopy(model))

    save_compressed(source, tmp_path / "int8", quantized, tokenizer=tokenizer, step=3)
    loaded, loaded_tokenizer = load_pretrained(tmp_path / "int8")

    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["quantization"] == "int8" and config["template"] == "keep me", "the source config travels"
    assert file_size(source) / file_size(tmp_path / "int8") > 3.4
    assert isinstance(loaded.blocks[1].attn.qkv, Int8Linear) and loaded.blocks[1].attn.qkv.weight.int8.dtype == np.int8
    q, scale = quantize_int8(model.blocks[1].attn.qkv.weight.numpy())
    np.testing.assert_array_equal(loaded.blocks[1].attn.qkv.weight.int8.numpy(), q)
    np.testing.assert_array_equal(logits_of(loaded, ids), logits_of(quantized, ids))
    np.testing.assert_allclose(logits_of(loaded, ids), logits_of(model, ids), atol=0.02)
    assert generate(loaded, ids, 6, temperature=0) == generate(quantized, ids, 6, temperature=0)
    assert loaded_tokenizer.encode("fox") == tokenizer.encode("fox")


def test_an_int8_file_in_the_first_format_loads_as_int8(run, tmp_path):
    """Files written before int8 layers existed: NAME.int8 + NAME.scale per matrix, other tensors float32."""
    source, model, tokenizer = run
    matrices = set(quantizable_names(model))
    tensors = {}
    for name, array in model.state_dict().items():
        if name in matrices:
            tensors[name + ".int8"], tensors[name + ".scale"] = quantize_int8(backend.to_numpy(array))
        else:
            tensors[name] = backend.to_numpy(array)
    (tmp_path / "old").mkdir()
    save_file(tensors, tmp_path / "old" / "model.safetensors", metadata={"format": "tinyllm", "step": "3"})
    config = json.loads((source / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**config, "quantization": "int8"}))

    loaded, _ = load_pretrained(tmp_path / "old")

    assert set(int8_layers(loaded)) == matrices
    np.testing.assert_array_equal(logits_of(loaded, [1, 2, 3]), logits_of(quantize_model(copy.deepcopy(model)), [1, 2, 3]))


def test_an_int8_file_without_its_scale_is_refused_naming_file_and_tensor(run, tmp_path):
    source, model, tokenizer = run
    save_compressed(source, tmp_path / "int8", quantize_model(model), tokenizer=tokenizer)
    tensors = load_file(tmp_path / "int8" / "model.safetensors")
    del tensors["blocks.0.mlp.fc.weight.scale"]
    save_file(tensors, tmp_path / "int8" / "model.safetensors")
    with pytest.raises(ValueError, match=r"int8/model\.safetensors: int8 tensor 'blocks\.0\.mlp\.fc\.weight\.int8' has no scale"):
        load_pretrained(tmp_path / "int8")


def test_an_unknown_quantization_is_refused(run, tmp_path):
    source, model, tokenizer = run
    save_compressed(source, tmp_path / "q", quantize_model(model), tokenizer=tokenizer)
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["quantization"] = "int4"
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantization 'int4' is not supported"):
        load_pretrained(tmp_path / "q")


def test_finetune_with_lora_on_an_int8_run_keeps_the_base_int8(tmp_path, capsys):
    from tinyllm.data.instructions import builtin_instructions, format_prompt
    train, _, _ = builtin_instructions(8, 0, 0, seed=0)
    tokenizer = BPETokenizer.train("".join(format_prompt(r) + r["output"] for r in train), 400,
                                   special_tokens=("<|endoftext|>",))
    save_model(tmp_path / "base", tiny_model(vocab_size=tokenizer.vocab_size, block_size=80, n_layer=1, n_embd=16),
               tokenizer)
    model, _ = load_pretrained(tmp_path / "base")
    save_compressed(tmp_path / "base", tmp_path / "int8", quantize_model(model), tokenizer=tokenizer)

    code = cli_main(["finetune", "instruct", "--ckpt", str(tmp_path / "int8"), "--out", str(tmp_path / "qlora"),
                     "--lora-rank", "2", "--train-size", "8", "--test-size", "2", "--epochs", "1", "--batch-size", "4",
                     "--max-new-tokens", "2", "--no-compare-base"])

    assert code == 0, capsys.readouterr().err
    with_adapter, _ = load_pretrained_with_adapter(tmp_path / "qlora")
    assert isinstance(with_adapter.blocks[0].attn.qkv.weight, Int8Weight), "the adapter sits on the int8 base"
    merged, _ = load_pretrained(tmp_path / "qlora")
    assert isinstance(merged.wte, Int8Embedding) and type(merged.blocks[0].attn.qkv) is Linear
    ids = tokenizer.encode("The quick brown fox")
    np.testing.assert_allclose(logits_of(merged, ids), logits_of(with_adapter, ids), atol=1e-4)


def test_int8_weights_cannot_be_trained_whole_or_stored_as_halves(run, tmp_path, capsys):
    source, model, tokenizer = run
    save_compressed(source, tmp_path / "int8", quantize_model(model), tokenizer=tokenizer)
    code = cli_main(["finetune", "instruct", "--ckpt", str(tmp_path / "int8"), "--out", str(tmp_path / "ft"),
                     "--train-size", "4", "--test-size", "0"])
    error = capsys.readouterr().err
    assert code == 2 and "holds int8 weights, which cannot take gradient steps" in error and "--lora-rank" in error
    with pytest.raises(ValueError, match="int8 weights already"):
        store_half(model, "float16")


# ====================================================================== float16
def test_an_fp16_run_stores_halves_and_loads_as_float32(run, tmp_path):
    source, model, tokenizer = run

    save_compressed(source, tmp_path / "fp16", model, "fp16", tokenizer=tokenizer)
    loaded, _ = load_pretrained(tmp_path / "fp16")

    assert {info.dtype for info in read_header(tmp_path / "fp16" / "model.safetensors").tensors.values()} == {"F16"}
    assert loaded.wte.weight.dtype == np.float32
    np.testing.assert_array_equal(loaded.wte.weight.numpy(), model.wte.weight.numpy().astype(np.float16).astype(np.float32))
    assert 1.9 < file_size(source) / file_size(tmp_path / "fp16") <= 2.0


def test_fp16_refuses_values_that_would_overflow():
    model = tiny_model()
    model.blocks[0].ln_2.weight.data[3] = 1e5
    with pytest.raises(ValueError, match=r"'blocks\.0\.ln_2\.weight' has values beyond float16"):
        float16_state(model)


# ====================================================================== pruning
def test_global_pruning_zeroes_the_smallest_linear_weights_across_layers():
    model = tiny_model()
    names = prunable_names(model)
    params = dict(model.named_parameters())
    before = {name: params[name].numpy().copy() for name in params}

    report = prune_global(model, 0.5)

    linear = np.concatenate([params[n].numpy().ravel() for n in names])
    original = np.concatenate([before[n].ravel() for n in names])
    pruned = (linear == 0) & (original != 0)
    assert report["pruned"] == round(0.5 * linear.size) and report["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert np.abs(original[pruned]).max() <= np.abs(original[~pruned]).min(), "a larger weight was pruned"
    for name in params:
        if name not in names:
            np.testing.assert_array_equal(params[name].numpy(), before[name], err_msg=f"{name} must not be pruned")
    sparsities = [float((params[n].numpy() == 0).mean()) for n in names]
    assert max(sparsities) - min(sparsities) > 0.01, "global ranking prunes layers unevenly"


def test_pruning_checks_its_fraction():
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune_global(tiny_model(), 1.0)
    assert prune_global(tiny_model(), 0.0)["pruned"] == 0


# ====================================================================== the CLI
def test_tinyllm_compress_prints_one_table_and_writes_a_loadable_run(run, tmp_path, capsys):
    source, model, tokenizer = run
    data = tmp_path / "data.txt"
    data.write_text(TEXT)

    code = cli_main(["compress", str(source), "--int8", "--prune", "0.25", "--out", str(tmp_path / "small"),
                     "--data", str(data), "--gen-tokens", "8", "--max-batches", "2"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "file" in out and "in memory" in out and "val ppl" in out and "generate tok/s" in out
    assert "prune 0.25 + int8" in out and "(25.0%)" in out and "stored dense" in out
    loaded, _ = load_pretrained(tmp_path / "small")
    assert loaded.config == model.config and int8_layers(loaded)
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["compression"]["methods"] == ["prune", "int8"]
    assert config["compression"]["unstructured"]["sparsity"] == pytest.approx(0.25, abs=1e-3)


def test_tinyllm_compress_needs_a_method(run, tmp_path, capsys):
    source, _, _ = run
    assert cli_main(["compress", str(source), "--out", str(tmp_path / "x")]) == 2
    assert "say how to compress: --prune-heads" in capsys.readouterr().err
