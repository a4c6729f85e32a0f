"""``tinyllm align reward|dpo|ppo|grpo`` end to end on a tiny run: each writes its run directory (weights,
config with before/after results, log.jsonl, log.svg), and bad input stops with a clear message."""

import json

import pytest

from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.cli import main
from tinyllm.model import GPT, GPTConfig
from tinyllm.tokenizer import BPETokenizer

TEXT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request. "
        "### Instruction: Add the two numbers. Subtract the second number from the first. How many words are in the "
        "input? ### Input: ### Response: 0 1 2 3 4 5 6 7 8 9 10 + - I think the answer is but I am not sure. ") * 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    tokenizer = BPETokenizer.train(TEXT, 300, special_tokens=("<|endoftext|>",))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16), seed=0)
    save_model(root / "base", model, tokenizer, extra_config={"task": "instruct", "template": {"name": "alpaca"}})
    return root


def _run(argv):
    assert main(argv) == 0, f"tinyllm {' '.join(argv)} failed"


def _check_run(out, keys):
    assert (out / "model.safetensors").exists() and (out / "log.svg").exists()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(all(k in r for k in keys) for r in records), f"no log record with {keys}"
    return json.loads((out / "config.json").read_text())


def test_align_reward_then_ppo(runs):
    small = ["--train-size", "12", "--test-size", "6", "--batch-size", "4", "--epochs", "1", "--log-interval", "100"]
    _run(["align", "reward", "--ckpt", str(runs / "base"), "--out", str(runs / "rm"), *small])
    config = _check_run(runs / "rm", ["loss", "accuracy"])
    assert config["task"] == "reward" and 0 <= config["results"]["after"]["accuracy"] <= 1
    _run(["align", "ppo", "--ckpt", str(runs / "base"), "--out", str(runs / "ppo"), "--reward-model", str(runs / "rm"),
          "--steps", "2", "--rollout-batch", "4", "--minibatch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "4",
          "--train-size", "8", "--test-size", "3", "--eval-interval", "2"])
    config = _check_run(runs / "ppo", ["score", "kl", "clip_frac", "entropy", "value_loss", "explained_variance"])
    assert config["alignment"]["method"] == "ppo" and config["template"] == {"name": "alpaca"}
    model, _ = load_pretrained(runs / "ppo")                  # a plain GPT: the value head is not saved
    assert not hasattr(model, "value_head")


def test_align_dpo(runs):
    _run(["align", "dpo", "--ckpt", str(runs / "base"), "--out", str(runs / "dpo"), "--train-size", "12",
          "--test-size", "6", "--batch-size", "4", "--epochs", "1"])
    config = _check_run(runs / "dpo", ["loss", "margin", "accuracy"])
    assert config["alignment"]["results"]["before"]["accuracy"] == 0.5


def test_align_grpo(runs):
    _run(["align", "grpo", "--ckpt", str(runs / "base"), "--out", str(runs / "grpo"), "--task", "count", "--steps", "2",
          "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "3", "--train-size", "6",
          "--test-size", "4", "--eval-interval", "2"])
    config = _check_run(runs / "grpo", ["reward", "reward_std", "correct", "kl", "completion_length"])
    assert "test_accuracy" in config["alignment"]["results"]["after"]


def test_align_grpo_with_lora_saves_merged_plain_weights(runs):
    _run(["align", "grpo", "--ckpt", str(runs / "base"), "--out", str(runs / "grpo-lora"), "--task", "count",
          "--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "3", "--train-size", "4",
          "--test-size", "2", "--lora-rank", "2"])
    model, _ = load_pretrained(runs / "grpo-lora")            # loads strictly: no adapter names left
    assert model.num_parameters() == load_pretrained(runs / "base")[0].num_parameters()


def test_bad_input_gives_clear_errors(runs, tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "Q", "chosen": "a"}\n')
    assert main(["align", "dpo", "--ckpt", str(runs / "base"), "--out", str(tmp_path / "x"), "--data", str(bad)]) == 2
    assert "pairs.jsonl, line 1: the record lacks the field(s) ['rejected']" in capsys.readouterr().err
    assert main(["align", "grpo", "--ckpt", str(runs / "base"), "--out", str(tmp_path / "y"), "--group-size", "1"]) == 2
    assert "argument --group-size: expected an integer >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists(), "a refused run leaves no --out folder"
    assert main(["align", "ppo", "--ckpt", str(runs / "base"), "--out", str(tmp_path / "z"),
                 "--reward-model", str(tmp_path / "none")]) == 2
    assert "no reward model" in capsys.readouterr().err


@pytest.mark.parametrize("method, config_class", [("ppo", "PPOConfig"), ("grpo", "GRPOConfig")])
def test_align_flags_are_generated_from_the_config_fields(method, config_class):
    """Every ``flags.option`` field of PPOConfig / GRPOConfig is a flag with the field's default,
    and its check refuses a bad value with a one-line message."""
    import dataclasses
    from tinyllm.cli import build_parser
    from tinyllm.rl.grpo import GRPOConfig
    from tinyllm.rl.ppo import PPOConfig
    config = {"PPOConfig": PPOConfig, "GRPOConfig": GRPOConfig}[config_class]
    parser = build_parser()
    args = parser.parse_args(["align", method])
    options = [f for f in dataclasses.fields(config) if "help" in f.metadata]
    assert len(options) >= 8
    for f in options:
        if f.name != "max_new_tokens" or method == "ppo":   # GRPO's depends on the task
            assert getattr(args, f.name) == f.default, f.name
    with pytest.raises(SystemExit):
        parser.parse_args(["align", method, "--steps", "0"])
    flag = "--gamma" if method == "ppo" else "--group-size"
    with pytest.raises(SystemExit):
        parser.parse_args(["align", method, flag, "1.5" if method == "ppo" else "1"])
