"""Masked-LM pretraining: masking statistics, whole words, loss on selected positions only, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinyllm.cli import main
from tinyllm.encoder import Encoder, EncoderConfig
from tinyllm.mlm import IGNORE, MaskedLM, fill_mask, mask_tokens
from tinyllm.tokenizer import WordPieceTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE, MASK, SPECIAL_IDS = 1000, 4, [0, 1, 2, 3, 4]


def test_masking_statistics_15_percent_selected_then_80_10_10():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB_SIZE, (400, 250))
    ids[:, 0], ids[:, -1] = 2, 3                                   # [CLS] … [SEP]
    inputs, labels = mask_tokens(ids, rng, VOCAB_SIZE, MASK, SPECIAL_IDS)
    selected = labels != IGNORE
    n = selected.sum()
    ordinary = ids.size - 2 * len(ids)
    assert abs(n / ordinary - 0.15) < 4 * np.sqrt(0.15 * 0.85 / ordinary)   # 4 standard deviations
    assert not selected[:, [0, -1]].any()                          # specials are never selected
    assert (labels[selected] == ids[selected]).all()               # a label is the original token
    masked = inputs[selected] == MASK
    kept = inputs[selected] == ids[selected]
    random = ~masked & ~kept
    for share, expected in ((masked.mean(), 0.8), (random.mean(), 0.1 * (1 - 1 / 995)), (kept.mean(), 0.1 + 0.1 / 995)):
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    assert (inputs[~selected] == ids[~selected]).all()             # unselected positions are untouched
    assert not np.isin(inputs[selected][random], SPECIAL_IDS).any()  # random replacements are ordinary tokens


def test_whole_word_masking_selects_every_piece_of_a_word_together():
    tokens = SPECIALS + ["run", "##ning", "##s", "fast", "dog"]
    starts = np.array([not t.startswith("##") for t in tokens])
    row = [2] + [5, 6, 7, 8, 9] * 40 + [3]                        # running-s fast dog …
    ids = np.array([row] * 200)
    inputs, labels = mask_tokens(ids, np.random.default_rng(1), len(tokens), MASK, SPECIAL_IDS, word_starts=starts)
    selected = labels != IGNORE
    words = selected[:, 1:-1].reshape(200, 40, 5)
    assert (words[..., 0] == words[..., 1]).all() and (words[..., 0] == words[..., 2]).all()   # run ##ning ##s
    assert 0.12 < words[..., [0, 3, 4]].mean() < 0.18             # 15% of the *words*


def test_loss_counts_only_selected_positions_and_batches_weigh_their_targets():
    tok = WordPieceTokenizer(SPECIALS + list("abcdefgh"))
    ids = np.array(tok.encode("a b c d e f g h " * 20))
    objective = MaskedLM(ids, tok, batch_size=4, context=10)
    x, labels = objective(0, np.random.default_rng(0))
    assert x.shape == labels.shape == (4, 10) and (x[:, 0] == tok.cls_id).all() and (x[:, -1] == tok.sep_id).all()
    assert objective.targets(x, labels) == (labels != IGNORE).sum()
    model = Encoder(EncoderConfig(vocab_size=tok.vocab_size, block_size=10, n_layer=1, n_head=2, n_embd=8), seed=0)
    logits, loss = model(x, labels)
    changed = labels.copy()
    changed[labels == IGNORE] = 7                                  # had these positions counted, the loss moves
    assert loss.item() != pytest.approx(model(x, changed)[1].item())
    result = objective.evaluate(model, ids, max_batches=2)
    assert result["tokens"] > 0 and result == objective.evaluate(model, ids, max_batches=2)   # same masks each time


def test_fill_mask_needs_a_mask_and_returns_probabilities():
    tok = WordPieceTokenizer(SPECIALS + list("abcdefgh"))
    model = Encoder(EncoderConfig(vocab_size=tok.vocab_size, block_size=10, n_layer=1, n_head=2, n_embd=8), seed=0).eval()
    with pytest.raises(ValueError, match=r"has no \[MASK\]"):
        fill_mask(model, tok, "a b c")
    (fillers,) = fill_mask(model, tok, "a [MASK] c", top_k=3)
    assert len(fillers) == 3 and all(t not in SPECIALS for t, _ in fillers)
    assert fillers[0][1] >= fillers[1][1] >= fillers[2][1] and 0 < sum(p for _, p in fillers) <= 1


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm")
    data = root / "text.txt"
    data.write_text("The cat sat on the mat. The dog sat on the log. A cat and a dog ran home. " * 60)
    out = root / "run"
    flags = ["pretrain", "--objective", "mlm", "--data", str(data), "--vocab-size", "60", "--preset", "nano",
             "--context", "16", "--batch-size", "4", "--eval-iters", "1", "--eval-interval", "4", "--out", str(out)]
    assert main(flags + ["--steps", "4"]) == 0
    assert main(flags + ["--steps", "6", "--resume", "--whole-word-mask"]) == 2       # settings must match
    assert main(flags + ["--steps", "6", "--resume"]) == 0
    return root, out


def test_pretrain_mlm_writes_an_encoder_run_and_resumes(mlm_run):
    _, out = mlm_run
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "encoder" and config["objective"]["name"] == "mlm"
    assert config["model"]["cls_token_id"] == 2
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 6


def test_fill_mask_cli_and_the_wrong_kind_of_run(mlm_run, capsys):
    root, out = mlm_run
    assert main(["fill-mask", "--ckpt", str(out), "--text", "The cat sat on the [MASK].", "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "[MASK] #1:" in printed and len(printed.splitlines()) == 5
    assert main(["fill-mask", "--ckpt", str(out), "--text", "The cat sat on the mat."]) == 2
    assert "has no [MASK]" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(out), "--prompt", "The cat"]) == 2
    error = capsys.readouterr().err
    assert "holds an encoder" in error and "fill-mask" in error
    gpt = root / "gpt"
    assert main(["pretrain", "--data", str(root / "text.txt"), "--tokenizer", "char", "--preset", "nano",
                 "--context", "16", "--steps", "1", "--eval-iters", "1", "--batch-size", "2", "--sample-tokens", "0",
                 "--out", str(gpt)]) == 0
    capsys.readouterr()
    assert main(["fill-mask", "--ckpt", str(gpt), "--text", "a [MASK]"]) == 2
    assert "is a decoder (GPT) run" in capsys.readouterr().err


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_finetune_classify_on_an_encoder_run_reads_cls(mlm_run, tmp_path, capsys, lora):
    from tinyllm.finetune import load_finetuned
    from tinyllm.finetune.encoder_classify import EncoderClassifier
    _, base = mlm_run
    data = tmp_path / "labels.tsv"
    data.write_text("".join(f"animal\tThe {w} sat on the mat.\nplace\tA home on the {w}.\n"
                            for w in ("cat", "dog", "log", "mat") * 6))
    out = tmp_path / "clf"
    flags = ["finetune", "classify", "--ckpt", str(base), "--data", str(data), "--out", str(out), "--epochs", "1",
             "--batch-size", "4"] + (["--lora-rank", "2"] if lora else [])
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert "test set: accuracy" in printed and ("LoRA rank 2" in printed) == lora
    model, tokenizer, config = load_finetuned(out, prefer_adapter=lora)
    assert isinstance(model, EncoderClassifier) and config["labels"] == ["animal", "place"]
    ids, mask = model.frame(np.array([[7, 8, 0], [9, 0, 0]]), np.array([2, 1]))
    assert ids.tolist() == [[2, 7, 8, 3], [2, 9, 3, 0]] and mask.sum(axis=1).tolist() == [4, 3]
    assert main(["evaluate", "--ckpt", str(out)]) == 0
