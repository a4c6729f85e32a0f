"""Tests of the reward model (tinyllm.rl.reward) and preference data (tinyllm.rl.data): the Bradley-Terry loss and
its gradient, a score that ignores right padding, a short run that raises held-out pairwise accuracy,
save → load, and reading pair files (errors naming file and line; the Alpaca-style real file)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tinyllm import Tensor, backend, parallel
from tinyllm.finetune import FinetuneConfig
from tinyllm.model import GPT, GPTConfig
from tinyllm.rl.data import (builtin_preferences, encode_pair, encode_preferences, read_preferences, read_prompts)
from tinyllm.rl.reward import (RewardModel, StepMetrics, bradley_terry_loss, evaluate_reward_model, load_reward_model,
                               pairwise_accuracy, save_reward_model, train_reward_model)
from tinyllm.testing import gradcheck

SHARED = Path(__file__).parents[1].parent / "shared" / "data"


def _tiny(seed=0):
    return GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=seed)


def obvious_pairs(n, seed):
    from tinyllm.rl.data import EncodedPairs
    rng = np.random.default_rng(seed)
    pairs = EncodedPairs()
    for _ in range(n):
        k = int(rng.integers(1, 4))
        good = [int(x) for x in rng.integers(1, 8, k)]
        good[int(rng.integers(k))] = 3
        pairs.prompts.append([int(x) for x in rng.integers(1, 8, int(rng.integers(1, 4)))])
        pairs.chosen.append(good + [0])
        pairs.rejected.append([4 if x == 3 else x for x in good] + [0])
    return pairs


# ---------------------------------------------------------------------------------------------- the loss

def test_bradley_terry_loss_formula_and_gradient_float64(float64, rng):
    chosen = Tensor(rng.standard_normal(6) * 3, requires_grad=True)
    rejected = Tensor(rng.standard_normal(6) * 3, requires_grad=True)
    expected = np.mean(np.log1p(np.exp(-(chosen.numpy() - rejected.numpy()))))
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-12)
    assert gradcheck(bradley_terry_loss, [chosen, rejected]) < 1e-6


def test_bradley_terry_loss_is_log_2_for_equal_scores_and_checks_shapes():
    assert bradley_terry_loss(Tensor(np.zeros(3)), Tensor(np.zeros(3))).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(Tensor(np.zeros(3)), Tensor(np.zeros(2)))


def test_pairwise_accuracy_counts_ties_as_half():
    assert pairwise_accuracy([1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 2.0, 1.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


# ---------------------------------------------------------------------------------------------- the model

def test_reward_model_scores_the_last_real_token_so_right_padding_changes_nothing():
    model = RewardModel.from_gpt(_tiny())
    alone = model(np.array([[1, 2, 3]])).numpy()
    padded = model(np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 1]]), lengths=np.array([3, 5])).numpy()
    assert padded.shape == (2,)
    np.testing.assert_allclose(padded[0], alone[0], rtol=1e-5)


def test_reward_model_learns_obvious_pairs_and_survives_save_and_load(tmp_path):
    model = RewardModel.from_gpt(_tiny())
    train, val = obvious_pairs(64, seed=0), obvious_pairs(32, seed=1)
    before = evaluate_reward_model(model, val)["accuracy"]
    train_reward_model(model, train, None, FinetuneConfig(epochs=3, batch_size=8, lr=1e-2, warmup=2), progress=False)
    after = evaluate_reward_model(model, val)
    assert after["accuracy"] >= 0.9 and after["accuracy"] > before, f"held-out accuracy {before} → {after['accuracy']}"
    save_reward_model(tmp_path / "rm", model)
    loaded, _ = load_reward_model(tmp_path / "rm")
    np.testing.assert_allclose(evaluate_reward_model(loaded, val)["chosen_scores"], after["chosen_scores"], rtol=1e-5)


def test_loading_a_run_that_is_not_a_reward_model_is_a_clear_error(tmp_path):
    from tinyllm.checkpoint import save_model
    save_model(tmp_path / "gpt", _tiny())
    with pytest.raises(ValueError, match="not a reward-model run"):
        load_reward_model(tmp_path / "gpt")


# ---------------------------------------------------------------------------------------------- data

def test_read_preferences_jsonl_and_alpaca_json(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"prompt": "Q", "chosen": "good", "rejected": "bad"}\n\n{"prompt": "R", "chosen": "a", "rejected": "b"}\n')
    records = read_preferences(jsonl)
    assert [r["prompt"] for r in records] == ["Q", "R"]
    alpaca = tmp_path / "pairs.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi", "chosen": "Hi!",
                                   "rejected": "no"}]))
    (record,) = read_preferences(alpaca)
    assert record["prompt"].endswith("### Instruction:\nSay hi.\n\n### Response:\n") and record["chosen"] == "Hi!"


def test_a_record_missing_a_field_names_the_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "a", "rejected": "b"}\n{"prompt": "Q", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl, line 2: the record lacks the field\(s\) \['rejected'\]"):
        read_preferences(path)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "Q",\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 1: not valid JSON"):
        read_preferences(bad_json)
    with pytest.raises(FileNotFoundError):
        read_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="record 0: field 'chosen' must be a string"):
        (tmp_path / "x.json").write_text(json.dumps([{"prompt": "Q", "chosen": 1, "rejected": "b"}]))
        read_preferences(tmp_path / "x.json")


def test_read_prompts_accepts_prompt_or_instruction_records(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Q"}\n{"instruction": "Add.", "input": "1 + 1", "output": "2"}\n')
    records = read_prompts(path)
    assert records[0]["prompt"] == "Q" and "### Input:\n1 + 1" in records[1]["prompt"]
    path.write_text('{"question": "Q"}\n')
    with pytest.raises(ValueError, match="line 1: the record lacks the field 'prompt'"):
        read_prompts(path)


def test_builtin_preferences_are_distinct_across_splits_and_differ_within_each_pair():
    train, val, test = builtin_preferences(60, 10, 30, seed=5)
    keys = [{(r["instruction"], r["input"]) for r in split} for split in (train, val, test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert all(r["chosen"] != r["rejected"] for r in train + val + test)
    assert {r["flaw"] for r in train} == {"wrong", "format"}


def test_encode_pair_cuts_the_prompt_start_then_the_responses():
    prompt, chosen, rejected, cut = encode_pair([1, 2, 3, 4, 5], [6, 7], [8, 9, 10], block_size=6)
    assert prompt == [3, 4, 5] and chosen == [6, 7] and rejected == [8, 9, 10] and cut
    prompt, chosen, rejected, cut = encode_pair([1, 2], [6, 7, 8, 9], [5], block_size=3)
    assert prompt == [2] and chosen == [6, 7] and rejected == [5] and cut


@pytest.mark.skipif(not (SHARED / "preference-data.json").exists(), reason="shared/data/preference-data.json is absent")
def test_the_real_preference_file_reads_with_alpaca_prompts():
    from tinyllm.tokenizer import CharTokenizer
    records = read_preferences(SHARED / "preference-data.json")
    assert len(records) == 1100
    assert all(r["prompt"].startswith("Below is an instruction") for r in records)
    tokenizer = CharTokenizer.from_text("".join(r["prompt"] + r["chosen"] + r["rejected"] for r in records[:50]) + "\n")
    encoded = encode_preferences(records[:50], tokenizer, block_size=64)
    assert all(len(p) + max(len(c), len(r)) <= 64 for p, c, r in zip(encoded.prompts, encoded.chosen, encoded.rejected))


def test_step_metrics_are_means_over_all_the_steps_pairs_whatever_order_blocks_finish_in():
    metrics = StepMetrics()
    metrics.add(np.array([5, 6, 7]), {"accuracy": 1.0, "margin": 2.0})   # the second block finished first
    metrics.add(np.array([0]), {"accuracy": 0.0, "margin": -2.0})

    assert metrics.pop() == {"accuracy": 0.75, "margin": 1.0}           # (3·1 + 1·0) / 4, (3·2 - 2) / 4
    assert metrics.pop() == {}                                         # the next step starts empty


def test_reward_training_split_over_two_threads_logs_the_whole_steps_metrics(float64, monkeypatch):
    def run():
        records = []
        train_reward_model(RewardModel.from_gpt(_tiny()), obvious_pairs(24, seed=0), None,
                           FinetuneConfig(epochs=2, batch_size=8, lr=1e-2, warmup=1), progress=False, log=records.append)
        return [[r[k] for k in ("loss", "accuracy", "margin")] for r in records if r["kind"] == "train"]
    monkeypatch.setattr(parallel, "num_threads", 1)
    one = run()
    monkeypatch.setattr(parallel, "num_threads", 2)
    two = run()
    np.testing.assert_allclose(two, one, rtol=1e-9, atol=1e-12)
