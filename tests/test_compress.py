"""Tests of compression that changes the model's shape: structured pruning of heads and MLP channels
(tinyllm.pruning), low-rank factorisation by SVD (tinyllm.low_rank), and ``tinyllm compress --each``.

The promises: what is pruned is what matters least (a unit that writes nothing goes first, and removing it
changes no output); the result is really smaller (its matrices, its parameter count, its file) and is an
ordinary run that loads and generates; the factored rank holds the asked share of Σσ²; bad amounts are
refused with a message that says why.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from tinyllm import Tensor, backend, default_dtype
from tinyllm.autograd import no_grad
from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.cli import main as cli_main
from tinyllm.generate import generate
from tinyllm.low_rank import LowRankLinear, energy_rank, factorize_model, low_rank_ranks
from tinyllm.model import GPT, GPTConfig, preset
from tinyllm.nn import Linear
from tinyllm.pruning import importance, prune_structured
from tinyllm.quantize import file_size, quantize_model
from tinyllm.testing import gradcheck
from tinyllm.tokenizer import BPETokenizer

TINY = dict(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32)


def tiny_model(**overrides):
    return GPT(GPTConfig(**{**TINY, **overrides}), seed=0)


def logits_of(model, ids):
    model.eval()
    with no_grad():
        return model(np.asarray(ids))[0].numpy()


def calibration(rows=3):
    return np.random.default_rng(1).integers(0, 40, size=(rows, 16))


# ====================================================================== structured pruning
def silence_head(model, layer, head):
    """Zero a head's columns of attn.proj: it then adds nothing to the residual stream."""
    d = model.config.head_size
    model.blocks[layer].attn.proj.weight.data[:, head * d:(head + 1) * d] = 0


def test_a_head_that_writes_nothing_scores_zero_and_goes_without_changing_any_output():
    model = tiny_model()
    silence_head(model, 0, 2)
    silence_head(model, 1, 0)
    ids = calibration()
    expected = logits_of(model, ids)

    scores = importance(model, ids)["heads"]
    pruned, report = prune_structured(model, ids, heads=1)

    assert scores[0, 2] == 0 and scores[1, 0] == 0 and (np.delete(scores, [2, 4]) > 0).all()
    assert report["heads_kept"] == [[0, 1, 3], [1, 2, 3]]
    c = pruned.config
    assert (c.n_head, c.head_dim, c.n_embd) == (3, 8, 32), "3 heads of width 8 in 32 dimensions"
    assert pruned.blocks[0].attn.qkv.weight.shape == (3 * 3 * 8, 32) and pruned.blocks[0].attn.proj.weight.shape == (32, 24)
    assert report["parameters_after"] == pruned.num_parameters() < model.num_parameters()
    np.testing.assert_allclose(logits_of(pruned, ids), expected, atol=1e-5)
    assert model.config.n_head == 4 and model.blocks[0].attn.qkv.weight.shape == (96, 32), "the original is untouched"


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_mlp_channels_that_write_nothing_go_first_without_changing_any_output(mlp):
    model = tiny_model(mlp=mlp, mlp_hidden=64)
    dead = [3, 10, 11, 40, 63, 0, 5, 20]                       # 8 of 64 = the 12.5% pruned below
    for block in model.blocks:
        block.mlp.proj.weight.data[:, dead] = 0
    ids = calibration()
    expected = logits_of(model, ids)

    pruned, report = prune_structured(model, ids, mlp_fraction=0.125)

    assert pruned.config.mlp_hidden == 56 and report["mlp_removed_per_layer"] == 8
    assert pruned.blocks[1].mlp.proj.weight.shape == (32, 56)
    np.testing.assert_allclose(logits_of(pruned, ids), expected, atol=1e-5)


