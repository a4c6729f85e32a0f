"""Tests of the Llama-style and mixture-of-experts options of tinyllm.model (RMSNorm, RoPE, SwiGLU, grouped-query
attention, MoE): whole-model gradients, cached decoding against full recomputation, configuration errors and
defaults, and that every later stage (checkpoints, generation, LoRA, pretraining) works with them.

The fused ops have their own tests (test_functional.py, test_rope.py, test_moe.py); here the question is
whether the parts are wired together correctly, and whether GPT-2 stays exactly GPT-2.
"""

import json
import math

import numpy as np
import pytest

import tinyllm.functional as F
from tinyllm import backend
from tinyllm.autograd import Tensor, no_grad
from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.data.tokens import split_train_val
from tinyllm.files import read_jsonl
from tinyllm.generate import Decoder, generate
from tinyllm.kv_cache import KVCache
from tinyllm.lora import apply_lora, merge_lora
from tinyllm.model import GPT, PRESETS, GPTConfig, preset, swiglu_hidden
from tinyllm.nn import MoE
from tinyllm.optim import AdamW
from tinyllm.testing import gradcheck
from tinyllm.train import TrainConfig, pretrain

uses_float64 = pytest.mark.usefixtures("float64")
LLAMA = dict(vocab_size=40, block_size=8, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, norm="rmsnorm", pos="rope",
             mlp="swiglu", bias=False)
MOE = {**LLAMA, "mlp": "moe", "n_expert": 3, "expert_top_k": 2}
LLAMA_LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.proj")


def randomise(model, rng, scale=0.3):
    """Move every parameter away from its initial value (norm gains around 1, everything else around 0), so
    that no gradient path is degenerate (see tests/test_model.py)."""
    for name, p in model.named_parameters():
        is_norm_gain = name.split(".")[-2].startswith("ln") and name.endswith("weight")
        p.data[...] = backend.xp.asarray(rng.normal(1.0 if is_norm_gain else 0.0, scale, p.shape))


def whole_model_gradcheck(model, rng, max_elements=20):
    idx, targets = rng.integers(0, 40, size=(2, 8)), rng.integers(0, 40, size=(2, 8))
    return gradcheck(lambda *_: model(idx, targets)[1], model.parameters(), max_elements=max_elements, seed=1234)


def host(a):
    return backend.to_numpy(a)


# ====================================================================== gradients of whole models
@uses_float64
@pytest.mark.parametrize("tie_weights", [True, False], ids=["tied", "untied"])
def test_llama_style_model_gradient_matches_finite_differences(tie_weights, rng):
    model = GPT(GPTConfig(**LLAMA, tie_weights=tie_weights), seed=0)
    randomise(model, rng)

    error = whole_model_gradcheck(model, rng)

    assert error < 1e-6, f"Llama-style model gradient differs from finite differences by {error:.2e}"


@uses_float64
@pytest.mark.parametrize("top_k,shared", [(2, True), (1, False)], ids=["top2_shared", "top1"])
def test_moe_model_gradient_including_the_balancing_loss(top_k, shared, rng):
    # In training mode the loss includes aux_loss_coef × the balancing losses (a large coefficient here, so
    # that a wrong gradient of that term would show).
    model = GPT(GPTConfig(**{**MOE, "expert_top_k": top_k, "shared_expert": shared, "aux_loss_coef": 0.5}), seed=0)
    randomise(model, rng)

    error = whole_model_gradcheck(model, rng)

    assert error < 1e-6, f"MoE model gradient differs from finite differences by {error:.2e}"
    assert {"blocks.0.mlp.router.weight", "blocks.1.mlp.experts.proj.weight"} <= dict(model.named_parameters()).keys()


