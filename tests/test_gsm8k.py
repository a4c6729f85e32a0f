"""GSM8K: answer extraction, the tolerant numeric match, rewards on the real references, and `align grpo
--task gsm8k` end to end on a tiny model."""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from tinyllm.checkpoint import save_model
from tinyllm.cli import main
from tinyllm.model import GPT, GPTConfig
from tinyllm.rl.gsm8k import (INSTRUCTION, has_final_line, is_correct, parse_number, predicted_answer, read_gsm8k,
                              reference_answer, worked_steps)
from tinyllm.rl.rollout import Rollout
from tinyllm.rl.tasks import correctness_reward, format_reward
from tinyllm.tokenizer import BPETokenizer

GSM8K = Path(__file__).parents[1].parent / "shared" / "data" / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_dir(), reason="../shared/data/gsm8k is absent")

ANSWER = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"


@pytest.mark.parametrize("text, value", [
    ("18", 18), ("$1,234", 1234), ("1,234.50.", Fraction(2469, 2)), ("-7", -7), ("- $5", -5), ("3/4", Fraction(3, 4)),
    ("0.75", Fraction(3, 4)), (".5 of it", Fraction(1, 2)), ("50%", 50), ("about 12 apples", 12), ("1,2", 1),
    ("none", None), ("-", None), ("5/0", None),
])
def test_parse_number_is_tolerant(text, value):
    assert parse_number(text) == value


def test_answer_extraction_and_worked_steps():
    assert reference_answer(ANSWER) == "18" and reference_answer("no marker") is None
    assert worked_steps(ANSWER) == "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\n#### 18"
    assert predicted_answer("so 9 * 2 = 18\n#### $18.") == 18
    assert predicted_answer("9 eggs, so she makes 18 dollars.") == 18       # no ####: the last number
    assert predicted_answer("#### eighteen, i.e. 20") == 20


def test_rewards_on_handmade_completions():
    record = {"instruction": INSTRUCTION, "input": "q", "output": worked_steps(ANSWER), "final": "18", "task": "gsm8k"}
    for completion, correct, formatted in [
        ("9 * 2 = 18\n#### 18", 1, 1), ("The answer is $18.00.", 1, 0), ("#### 18.0", 1, 1),
        ("9 * 2 = 19\n#### 19", 0, 1), ("#### 18\nwait, 17", 1, 0), ("", 0, 0),
    ]:
        rollout = Rollout("p", completion, True, record)
        assert (correctness_reward(rollout), format_reward(rollout)) == (correct, formatted), completion
    assert format_reward(Rollout("p", "#### 18", False, record)) == 0          # ran out of tokens


@needs_gsm8k
@pytest.mark.parametrize("split, count", [("train", 7473), ("test", 1319)])
def test_the_real_references_score_full_reward_and_wrong_answers_none(split, count):
    records = read_gsm8k(GSM8K / f"{split}.jsonl")
    assert len(records) == count
    for record in records:
        steps = record["output"]
        assert is_correct(record, steps) and has_final_line(steps), steps
        reference = parse_number(record["final"])
        assert reference is not None and reference.denominator == 1     # GSM8K's answers are integers
        wrong = steps.rsplit("####", 1)[0] + f"#### {reference + 1}"
        assert not is_correct(record, wrong)
        spoken = f"The answer is ${int(reference):,}."                 # thousands separators, $ and a period
        assert is_correct(record, spoken)


def test_read_gsm8k_names_a_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ValueError, match="line 1: the answer has no '#### <number>' line"):
        read_gsm8k(path)


def test_align_grpo_on_gsm8k_runs(tmp_path):
    problems = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                 "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
                for a in range(2, 8) for b in range(1, 4)]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    text = " ".join(p["question"] + " " + p["answer"] for p in problems) + INSTRUCTION
    tokenizer = BPETokenizer.train(text, 300, special_tokens=("<|endoftext|>",))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16), seed=0)
    save_model(tmp_path / "base", model, tokenizer, extra_config={"task": "instruct", "template": {"name": "alpaca"}})
    assert main(["align", "grpo", "--ckpt", str(tmp_path / "base"), "--out", str(tmp_path / "grpo"), "--task", "gsm8k",
                 "--data", str(data), "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                 "--max-new-tokens", "8", "--eval-interval", "1"]) == 0
    config = json.loads((tmp_path / "grpo" / "config.json").read_text())["alignment"]
    assert config["task"] == "gsm8k" and 0 <= config["results"]["after"]["test_accuracy"] <= 1
