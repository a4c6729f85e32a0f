"""Curriculum learning: the competence schedule, both difficulty scores, the sampler, and pretrain with it."""

import json

import numpy as np
import pytest

from tinyllm.cli import main
from tinyllm.data.curriculum import (CurriculumSampler, bigram_difficulty, competence, curriculum_sampler,
                                     sentence_length_difficulty, window_starts)
from tinyllm.model import GPT, GPTConfig
from tinyllm.tokenizer import CharTokenizer
from tinyllm.train import TrainConfig, pretrain


def test_competence_grows_from_the_initial_share_to_everything_at_the_warmup():
    values = [competence(t, 100, warmup=0.5, initial=0.1) for t in range(101)]
    assert values[0] == pytest.approx(0.1) and values[50] == pytest.approx(1.0) and values[100] == 1.0
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert competence(0, 100, warmup=0) == 1.0


def test_short_sentences_are_easier_than_long_ones():
    text = "Go. Run. Sit. Eat. " * 8 + "the long winding road went on and on without any end in sight " * 3
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text))
    starts = np.array([0, len(text) - 65])
    short, long = sentence_length_difficulty(ids, starts, 64, tok)
    assert short < 64 / 10 and long == 64.0                       # many sentence ends vs none


def test_a_bigram_model_finds_repeated_text_easier_than_random_text():
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.tile([1, 2, 3, 4], 100), rng.integers(0, 50, 400)])
    easy, hard = bigram_difficulty(ids, np.array([0, 500]), 64, 50)
    assert easy < hard


def test_the_sampler_draws_the_easiest_windows_first_then_all():
    ids = np.arange(1000)
    starts = window_starts(len(ids), 16)
    difficulty = -starts.astype(float)                             # the last windows are the easiest
    sampler = CurriculumSampler(ids, 16, 8, steps=100, difficulty=difficulty, starts=starts, warmup=0.5)
    rng = np.random.default_rng(0)
    x, y = sampler(0, rng)
    assert x.shape == y.shape == (8, 16) and np.array_equal(x[:, 1:], y[:, :-1])
    easiest = set(starts[-int(np.ceil(0.1 * len(starts))):])
    assert set(x[:, 0]) <= easiest
    late = np.concatenate([sampler(99, rng)[0][:, 0] for _ in range(50)])
    assert late.min() < min(easiest) - 300                         # hard windows come in


def test_unknown_curriculum_is_refused():
    with pytest.raises(ValueError, match="unknown curriculum 'size'"):
        curriculum_sampler("size", np.arange(100), 8, 2, 10, CharTokenizer.from_text("ab"))


class Interrupted(Exception):
    pass


def test_a_curriculum_run_resumes_exactly(tmp_path):
    text = "A cat sat. A dog ran far away from the big house on the hill. " * 40
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text))
    train_ids, val_ids = ids[:2200], ids[2200:]
    config = TrainConfig(steps=6, batch_size=4, eval_interval=2, eval_iters=1, sample_tokens=0, warmup=1)
    model = lambda: GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)  # noqa: E731
    sampler = curriculum_sampler("perplexity", train_ids, 16, 4, 6, tok)
    pretrain(model(), train_ids, val_ids, config, tmp_path / "whole", batch_sampler=sampler, progress=False)

    def dies_at_step_3(step, generator):
        if step == 3:
            raise Interrupted
        return sampler(step, generator)
    with pytest.raises(Interrupted):
        pretrain(model(), train_ids, val_ids, config, tmp_path / "split", batch_sampler=dies_at_step_3, progress=False)
    pretrain(model(), train_ids, val_ids, config, tmp_path / "split", batch_sampler=sampler, resume=True, progress=False)
    logs = [[r for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())
             if r["kind"] == "train"] for run in ("whole", "split")]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]] and len(logs[0]) == 6


@pytest.mark.parametrize("kind", ["length", "perplexity"])
def test_pretrain_with_a_curriculum_on_the_command_line(tmp_path, kind):
    data = tmp_path / "text.txt"
    data.write_text("A cat sat. A dog ran far away from the big house on the hill. " * 40)
    assert main(["pretrain", "--data", str(data), "--tokenizer", "char", "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--context", "16", "--batch-size", "4", "--eval-interval", "2",
                 "--eval-iters", "1", "--sample-tokens", "0", "--curriculum", kind, "--steps", "2",
                 "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["curriculum"] == kind