# ====================================================================== the architecture
def test_gpt2_defaults_keep_gpt2_names_and_shapes():
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16))

    shapes = {name: p.shape for name, p in model.named_parameters()}

    assert shapes == {
        "wte.weight": (40, 16), "wpe.weight": (8, 16),
        "blocks.0.ln_1.weight": (16,), "blocks.0.ln_1.bias": (16,),
        "blocks.0.attn.qkv.weight": (48, 16), "blocks.0.attn.qkv.bias": (48,),
        "blocks.0.attn.proj.weight": (16, 16), "blocks.0.attn.proj.bias": (16,),
        "blocks.0.ln_2.weight": (16,), "blocks.0.ln_2.bias": (16,),
        "blocks.0.mlp.fc.weight": (64, 16), "blocks.0.mlp.fc.bias": (64,),
        "blocks.0.mlp.proj.weight": (16, 64), "blocks.0.mlp.proj.bias": (16,),
        "ln_f.weight": (16,), "ln_f.bias": (16,),
    }


def test_llama_style_model_has_rope_instead_of_wpe_and_a_gqa_shaped_qkv():
    model = GPT(GPTConfig(**{**LLAMA, "n_layer": 1}))

    shapes = {name: p.shape for name, p in model.named_parameters()}

    hidden = swiglu_hidden(16)
    assert shapes == {
        "wte.weight": (40, 16),                                   # no wpe: positions are rotations of q and k
        "blocks.0.ln_1.weight": (16,),                            # RMSNorm: a gain, no bias
        "blocks.0.attn.qkv.weight": ((4 + 2 * 2) * 4, 16),        # 4 query heads + 2 key + 2 value heads of 4
        "blocks.0.attn.proj.weight": (16, 16),
        "blocks.0.ln_2.weight": (16,),
        "blocks.0.mlp.gate.weight": (hidden, 16), "blocks.0.mlp.up.weight": (hidden, 16),
        "blocks.0.mlp.proj.weight": (16, hidden),
        "ln_f.weight": (16,),
    }


def test_swiglu_width_is_two_thirds_of_4c_rounded_up_to_32():
    assert [swiglu_hidden(c) for c in (16, 64, 192, 768)] == [64, 192, 512, 2048]
    assert GPTConfig(**{**LLAMA, "mlp_hidden": 40}).hidden_size == 40


def test_moe_model_counts_active_parameters_per_token():
    model = GPT(GPTConfig(**MOE))
    per_layer_experts = 3 * 3 * 16 * swiglu_hidden(16)            # E experts × 3 matrices of C × H

    idle = model.config.n_layer * per_layer_experts * (1 - 2 / 3)  # top-2 of 3: a third sits idle per token
    assert model.active_parameters() == model.num_parameters() - round(idle)
    dense = GPT(GPTConfig(**LLAMA))
    assert dense.active_parameters() == dense.num_parameters()


def test_one_expert_with_top_1_is_the_dense_swiglu_model(float64, rng):
    dense = GPT(GPTConfig(**LLAMA), seed=0)
    moe = GPT(GPTConfig(**{**MOE, "n_expert": 1, "expert_top_k": 1}), seed=1)
    randomise(dense, rng)
    weights = dict(dense.named_parameters())
    for name, p in moe.named_parameters():
        source = name.replace("mlp.experts.", "mlp.")
        if source in weights:
            p.data[...] = weights[source].data[None] if p.ndim == 3 else weights[source].data

    idx = rng.integers(0, 40, size=(2, 8))
    with no_grad():
        np.testing.assert_allclose(moe.eval()(idx)[0].numpy(), dense.eval()(idx)[0].numpy(), rtol=1e-12, atol=1e-12)


def test_training_loss_adds_the_balancing_loss_and_eval_loss_does_not(rng):
    model = GPT(GPTConfig(**{**MOE, "aux_loss_coef": 0.1}), seed=0)
    idx, targets = rng.integers(0, 40, size=(2, 8)), rng.integers(0, 40, size=(2, 8))

    with no_grad():
        eval_loss = model.eval()(idx, targets)[1].item()
        assert model.trunk(idx)[1].loss is None, "no balancing loss in eval mode"
        train_loss = model.train()(idx, targets)[1].item()
        aux = model.trunk(idx)[1].loss.item() / 0.1          # Σ_layers L_aux of this forward

    assert train_loss == pytest.approx(eval_loss + 0.1 * aux, rel=1e-5)
    assert aux == pytest.approx(2.0, abs=0.5), "two layers of a near-uniform router: about 1 each"


