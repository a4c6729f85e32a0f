"""Llama-family interop: tiny randomly initialised models saved by ``transformers`` itself (Llama with GQA,
tied and untied; Llama 3 rope scaling; Qwen2 with q/k/v biases; Mistral; Mixtral) → tinyllm → the same
logits and greedy tokens; tinyllm → export → ``from_pretrained`` → the same logits again."""

import io
import json

import numpy as np
import pytest

from tinyllm import backend
from tinyllm.generate import generate
from tinyllm.interop.hf_llama import check_fits_in_memory, load_hf_llama, save_hf_llama
from tinyllm.safetensors import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}
CASES = {
    "llama-gqa-tied": ("Llama", dict(tie_word_embeddings=True)),
    "llama-gqa-untied": ("Llama", dict(tie_word_embeddings=False)),
    "llama3-rope-scaling": ("Llama", dict(rope_scaling=LLAMA3_SCALING, rope_theta=500000.0)),
    "qwen2-biases": ("Qwen2", dict(tie_word_embeddings=True)),
    "mistral": ("Mistral", dict(sliding_window=32)),
    "mixtral": ("Mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
}


def save_tiny(kind: str, extra: dict, directory):
    """A tiny random model of ``kind`` saved by transformers; every weight perturbed so that norms and biases
    (which start at 1 and 0) matter too."""
    torch.manual_seed(0)
    config = getattr(transformers, f"{kind}Config")(**{**COMMON, **extra})
    model = getattr(transformers, f"{kind}ForCausalLM")(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(directory)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("case", CASES)
def test_import_export_logits_and_greedy_tokens(case, tmp_path):
    kind, extra = CASES[case]
    reference = save_tiny(kind, extra, tmp_path / "hf")
    model, arch = load_hf_llama(tmp_path / "hf")
    assert arch == f"{kind}ForCausalLM"
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(2, 24))
    expected = hf_logits(reference, ids)
    logits, _ = model(ids)
    np.testing.assert_allclose(backend.to_numpy(logits.data), expected, atol=1e-4, rtol=0)
    prompt = ids[0, :8].tolist()
    assert generate(model, prompt, 20, temperature=0) == hf_greedy(reference, prompt, 20)

    save_hf_llama(model, tmp_path / "out", architecture=arch)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(again) is type(reference)
    np.testing.assert_allclose(hf_logits(again, ids), expected, atol=1e-5, rtol=0)


def test_details_that_change_the_function_are_imported(tmp_path):
    save_tiny("Llama", dict(rope_scaling=LLAMA3_SCALING, rope_theta=500000.0), tmp_path / "l3")
    save_tiny("Mistral", dict(sliding_window=32), tmp_path / "mistral")
    save_tiny("Qwen2", {}, tmp_path / "qwen2")
    assert load_hf_llama(tmp_path / "l3")[0].config.rope_scaling["factor"] == 8.0
    mistral = load_hf_llama(tmp_path / "mistral")[0]
    assert mistral.config.block_size == 32                  # the window: longer contexts are refused, not wrong
    with pytest.raises(ValueError, match="block_size 32"):
        mistral(np.zeros((1, 33), dtype=np.int64))
    qwen = load_hf_llama(tmp_path / "qwen2")[0]
    assert qwen.blocks[0].attn.qkv.bias is not None and qwen.blocks[0].attn.proj.bias is None


def test_sharded_half_precision_files(tmp_path):
    """model-0000x-of-0000y.safetensors + index, in BF16 and F16: loaded widened to float32."""
    reference = save_tiny("Llama", {}, tmp_path / "hf")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for (shard, members), bf16 in zip(shards.items(), (True, False)):
        part = {n: tensors[n] if bf16 else tensors[n].astype(np.float16) for n in members}
        save_file(part, tmp_path / "hf" / shard, bf16=part.keys() if bf16 else ())
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model, _ = load_hf_llama(tmp_path / "hf")
    ids = np.arange(12)[None] % VOCAB
    np.testing.assert_allclose(backend.to_numpy(model(ids)[0].data), hf_logits(reference, ids), atol=2e-2)   # 16 bits


def test_missing_unexpected_and_too_big_are_named(tmp_path, monkeypatch):
    save_tiny("Llama", dict(tie_word_embeddings=False), tmp_path / "hf")
    file = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file)
    with pytest.raises(ValueError, match="missing tensor.*model.layers.1.mlp.up_proj.weight"):
        load_hf_llama(tmp_path / "hf")
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)
    tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)
    save_file(tensors, file)
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.2.mlp.up_proj.weight'"):
        load_hf_llama(tmp_path / "hf")
    monkeypatch.setattr("tinyllm.interop.hf_llama.available_memory", lambda: 1000)
    with pytest.raises(MemoryError, match="parameters.*GiB"):
        check_fits_in_memory(tmp_path / "hf")


