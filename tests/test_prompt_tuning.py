"""Tests of prompt and prefix tuning (tinyllm.prompt_tuning) and their ops: ``functional.prefix.prepend`` and
self-attention with key/value prefixes.

The promises: the ops and the whole soft-prompted (or prefixed) model have the gradients finite differences
give; only the soft prompt or the prefixes (and named extras) learn; prefix tuning starts where the soft prompt
it is initialised from stands; generation with the KV cache gives what recomputing the whole context gives;
an adapter saved next to its base loads back into the same function, and refuses any other model.
"""

import json

import numpy as np
import pytest

from tinyllm import Tensor, backend, functional as F
from tinyllm.autograd import fused_op
from tinyllm.checkpoint import save_model
from tinyllm.finetune import GPTClassifier
from tinyllm.functional.prefix import mask_with_prefix, prepend_backward, prepend_forward
from tinyllm.generate import generate
from tinyllm.lora import ADAPTER_WEIGHTS, load_adapter, load_pretrained_with_adapter, save_adapter
from tinyllm.model import GPT, GPTConfig, preset
from tinyllm.prompt_tuning import apply_prompt_tuning, virtual_keys_values, without_prompt
from tinyllm.testing import gradcheck
from tinyllm.tokenizer import CharTokenizer

TINY = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=8)
SHAPES = {"gpt2": TINY, "llama": dict(preset("llama-nano", **TINY).to_dict(), n_head=4, n_kv_head=2)}


def tiny_gpt(shape="gpt2", seed=0):
    return GPT(GPTConfig(**SHAPES[shape]), seed=seed)


def leaf(rng, *shape):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


# ---------------------------------------------------------------------------------------------- the op

@pytest.mark.parametrize("prefix_shape, x_shape, axis", [((3, 4), (2, 5, 4), 1),            # a soft prompt
                                                         ((2, 3, 4), (2, 2, 5, 4), 2)])     # a key prefix
def test_prepend_pair_and_op_gradients(float64, rng, prefix_shape, x_shape, axis):
    prefix, x = leaf(rng, *prefix_shape), leaf(rng, *x_shape)

    def pair(prefix, x):
        out, cache = prepend_forward(prefix.data, x.data, axis)
        return fused_op(prepend_backward, out, cache, prefix, x)

    assert gradcheck(pair, [prefix, x]) < 1e-6
    assert gradcheck(lambda p, x: F.prepend(p, x, axis), [prefix, x]) < 1e-6
    out = F.prepend(prefix, x, axis).numpy()
    front = np.moveaxis(out, axis, 1)[:, :prefix_shape[axis - 1]]
    np.testing.assert_array_equal(front, np.broadcast_to(np.moveaxis(prefix.numpy(), axis - 1, 0)[None], front.shape))


def test_prepend_refuses_a_prefix_that_does_not_fit(rng):
    with pytest.raises(ValueError, match="does not fit"):
        F.prepend(Tensor(np.zeros((3, 5))), Tensor(np.zeros((2, 4, 4))))


def test_mask_with_prefix_lets_every_query_see_the_prefix():
    mask = np.array([[False, True, True]])[:, None, None, :]           # (1, 1, 1, 3): one padded key
    out = backend.to_numpy(mask_with_prefix(backend.asarray(mask), 2))
    assert out.shape == (1, 1, 1, 5) and out[0, 0, 0].tolist() == [True, True, False, True, True]
    square = backend.to_numpy(mask_with_prefix(backend.asarray(np.tril(np.ones((3, 3), bool))), 2, 2))
    assert square.shape == (5, 5) and square[:2].all() and square[2:, :2].all()
    assert mask_with_prefix(None, 2) is None


@pytest.mark.parametrize("n_kv_head", [2, 1])
def test_self_attention_with_key_value_prefixes_gradients(float64, rng, n_kv_head):
    """Causal attention over [prefix ; keys], with a padding mask: every query also sees the P prefix keys."""
    batch, time, n_head, head_size, n_prefix = 2, 5, 2, 4, 3
    qkv = leaf(rng, batch, time, (n_head + 2 * n_kv_head) * head_size)
    keys, values = leaf(rng, n_kv_head, n_prefix, head_size), leaf(rng, n_kv_head, n_prefix, head_size)
    mask = backend.asarray(np.arange(time)[None, None, None, :] >= np.array([0, 2])[:, None, None, None])
    attend = lambda qkv, k, v: F.self_attention(qkv, n_head, mask=mask, n_kv_head=n_kv_head, prefix=(k, v))
    assert gradcheck(attend, [qkv, keys, values]) < 1e-6


# ---------------------------------------------------------------------------------------------- the model