def test_expert_load_is_reported_per_layer_and_routing_is_deterministic(rng):
    model = GPT(GPTConfig(**MOE), seed=0)
    idx = rng.integers(0, 40, size=(4, 8))

    load = model.expert_load(idx)
    with no_grad():
        _, balance = model.trunk(idx)

    assert model.training, "expert_load measures in eval mode and restores the mode"
    assert load.shape == (2, 3)
    np.testing.assert_allclose(load.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.expert_load(idx), load)
    np.testing.assert_array_equal(backend.to_numpy(balance.load), load), "the forward returns the same load"
    assert GPT(GPTConfig(**LLAMA)).expert_load(idx) is None


def test_moe_forward_returns_its_balancing_loss_and_load_and_keeps_no_state(rng):
    layer = GPT(GPTConfig(**MOE), seed=0).moe_layers()[0]
    before = set(vars(layer))
    x = Tensor(backend.asarray(rng.standard_normal((2, 8, 16))))

    y, aux_loss, load = layer(x)

    assert y.shape == (2, 8, 16) and aux_loss.requires_grad and aux_loss.data.shape == ()
    assert backend.to_numpy(load).shape == (3,)
    assert set(vars(layer)) == before, "nothing of the forward is kept on the module"


@uses_float64
def test_rope_model_depends_on_relative_positions_only(rng):
    # With RoPE and no position table, shifting every position by the same amount changes nothing.
    model = GPT(GPTConfig(**{**LLAMA, "block_size": 64}), seed=0)
    randomise(model, rng)
    idx = rng.integers(0, 40, size=(2, 8))

    with no_grad():
        at_zero = model.hidden_states(idx).numpy()
        shifted = model.hidden_states(idx, positions=np.arange(8) + 37).numpy()

    np.testing.assert_allclose(shifted, at_zero, rtol=1e-9, atol=1e-11)


# ====================================================================== configuration
def test_an_old_config_without_the_new_keys_loads_as_gpt2():
    old = {"vocab_size": 40, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0,
           "bias": True, "tie_weights": True}

    config = GPTConfig.from_dict(old)

    assert (config.norm, config.pos, config.mlp, config.n_kv_head) == ("layernorm", "learned", "gelu", None)
    assert GPT(config).wpe is not None


def test_llama_and_moe_configs_round_trip_through_a_dict():
    for fields in (LLAMA, MOE):
        config = GPTConfig(**fields)
        assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("fields,message", [
    (dict(n_head=6, n_embd=24, n_kv_head=4), r"n_head=6 must be divisible by n_kv_head=4"),
    (dict(mlp="moe", n_expert=4, expert_top_k=5), r"expert_top_k=5 must be between 1 and n_expert=4"),
    (dict(pos="rope", n_head=4, n_embd=12), r"pos='rope' needs an even head dimension.*n_embd=12 / n_head=4 = 3"),
    (dict(norm="batchnorm"), r"GPTConfig.norm must be one of 'layernorm', 'rmsnorm', got 'batchnorm'"),
    (dict(mlp="relu"), r"GPTConfig.mlp must be one of 'gelu', 'swiglu', 'moe', got 'relu'"),
    (dict(n_kv_head=0), r"n_kv_head must be a positive integer or None, got 0"),
], ids=["kv_heads", "top_k", "odd_rope", "norm", "mlp", "zero_kv"])
def test_bad_options_are_errors_naming_the_values(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{"vocab_size": 40, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16, **fields})


def test_llama_and_moe_presets():
    for name in ("llama-nano", "llama-mini", "moe-nano", "moe-mini"):
        config = preset(name)
        assert (config.norm, config.pos, config.bias) == ("rmsnorm", "rope", False), name
        assert config.n_head % config.kv_heads == 0 and config.kv_heads < config.n_head, name
    assert preset("moe-mini").mlp == "moe" and preset("llama-mini").mlp == "swiglu"
    assert set(PRESETS) >= {"llama-nano", "llama-mini", "moe-nano", "moe-mini"}


# ====================================================================== KV cache and generation
def scaled_model(fields, seed=0, scale=8.0, **overrides):
    """Weights scaled up from the 0.02 init so logits differ clearly from token to token."""
    model = GPT(GPTConfig(**{**fields, "block_size": 16, **overrides}), seed=seed)
    for p in model.parameters():
        if p.ndim >= 2:
            p.data *= scale
    return model.eval()


