"""Tests of tinyllm.quantize: int8 per-row quantization, float16 storage and global magnitude pruning, and
the run directories they write, which load through ``load_pretrained`` like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinyllm.autograd import no_grad
from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.cli import main as cli_main
from tinyllm.model import GPT, GPTConfig
from tinyllm.quantize import (
    dequantize_int8,
    file_size,
    float16_state,
    int8_state,
    prunable_names,
    prune_global,
    quantizable_names,
    quantize_int8,
    save_compressed,
)
from tinyllm.safetensors import load_file, read_header, save_file
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


def test_int8_state_quantizes_linear_and_embedding_weights_only():
    model = tiny_model(tie_weights=False)
    state = int8_state(model)
    assert set(quantizable_names(model)) == {"wte.weight", "wpe.weight", "lm_head.weight"} | {
        f"blocks.{i}.{layer}.weight" for i in range(2) for layer in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    assert state["blocks.0.mlp.fc.weight.int8"].dtype == np.int8 and state["blocks.0.mlp.fc.weight.scale"].shape == (256,)
    assert state["blocks.0.mlp.fc.bias"].dtype == np.float32 and "blocks.0.ln_1.weight" in state


@pytest.fixture
def run(tmp_path):
    tokenizer = BPETokenizer.train(TEXT, 300, pattern="gpt4", special_tokens=["<|endoftext|>"])
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    save_model(tmp_path / "run", model, tokenizer, step=3, extra_config={"template": "keep me"})
    return tmp_path / "run", model, tokenizer


def test_an_int8_run_is_about_4x_smaller_and_loads_through_load_pretrained(run, tmp_path):
    source, model, tokenizer = run
    ids = tokenizer.encode("The quick brown fox")[:16]

    save_compressed(source, tmp_path / "int8", model, "int8", tokenizer=tokenizer, step=3)
    loaded, loaded_tokenizer = load_pretrained(tmp_path / "int8")

    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["quantization"] == "int8" and config["template"] == "keep me", "the source config travels"
    assert file_size(source) / file_size(tmp_path / "int8") > 3.4
    q, scale = quantize_int8(model.blocks[1].attn.qkv.weight.numpy())
    np.testing.assert_array_equal(loaded.blocks[1].attn.qkv.weight.numpy(), dequantize_int8(q, scale))
    np.testing.assert_allclose(logits_of(loaded, ids), logits_of(model, ids), atol=0.02)
    assert loaded_tokenizer.encode("fox") == tokenizer.encode("fox")


def test_an_int8_file_without_its_scale_is_refused_naming_file_and_tensor(run, tmp_path):
    source, model, tokenizer = run
    save_compressed(source, tmp_path / "int8", model, "int8", tokenizer=tokenizer)
    tensors = load_file(tmp_path / "int8" / "model.safetensors")
    del tensors["blocks.0.mlp.fc.weight.scale"]
    save_file(tensors, tmp_path / "int8" / "model.safetensors")
    with pytest.raises(ValueError, match=r"int8/model\.safetensors: int8 tensor 'blocks\.0\.mlp\.fc\.weight\.int8' has no scale"):
        load_pretrained(tmp_path / "int8")


def test_an_unknown_quantization_is_refused(run, tmp_path):
    source, model, tokenizer = run
    save_compressed(source, tmp_path / "q", model, "int8", tokenizer=tokenizer)
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["quantization"] = "int4"
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantization 'int4' is not supported"):
        load_pretrained(tmp_path / "q")


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
    assert "file size" in out and "val ppl" in out and "tokens/s" in out and "prune 0.25 + int8" in out
    assert "25.0% of them" in out
    loaded, _ = load_pretrained(tmp_path / "small")
    assert loaded.config == model.config
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["compression"]["method"] == "int8" and config["compression"]["prune_sparsity"] == pytest.approx(0.25, abs=1e-3)


def test_tinyllm_compress_needs_a_method(run, tmp_path, capsys):
    source, _, _ = run
    assert cli_main(["compress", str(source), "--out", str(tmp_path / "x")]) == 2
    assert "--int8, --fp16 and/or --prune" in capsys.readouterr().err