@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_soft_prompt_gradient_through_the_frozen_model(float64, rng, shape):
    model = tiny_gpt(shape)
    apply_prompt_tuning(model, 3, seed=1)
    model.eval()
    idx = rng.integers(0, 20, size=(2, 5))
    error = gradcheck(lambda w: model(idx)[0], [model.prompt_adapter.weight])
    assert error < 1e-6
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["prompt_adapter.weight"]


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_prefix_gradient_through_the_frozen_model(float64, rng, shape):
    model = tiny_gpt(shape)
    apply_prompt_tuning(model, 3, kind="prefix", seed=1)
    for layer in model.prompt_adapter.layers:                 # away from the start, so every gradient counts
        for t in (layer.key, layer.value):
            t.data[...] = backend.asarray(rng.standard_normal(t.shape))
    model.eval()
    idx = rng.integers(0, 20, size=(2, 5))
    for layer in model.prompt_adapter.layers:
        assert gradcheck(lambda k, v: model(idx)[0], [layer.key, layer.value]) < 1e-6
    assert len([p for p in model.parameters() if p.requires_grad]) == 2 * model.config.n_layer


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_prefix_tuning_starts_where_its_soft_prompt_stands(float64, rng, shape):
    prompted, prefixed = tiny_gpt(shape).eval(), tiny_gpt(shape).eval()
    apply_prompt_tuning(prompted, 4, kind="prompt", seed=7)
    apply_prompt_tuning(prefixed, 4, kind="prefix", seed=7)
    idx = rng.integers(0, 20, size=(2, 6))
    np.testing.assert_allclose(prefixed(idx)[0].numpy(), prompted(idx)[0].numpy(), atol=1e-12)


def test_classifier_trains_only_its_soft_prompt_and_head(float64, rng):
    model = GPTClassifier.from_gpt(tiny_gpt(), 2, ["a", "b"])
    report = apply_prompt_tuning(model, 4, trainable=("classifier",))
    assert report["trainable"] == 4 * 8 + (8 * 2 + 2)
    _, loss = model(rng.integers(0, 20, size=(3, 6)), labels=np.array([0, 1, 1]))
    loss.backward()
    with_grad = sorted(name for name, p in model.named_parameters() if p.grad is not None)
    assert with_grad == ["classifier.bias", "classifier.weight", "prompt_adapter.weight"]


@pytest.mark.parametrize("shape, kind", [("gpt2", "prompt"), ("llama", "prompt"), ("llama", "prefix")])
def test_cached_generation_equals_recomputing_the_context(shape, kind):
    """With the cache a soft prompt is per-layer keys and values (virtual_keys_values); without it, virtual
    tokens in front of the whole context. Batched, left-padded and sliding past block_size alike."""
    model = tiny_gpt(shape, seed=2).eval()
    apply_prompt_tuning(model, 3, kind, seed=4)
    draw = np.random.default_rng(0)
    for weight in model.prompt_adapter.parameters():
        weight.data[...] = backend.asarray(draw.standard_normal(weight.shape), dtype=weight.dtype)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    cached = generate(model, prompts, 20, seed=0)
    assert cached == generate(model, prompts, 20, seed=0, use_cache=False)
    assert cached[0] == generate(model, prompts[0], 20, seed=0), "a row of a batch gets what it gets alone"
    prompted = backend.to_numpy(model.next_token_logits(np.array([prompts[1]])))
    with without_prompt(model):
        plain = backend.to_numpy(model.next_token_logits(np.array([prompts[1]])))
    assert np.abs(prompted - plain).max() > 1e-3, "the soft prompt must change the output"


def test_soft_prompt_as_keys_and_values_is_exact(float64, rng):
    model = tiny_gpt().eval()
    apply_prompt_tuning(model, 3)
    idx = rng.integers(0, 20, size=(1, 6))
    from tinyllm.kv_cache import KVCache
    cache = KVCache.for_model(model.config, 1, np.float64)
    stepwise = [model.next_token_logits(idx[:, t:t + 1], cache=cache) for t in range(6)]
    np.testing.assert_allclose(backend.to_numpy(stepwise[-1]), backend.to_numpy(model.next_token_logits(idx)),
                               atol=1e-12)
    prefixes = virtual_keys_values(model, model.prompt_adapter.weight.data)
    assert [k.shape for k, _ in prefixes] == [(2, 3, 4)] * 2


def test_prompt_tuning_learns():
    """A soft prompt alone (the model frozen) moves a tiny model towards a new next-token distribution. The
    random weights are scaled up so that attention is as peaked as a trained model's: at N(0, 0.02²) every
    position attends almost uniformly and mostly reads its own embedding, which nothing in front can move."""
    from tinyllm.optim import AdamW
    model = tiny_gpt(seed=3)
    for p in model.parameters():
        if p.ndim >= 2:
            p.data *= 25
    apply_prompt_tuning(model, 4)
    idx = np.tile(np.arange(8), (4, 1))
    targets = np.full((4, 8), 7)
    optimizer = AdamW([model.prompt_adapter.weight], lr=0.1, weight_decay=0.0)
    losses = []
    for _ in range(25):
        _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        model.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


# ---------------------------------------------------------------------------------------------- files and errors