def decode_side_by_side(model, prompts, steps):
    cached, uncached = Decoder(model, prompts, use_cache=True), Decoder(model, prompts, use_cache=False)
    a, b = host(cached.prefill()), host(uncached.prefill())
    worst, slides = np.abs(a - b).max(), 0
    for _ in range(steps):
        tokens = a.argmax(axis=-1).tolist()
        before = [len(c) for c in cached.contexts]
        a, b = host(cached.feed(tokens)), host(uncached.feed(tokens))
        slides += sum(len(c) < n for c, n in zip(cached.contexts, before))
        worst = max(worst, np.abs(a - b).max())
    return worst, slides


def test_the_cache_holds_only_the_key_value_heads():
    cache = KVCache.for_model(GPTConfig(**LLAMA), batch_size=3)
    assert cache.layers[0].keys.shape == (3, 2, 8, 4), "(B, n_kv_head, block_size, head size)"


@uses_float64
@pytest.mark.parametrize("fields", [LLAMA, MOE, {**LLAMA, "n_kv_head": 1}], ids=["llama_gqa", "moe", "multi_query"])
def test_cached_decoding_equals_recomputing_through_window_slides(fields):
    # RoPE positions restart at 0 on a slide's re-prefill, in both paths: the cache must match exactly.
    model = scaled_model(fields, scale=4.0)
    worst, slides = decode_side_by_side(model, [[5, 3, 7, 1, 2, 9, 11, 4, 8, 6]], steps=24)
    assert slides >= 2, "the run should slide the window at least twice"
    assert worst < 1e-10, f"cached and uncached logits differ by {worst}"


@uses_float64
def test_left_padded_llama_batch_equals_one_prompt_at_a_time():
    model = scaled_model(LLAMA, scale=4.0)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]
    worst, slides = decode_side_by_side(model, prompts, 20)
    assert slides >= 3 and worst < 1e-10, f"batched cached vs uncached differ by {worst} ({slides} slides)"
    assert generate(model, prompts, 12, temperature=0) == [generate(model, p, 12, temperature=0) for p in prompts]


# ====================================================================== checkpoints, LoRA, training
@uses_float64
@pytest.mark.parametrize("fields", [LLAMA, {**MOE, "shared_expert": True}], ids=["llama", "moe"])
def test_save_then_load_gives_the_same_model(fields, tmp_path, rng):
    model = GPT(GPTConfig(**fields), seed=0)
    randomise(model, rng)
    save_model(tmp_path, model)

    loaded, _ = load_pretrained(tmp_path)

    assert loaded.config == model.config
    idx = rng.integers(0, 40, size=(2, 8))
    with no_grad():
        np.testing.assert_array_equal(loaded.eval()(idx)[0].numpy(), model.eval()(idx)[0].numpy())


def test_lora_wraps_the_llama_layers_and_merges_back_exactly(float64, rng):
    model = GPT(GPTConfig(**LLAMA), seed=0)
    idx, targets = rng.integers(0, 40, size=(2, 8)), rng.integers(0, 40, size=(2, 8))

    report = apply_lora(model, rank=2, targets=LLAMA_LORA_TARGETS)
    for _, p in model.named_parameters():
        if p.requires_grad and p.ndim == 2 and p.shape[1] == 2:        # lora_B (out, r) starts at 0: move it
            p.data[...] = backend.asarray(rng.normal(0, 0.1, p.shape))
    _, loss = model(idx, targets)
    loss.backward()
    with no_grad():
        adapted = model.eval()(idx)[0].numpy()
    merge_lora(model)

    assert len(report["wrapped"]) == 2 * len(LLAMA_LORA_TARGETS)
    with no_grad():
        np.testing.assert_allclose(model(idx)[0].numpy(), adapted, rtol=1e-10, atol=1e-12)