def test_grouped_query_attention_prunes_whole_kv_groups_and_the_cache_still_works(tmp_path):
    model = GPT(preset("llama-nano", vocab_size=40, block_size=16), seed=0)      # 4 query heads, 2 kv heads
    pruned, report = prune_structured(model, calibration(), heads=1, mlp_fraction=0.5)

    c = pruned.config
    assert (c.n_head, c.n_kv_head, c.head_dim, c.mlp_hidden) == (2, 1, 16, 96)
    assert all(len(kept) == 2 and kept[0] // 2 == kept[1] // 2 for kept in report["heads_kept"]), \
        "a kv head goes together with both query heads that read it"
    save_model(tmp_path / "run", pruned)
    loaded, _ = load_pretrained(tmp_path / "run")
    cached = generate(loaded, [1, 2, 3], 8, temperature=0)
    assert cached == generate(loaded, [1, 2, 3], 8, temperature=0, use_cache=False) == generate(pruned, [1, 2, 3], 8, temperature=0)


def test_a_pruned_run_is_smaller_on_disk_and_loads_and_generates(tmp_path):
    model = tiny_model()
    pruned, _ = prune_structured(model, calibration(), heads=2, mlp_fraction=0.5)
    save_model(tmp_path / "full", model)
    save_model(tmp_path / "pruned", pruned)

    loaded, _ = load_pretrained(tmp_path / "pruned")

    assert file_size(tmp_path / "pruned") < 0.65 * file_size(tmp_path / "full")
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["model"]["head_dim"] == 8
    np.testing.assert_array_equal(logits_of(loaded, calibration()), logits_of(pruned, calibration()))
    assert len(generate(loaded, [1, 2], 5, temperature=0)) == 5


def test_config_files_without_head_dim_still_load():
    old = {k: v for k, v in tiny_model().config.to_dict().items() if k != "head_dim"}
    assert GPTConfig.from_dict(old).head_size == 8
    with pytest.raises(ValueError, match="head_dim must be a positive integer"):
        GPTConfig(**TINY, head_dim=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(heads=4), "cannot prune 4 heads per layer: each layer has 4 heads, and at least one must remain"),
    (dict(heads=-1), "non-negative integer"),
    (dict(mlp_fraction=1.0), r"fraction of MLP channels to prune must be in \[0, 1\)"),
])
def test_impossible_amounts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_structured(tiny_model(), calibration(), **kwargs)


def test_pruning_refuses_what_it_cannot_cut():
    with pytest.raises(ValueError, match="key/value groups per layer: each layer has 2"):
        prune_structured(GPT(preset("llama-nano", vocab_size=40, block_size=16)), calibration(), heads=2)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        prune_structured(GPT(preset("moe-nano", vocab_size=40, block_size=16)), calibration(), mlp_fraction=0.5)
    with pytest.raises(ValueError, match="blocks.0.attn.qkv is a Int8Linear: prune first"):
        prune_structured(quantize_model(tiny_model()), calibration(), heads=1)
    with pytest.raises(ValueError, match=r"calibration data must be token ids of shape \(batch, time\)"):
        prune_structured(tiny_model(), np.arange(16), heads=1)


# ====================================================================== low rank
def test_the_energy_rank_is_the_smallest_that_holds_the_share():
    sigma = [3.0, 2.0, 1.0]                                    # σ² = 9, 4, 1: shares 9/14, 13/14, 1
    assert [energy_rank(sigma, e) for e in (0.5, 9 / 14, 0.65, 13 / 14, 0.95, 1.0)] == [1, 1, 2, 2, 3, 3]
    for bad in (0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"energy threshold must be in \(0, 1\]"):
            energy_rank(sigma, bad)


def test_an_exactly_low_rank_layer_is_factored_without_error_and_fewer_weights(float64, rng):
    model = tiny_model()
    fc = model.blocks[0].mlp.fc                                # (128, 32)
    fc.weight.data[...] = backend.asarray(rng.standard_normal((128, 3)) @ rng.standard_normal((3, 32)))
    ids = calibration()
    expected = logits_of(model, ids)

    report = factorize_model(model, 1.0)

    layer = model.blocks[0].mlp.fc
    assert isinstance(layer, LowRankLinear) and report["blocks.0.mlp.fc"]["rank"] == 3
    assert layer.down.weight.shape == (3, 32) and layer.up.weight.shape == (128, 3)
    np.testing.assert_array_equal(layer.up.bias.numpy(), fc.bias.numpy())
    assert isinstance(model.blocks[1].mlp.fc, Linear), "a full-rank layer would not get smaller: it stays"
    np.testing.assert_allclose(logits_of(model, ids), expected, atol=1e-10)
    x = Tensor(rng.standard_normal((2, 32)), requires_grad=True)
    # The layer is linear in each input, so central differences have no truncation error and a
    # wide step only shrinks the rounding error (these weights are large: L is in the hundreds).
    assert gradcheck(lambda x, a, b: layer(x), [x, layer.down.weight, layer.up.weight], eps=1e-3) < 1e-6