@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_adapter_saves_small_and_loads_on_top_of_its_base(tmp_path, rng, kind):
    save_model(tmp_path / "base", tiny_gpt(), CharTokenizer.from_text("abcdefghijklmnopqrst"))
    model = tiny_gpt().eval()
    apply_prompt_tuning(model, 3, kind, seed=5)
    idx = rng.integers(0, 20, size=(2, 6))
    save_adapter(tmp_path / "adapter", model, base=tmp_path / "base")
    loaded, _ = load_pretrained_with_adapter(tmp_path / "adapter")
    np.testing.assert_array_equal(loaded.eval()(idx)[0].numpy(), model(idx)[0].numpy())
    assert (tmp_path / "adapter" / ADAPTER_WEIGHTS).stat().st_size < 1000


@pytest.mark.parametrize("other, message", [
    (dict(n_embd=16), r"trained on a different model: n_embd: 8 \(saved\) vs 16 \(now\)"),
    (dict(), "same shape .*token embeddings differ"),
])
def test_adapter_on_a_different_model_is_a_clear_error(tmp_path, other, message):
    model = tiny_gpt()
    apply_prompt_tuning(model, 3)
    save_adapter(tmp_path, model)
    with pytest.raises(ValueError, match=message):
        load_adapter(GPT(GPTConfig(**{**TINY, **other}), seed=9), tmp_path)


@pytest.mark.parametrize("n_virtual, message", [(0, "number of virtual tokens in 1 … 15"), (16, "in 1 … 15"),
                                                (2.5, "virtual tokens")])
def test_bad_settings_are_clear_errors(n_virtual, message):
    with pytest.raises(ValueError, match=message):
        apply_prompt_tuning(tiny_gpt(), n_virtual)
    with pytest.raises(ValueError, match="kind must be one of"):
        apply_prompt_tuning(tiny_gpt(), 2, kind="suffix")


def test_applying_twice_or_to_an_encoder_is_a_clear_error():
    model = tiny_gpt()
    apply_prompt_tuning(model, 2)
    with pytest.raises(ValueError, match="has an adapter already"):
        apply_prompt_tuning(model, 2)
    from tinyllm.encoder import Encoder, EncoderConfig
    with pytest.raises(ValueError, match="need a GPT"):
        apply_prompt_tuning(Encoder(EncoderConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8)), 2)


# ---------------------------------------------------------------------------------------------- command line

@pytest.fixture
def tiny_base(tmp_path):
    tokenizer = CharTokenizer.from_text("abcdefghij")
    save_model(tmp_path / "base", GPT(GPTConfig(**{**TINY, "vocab_size": 10})), tokenizer)
    data = tmp_path / "toy.tsv"
    rows = [("high" if i % 2 else "low", ("fghij" if i % 2 else "abcde")[i % 5:] + "abc"[: i % 3]) for i in range(40)]
    data.write_text("".join(f"{label}\t{text}\n" for label, text in rows))
    return tmp_path / "base", data


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_cli_prompt_tuned_classifier_keeps_the_adapter_alone_and_evaluates(tiny_base, tmp_path, capsys, kind):
    from tinyllm.cli import main
    base, data = tiny_base
    out = tmp_path / "run"
    assert main(["finetune", "classify", "--ckpt", str(base), "--data", str(data), "--out", str(out),
                 "--epochs", "1", f"--{kind}-tuning", "3"]) == 0
    assert f"{kind} tuning, 3 virtual tokens" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "adapter_config.json", "log.jsonl"]
    assert main(["evaluate", "--ckpt", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == json.loads((out / "adapter_config.json").read_text())["results"]["accuracy"]


def test_cli_generate_on_a_prompt_tuned_run_and_bad_input(tiny_base, tmp_path, run_cli):
    from tinyllm.checkpoint import load_pretrained
    base, data = tiny_base
    out = tmp_path / "lm"
    model, tokenizer = load_pretrained(base)
    apply_prompt_tuning(model, 2)
    save_adapter(out, model, base=base)
    expected = "abc" + tokenizer.decode(generate(model.eval(), tokenizer.encode("abc"), 5, temperature=0))
    result = run_cli("generate", "--ckpt", out, "--prompt", "abc", "--max-new-tokens", "5", "--temperature", "0")
    assert result.returncode == 0 and result.stdout.rstrip("\n") == expected, result.stderr
    save_model(base, GPT(GPTConfig(**{**TINY, "vocab_size": 10}), seed=5))     # the base run changes under it
    changed = run_cli("generate", "--ckpt", out, "--prompt", "abc", "--max-new-tokens", "2")
    assert changed.returncode == 2 and "trained on a different model of the same shape" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_cli_two_ways_to_finetune_at_once_is_a_clear_error(tiny_base, tmp_path, capsys):
    from tinyllm.cli import main
    base, data = tiny_base
    assert main(["finetune", "classify", "--ckpt", str(base), "--data", str(data), "--out", str(tmp_path / "x"),
                 "--prompt-tuning", "2", "--lora-rank", "2"]) == 2
    assert "--lora-rank and --prompt-tuning are different ways to finetune; choose one" in capsys.readouterr().err