def test_llama_and_moe_models_memorise_one_batch():
    for fields in (LLAMA, MOE):
        model = GPT(GPTConfig(**{**fields, "vocab_size": 32, "block_size": 16, "n_embd": 32}), seed=0)
        rng = np.random.default_rng(0)
        idx, targets = rng.integers(0, 32, size=(4, 16)), rng.integers(0, 32, size=(4, 16))
        optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        for _ in range(150):
            _, loss = model(idx, targets)
            loss.backward()
            optimizer.step()
            model.zero_grad()
        with no_grad():
            final = model.eval()(idx, targets)[1].item()
        assert final < 0.1, f"{fields['mlp']}: could not memorise one batch (loss {final:.3f} after 150 steps)"


def pattern_ids(n=600):
    rng = np.random.default_rng(0)
    pattern = np.tile(np.arange(40), n // 40 + 1)[:n]
    return np.where(rng.random(n) < 0.2, rng.integers(0, 40, n), pattern).astype(np.uint16)


def test_pretraining_a_moe_model_logs_expert_load_and_resumes(tmp_path):
    train_ids, val_ids = split_train_val(pattern_ids(), 0.2)
    config = TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup=1, eval_interval=2, eval_iters=2, sample_tokens=0, seed=0)
    pretrain(GPT(GPTConfig(**MOE)), train_ids, val_ids, config, run_dir=tmp_path, progress=False)

    config.steps = 6
    summary = pretrain(GPT(GPTConfig(**MOE)), train_ids, val_ids, config, run_dir=tmp_path, resume=True, progress=False)

    records = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert summary["start_step"] == 4 and [r["step"] for r in records] == list(range(1, 7))
    evals = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "eval"]
    load = np.array(evals[-1]["expert_load"])
    assert load.shape == (2, 3) and np.allclose(load.sum(axis=1), 1.0, atol=1e-3)
    assert math.isfinite(summary["last_val"]["loss"])


def test_a_run_saved_before_the_new_options_still_resumes(tmp_path):
    # A config.json written before norm/pos/mlp/... existed lacks those keys; resuming must not call that a
    # different model config.
    train_ids, val_ids = split_train_val(pattern_ids(), 0.2)
    gpt2 = dict(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)
    config = TrainConfig(steps=2, batch_size=4, warmup=1, eval_interval=2, eval_iters=1, sample_tokens=0, seed=0)
    pretrain(GPT(GPTConfig(**gpt2)), train_ids, val_ids, config, run_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"] = {k: v for k, v in saved["model"].items() if k in {*gpt2, "dropout", "bias", "tie_weights"}}
    (tmp_path / "config.json").write_text(json.dumps(saved))

    config.steps = 3
    summary = pretrain(GPT(GPTConfig(**gpt2)), train_ids, val_ids, config, run_dir=tmp_path, resume=True, progress=False)

    assert summary["start_step"] == 2


def test_the_balancing_loss_carries_gradient_to_the_router(rng):
    model = GPT(GPTConfig(**MOE))
    _, balance = model.trunk(rng.integers(0, 40, size=(2, 8)))

    balance.loss.backward()

    routers = [layer.router.weight.grad for layer in model.moe_layers()]
    assert all(g is not None and float(np.abs(backend.to_numpy(g)).max()) > 0 for g in routers)
    assert GPT(GPTConfig(**LLAMA)).trunk(rng.integers(0, 40, size=(2, 8)))[1].loss is None


def test_cli_pretrain_takes_the_llama_and_moe_presets(tmp_path):
    from tinyllm.cli import main
    from tinyllm.data.text import builtin_corpus
    data = tmp_path / "data.txt"
    data.write_text(builtin_corpus()[:3000], encoding="utf-8")
    common = ["--steps", "2", "--context", "16", "--tokenizer", "char", "--sample-tokens", "0", "--batch-size", "2",
              "--eval-iters", "1", "--data", str(data)]

    assert main(["pretrain", "--preset", "llama-nano", "--n-kv-head", "1", "--out", str(tmp_path / "llama"), *common]) == 0
    assert main(["pretrain", "--preset", "moe-nano", "--expert-top-k", "1", "--out", str(tmp_path / "moe"), *common]) == 0

    llama, _ = load_pretrained(tmp_path / "llama")
    moe, _ = load_pretrained(tmp_path / "moe")
    assert (llama.config.pos, llama.config.bias, llama.config.n_kv_head) == ("rope", False, 1), "the preset's bias=False must survive"
    assert (moe.config.mlp, moe.config.expert_top_k) == ("moe", 1)


@pytest.mark.parametrize("config, expected", [
    (LLAMA, {"attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.proj"}),
    (dict(LLAMA, mlp="moe", n_expert=4, expert_top_k=2), {"attn.qkv", "attn.proj"}),   # experts are not Linears
    (dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16), {"attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"}),
])
def test_default_lora_targets_fit_each_architecture(config, expected):
    report = apply_lora(GPT(GPTConfig(**config), seed=0), rank=2)
    assert {".".join(name.split(".")[-2:]) for name in report["wrapped"]} == expected
    assert len(report["wrapped"]) == 2 * len(expected)