def test_unsupported_configs_are_refused_by_name(tmp_path):
    save_tiny("Llama", {}, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key, value, message in (("hidden_act", "gelu", "hidden_act='gelu'"), ("attention_bias", True, "attention_bias"),
                                ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "'yarn'")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=message):
            load_hf_llama(tmp_path / "hf")


def test_cli_import_generate_export_with_the_models_tokenizer(tmp_path, capsys, monkeypatch):
    """import-hf of a Qwen2-style directory with its tokenizer.json and chat template → a run that encodes
    text with the model's own ids and generates what transformers does → export-hf with the same files."""
    from test_hf_tokenizer_json import _text, train_hf_tokenizer

    from tinyllm.checkpoint import load_pretrained
    from tinyllm.cli import main as cli_main

    hf_tok = train_hf_tokenizer("qwen2", _text()[:30_000], tmp_path / "tokenizer.json", vocab_size=300)
    common = {**COMMON, "vocab_size": hf_tok.get_vocab_size()}
    torch.manual_seed(0)
    reference = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=True)).eval()
    reference.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))

    assert cli_main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert "imported Qwen2ForCausalLM" in capsys.readouterr().out
    model, tokenizer = load_pretrained(tmp_path / "run")
    text = "ROMEO:\nWherefore art thou?<|im_end|>"
    ids = tokenizer.encode(text, allowed_special="all")
    assert ids == hf_tok.encode(text, add_special_tokens=False).ids
    assert generate(model, ids, 20, temperature=0) == hf_greedy(reference, ids, 20)

    prompt = tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n", allowed_special="all")
    expected = tokenizer.decode(generate(model, prompt, 6, temperature=0))
    capsys.readouterr()
    assert cli_main(["generate", "--ckpt", str(tmp_path / "run"), "--chat", "--prompt", "Hi", "--temperature", "0",
                     "--max-new-tokens", "6"]) == 0                # the run's own chat template wraps the prompt
    assert capsys.readouterr().out == "<|im_start|>user\nHi<|im_end|>\n" + expected + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n/reset\n"))
    assert cli_main(["chat", "--ckpt", str(tmp_path / "run"), "--temperature", "0", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == expected.strip() + "\n"

    assert cli_main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                              "tokenizer_config.json"}
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(hf_logits(again, [ids]), hf_logits(reference, [ids]), atol=1e-5)


def test_an_imported_llama_run_finetunes_with_lora_dpo_and_grpo(tmp_path, capsys):
    """finetune instruct (in the model's chat template) / align dpo / align grpo with LoRA and
    --checkpoint-activations on an imported run."""
    from test_hf_tokenizer_json import _text, train_hf_tokenizer

    from tinyllm.cli import main as cli_main

    hf_tok = train_hf_tokenizer("llama3", _text()[:20_000], tmp_path / "tokenizer.json", vocab_size=300)
    save_tiny("Llama", dict(vocab_size=hf_tok.get_vocab_size(), max_position_embeddings=256), tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    assert cli_main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    common = ["--ckpt", str(tmp_path / "run"), "--lora-rank", "2", "--checkpoint-activations", "--train-size", "4",
              "--test-size", "2"]
    assert cli_main(["finetune", "instruct", *common, "--out", str(tmp_path / "sft"), "--epochs", "1",
                     "--batch-size", "2", "--max-new-tokens", "4", "--template", "chat"]) == 0
    assert "responses end with '<|im_end|>'" in capsys.readouterr().out    # the model's ChatML turn end
    assert "template" not in json.loads((tmp_path / "sft" / "config.json").read_text())
    assert cli_main(["align", "dpo", *common, "--out", str(tmp_path / "dpo"), "--epochs", "1", "--batch-size", "2"]) == 0
    assert cli_main(["align", "grpo", *common, "--out", str(tmp_path / "grpo"), "--steps", "1", "--prompts-per-step",
                     "2", "--group-size", "2", "--max-new-tokens", "4"]) == 0
    for run in ("sft", "dpo", "grpo"):
        assert (tmp_path / run / "model.safetensors").exists()


def test_a_model_trained_by_tinyllm_exports_with_its_tokenizer(tmp_path):
    """A Llama-style tinyllm model and its BPE tokenizer → a directory transformers loads whole."""
    from tinyllm.model import GPT, preset
    from tinyllm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.train("the cat sat on the mat. " * 50 + "ROMEO: hello", 300, special_tokens=["<|endoftext|>"])
    model = GPT(preset("llama-nano", vocab_size=tokenizer.vocab_size, block_size=32), seed=2).eval()
    save_hf_llama(model, tmp_path / "hf", tokenizer)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    ids = tokenizer.encode("ROMEO: the cat sat on the mat<|endoftext|>", allowed_special="all")
    assert hf_tokenizer("ROMEO: the cat sat on the mat<|endoftext|>")["input_ids"] == ids
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_allclose(hf_logits(hf_model, [ids]), backend.to_numpy(model([ids])[0].data), atol=1e-5)