def test_a_factored_run_is_smaller_records_its_ranks_and_loads_and_generates(tmp_path):
    model = tiny_model()
    factored = copy.deepcopy(model)
    report = factorize_model(factored, 0.6)
    save_model(tmp_path / "full", model)
    save_model(tmp_path / "low", factored)

    loaded, _ = load_pretrained(tmp_path / "low")

    ranks = json.loads((tmp_path / "low" / "config.json").read_text())["low_rank"]
    assert ranks == low_rank_ranks(loaded) == {name: r["rank"] for name, r in report.items()} and len(ranks) == 8
    assert all(0.6 <= r["kept_energy"] for r in report.values())
    assert factored.num_parameters() < 0.8 * model.num_parameters() and file_size(tmp_path / "low") < file_size(tmp_path / "full")
    np.testing.assert_array_equal(logits_of(loaded, calibration()), logits_of(factored, calibration()))
    assert len(generate(loaded, [1, 2], 5, temperature=0)) == 5


def test_a_bad_low_rank_record_is_refused_naming_the_config(tmp_path):
    model = tiny_model()
    factorize_model(model, 0.6)
    save_model(tmp_path / "low", model)
    config = json.loads((tmp_path / "low" / "config.json").read_text())
    for ranks, message in (({"blocks.0.attn.nope": 2}, "'blocks.0.attn.nope', which is not a Linear layer"),
                           ({"blocks.0.attn.qkv": 0}, r"rank of 'blocks.0.attn.qkv' must be an integer in \[1, 32\]")):
        (tmp_path / "low" / "config.json").write_text(json.dumps({**config, "low_rank": ranks}))
        with pytest.raises(ValueError, match=r"low/config\.json: .*" + message):
            load_pretrained(tmp_path / "low")


# ====================================================================== the CLI, side by side
TEXT = ("The quick brown fox jumps over the lazy dog. A list is a sequence of items; a dict maps keys to values. "
        "def f(x): return x + 1\n") * 40


@pytest.fixture
def small_run(tmp_path):
    tokenizer = BPETokenizer.train(TEXT, 300, pattern="gpt4", special_tokens=["<|endoftext|>"])
    save_model(tmp_path / "run", tiny_model(vocab_size=tokenizer.vocab_size), tokenizer, step=5)
    (tmp_path / "data.txt").write_text(TEXT)
    return tmp_path


@pytest.mark.parametrize("flags, message", [
    (["--prune-heads", "4"], "cannot prune 4 heads per layer: each layer has 4 heads"),
    (["--low-rank", "1.5"], r"argument --low-rank: expected a share in \(0, 1\], got '1.5'"),
    (["--low-rank", "0"], r"argument --low-rank: expected a share in \(0, 1\]"),
    (["--int8", "--fp16"], "--int8 and --fp16 are two ways to store the same weights"),
])
def test_tinyllm_compress_refuses_bad_amounts_and_leaves_nothing_behind(small_run, capsys, flags, message):
    tmp_path = small_run
    code = cli_main(["compress", str(tmp_path / "run"), "--out", str(tmp_path / "small"), "--data",
                     str(tmp_path / "data.txt"), *flags])
    assert code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "small").exists()


def test_tinyllm_compress_each_writes_one_run_per_method_and_one_table(small_run, capsys):
    tmp_path = small_run

    code = cli_main(["compress", str(tmp_path / "run"), "--out", str(tmp_path / "small"), "--each",
                     "--prune-heads", "1", "--prune-mlp", "0.25", "--low-rank", "0.7", "--int8", "--data",
                     str(tmp_path / "data.txt"), "--finetune-steps", "2", "--calibration", "2", "--gen-tokens", "4",
                     "--max-batches", "1"])

    out = capsys.readouterr().out
    assert code == 0, out
    rows = ["original", "1 heads/layer pruned", "25% MLP pruned", "low rank 0.7", "int8"]
    lines = out.splitlines()
    assert all(any(line.startswith(label + "  ") for line in lines) for label in rows), out
    for folder in ("heads-1", "mlp-0.25", "low-rank-0.7", "int8"):
        model, _ = load_pretrained(tmp_path / "small" / folder)
        assert len(generate(model, [1, 2], 3, temperature=0)) == 3
    assert "finetuned 2 steps" in out and "8 layers factored" in out
    assert load_pretrained(tmp_path / "small" / "heads-1")[0].config.n_head == 3