def _training_losses(model, rng):
    """Every training loss of the package that runs a GPT forward, on one small batch each."""
    from tinyllm.distill import Distillation
    from tinyllm.finetune.classify import GPTClassifier
    from tinyllm.finetune.instruct import instruction_loss
    from tinyllm.rl.dpo import pair_log_probs
    from tinyllm.rl.logprobs import completion_pass, pack_completions
    from tinyllm.rl.reward import RewardModel, pair_scores
    from tinyllm.rl.data import EncodedPairs
    idx, targets = rng.integers(0, 40, size=(4, 8)), rng.integers(0, 40, size=(4, 8))
    pairs = EncodedPairs([[1, 2], [3]], [[4, 5], [6]], [[7], [8, 9]])
    batch = pack_completions([[1, 2], [3]], [[4, 5], [6, 7]])
    distill = Distillation(GPT(model.config, seed=1), idx.ravel(), 2, 4)
    return {
        "pretrain": model(idx, targets)[1],
        "instructions": instruction_loss(model, idx, targets),
        "classifier": GPTClassifier.from_gpt(model, 2)(idx, labels=np.array([0, 1, 0, 1]))[1],
        "reward model": pair_scores(RewardModel.from_gpt(model), pairs, [0, 1])[2].added_to(0.0),
        "DPO": pair_log_probs(model, pairs, [0, 1])[2].added_to(0.0),
        "PPO/GRPO": completion_pass(model, batch).balance.added_to(0.0),
        "distillation": distill.loss(model, idx, targets),
    }


def test_every_training_loss_keeps_the_experts_balancing_loss(rng):
    """Each loss adds aux_loss_coef × the balancing loss of its own forward: with coefficient 1 it exceeds
    the coefficient-0 loss by about 2 (2 layers, about 1 each for evenly used experts)."""
    with no_grad():
        without = _training_losses(GPT(GPTConfig(**MOE, aux_loss_coef=0.0), seed=0), np.random.default_rng(0))
        with_aux = _training_losses(GPT(GPTConfig(**MOE, aux_loss_coef=1.0), seed=0), np.random.default_rng(0))
    for name in without:
        added = float(getattr(with_aux[name], "item", lambda: with_aux[name])()) - \
            float(getattr(without[name], "item", lambda: without[name])())
        assert added == pytest.approx(2.0, abs=0.5), name


def test_fit_splits_a_moe_batch_over_the_cores_with_its_balancing_loss(rng, monkeypatch):
    from tinyllm import parallel
    from tinyllm.finetune.loop import FinetuneConfig, fit
    idx, targets = rng.integers(0, 40, size=(4, 8)), rng.integers(0, 40, size=(4, 8))
    blocks = []
    split = parallel.data_parallel
    monkeypatch.setattr(parallel, "data_parallel", lambda fn, *a: blocks.append(len(a[0])) or split(fn, *a))

    first_losses = {}
    for coef in (0.0, 1.0):
        model = GPT(GPTConfig(**MOE, aux_loss_coef=coef), seed=0)
        records = []
        fit(model, 4, lambda rows: model(idx[rows], targets[rows])[1],
            FinetuneConfig(epochs=1, batch_size=4, warmup=1), progress=False, log=records.append)
        first_losses[coef] = records[0]["loss"]

    assert blocks, "the MoE batch goes through data_parallel like any other"
    assert first_losses[1.0] - first_losses[0.0] == pytest.approx(2.0, abs=0.5)
