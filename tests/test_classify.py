"""Tests of classification finetuning (tinyllm.finetune.classify) and its data (tinyllm.data.classification).

The promises: the head reads each row's last real token, so right padding changes nothing and its gradient
is exact; freezing trains only what it says; files are read with errors that name file and line; the
trained classifier beats chance, reports its metrics, and comes back from disk predicting the same.
"""

from pathlib import Path

import numpy as np
import pytest

from tinyllm import Tensor
from tinyllm.data.classification import balance, builtin_task, label_names, read_labeled, split_examples
from tinyllm.finetune import (FinetuneConfig, GPTClassifier, classification_report, freeze_except_last,
                              last_token_states, load_classifier, load_finetuned, predict, save_classifier,
                              train_classifier)
from tinyllm.finetune.classify import pad_batch
from tinyllm.lora import apply_lora, merge_lora, save_adapter
from tinyllm.model import GPT, GPTConfig
from tinyllm.testing import gradcheck
from tinyllm.tokenizer import CharTokenizer
from tinyllm import backend

DATA = Path(__file__).parents[1].parent / "shared" / "data"
TINY = dict(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_classifier(num_classes=3, seed=0):
    return GPTClassifier(GPTConfig(**TINY), num_classes, seed=seed)


# ---------------------------------------------------------------------------------------------- the head

def test_last_token_states_gathers_each_rows_last_real_position(float64, rng):
    hidden = rng.standard_normal((3, 5, 4))
    out = last_token_states(Tensor(hidden), np.array([5, 2, 1]))
    np.testing.assert_array_equal(out.numpy(), hidden[[0, 1, 2], [4, 1, 0]])


def test_last_token_states_gradient_with_padding(float64, rng):
    hidden = Tensor(rng.standard_normal((3, 5, 4)), requires_grad=True)
    lengths = np.array([5, 2, 3])                              # rows 1 and 2 are right-padded
    error = gradcheck(lambda h: last_token_states(h, lengths), [hidden])
    assert error < 1e-8
    assert not hidden.grad[1, 2:].any() and not hidden.grad[2, 3:].any(), "padding positions must get no gradient"


def test_whole_classifier_gradient_with_padding_matches_finite_differences(float64, rng):
    model = tiny_classifier()
    for p in model.parameters():                               # away from the init's symmetric zeros/ones
        p.data += backend.asarray(rng.standard_normal(p.shape) * 0.1)
    ids, lengths = pad_batch([[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]], pad_id=0)
    labels = np.array([0, 2, 1])
    params = model.parameters()
    error = gradcheck(lambda *_: model(ids, lengths, labels)[1], params, max_elements=10)
    assert error < 1e-6, f"classifier gradient differs from finite differences by {error:.2e}"


def test_right_padding_does_not_change_any_prediction(float64, rng):
    model = tiny_classifier()
    model.eval()
    rows = [[3, 1, 4, 1, 5, 9], [2, 6], [5, 3, 5]]
    alone = [model(np.array([r]))[0].numpy()[0] for r in rows]
    for filler in (0, 7):
        ids, lengths = pad_batch(rows, pad_id=filler)
        batched = model(ids, lengths)[0].numpy()
        np.testing.assert_allclose(batched, np.stack(alone), atol=1e-12, err_msg=f"padding with id {filler} changed a logit")


def test_freeze_except_last_trains_only_the_last_blocks_norm_and_head():
    model = tiny_classifier()
    freeze_except_last(model, 1, also=("classifier",))
    trainable = sorted({n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
                        for n, p in model.named_parameters() if p.requires_grad})
    assert trainable == ["blocks.1", "classifier", "ln_f"]
    from tinyllm.finetune.loop import fit
    ids, lengths = pad_batch([[1, 2, 3], [4, 5]])
    summary = fit(model, 2, lambda idx: model(ids, lengths, np.array([0, 1]))[1],
                  FinetuneConfig(epochs=1, batch_size=2), progress=False)
    frozen_count = sum(p.size for p in model.parameters() if not p.requires_grad)
    assert summary["trainable"] == model.num_parameters() - frozen_count
    assert summary["optimizer_bytes"] == 2 * summary["trainable"] * 4, "AdamW keeps 2 float32 moments per trainable number"


def test_freezing_more_blocks_than_exist_is_an_error():
    with pytest.raises(ValueError, match="the model has 2"):
        freeze_except_last(tiny_classifier(), 3)


# ---------------------------------------------------------------------------------------------- data

def test_readers_agree_on_tsv_csv_jsonl_and_json(tmp_path):
    expected = [("spam", "WIN a prize, now"), ("ham", "see you at 5")]
    (tmp_path / "d.tsv").write_text("spam\tWIN a prize, now\n\nham\tsee you at 5\n")
    (tmp_path / "d.csv").write_text('label,text\nspam,"WIN a prize, now"\nham,see you at 5\n')
    (tmp_path / "d.jsonl").write_text('{"label": "spam", "text": "WIN a prize, now"}\n{"label": "ham", "text": "see you at 5"}\n')
    (tmp_path / "d.json").write_text('[{"label": "spam", "text": "WIN a prize, now"}, {"label": "ham", "text": "see you at 5"}]')
    for name in ("d.tsv", "d.csv", "d.jsonl", "d.json"):
        assert read_labeled(tmp_path / name) == expected, f"{name} was read differently"


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"label": "a", "text": "x"}\n{"label": "b", "text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON"):
        read_labeled(path)
    path.write_text('{"label": "a", "text": "x"}\n\n{"label": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 3: the record lacks the field\(s\) \['text'\]"):
        read_labeled(path)


def test_tsv_line_without_a_tab_names_its_line(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("ham\tok\nno tab here\n")
    with pytest.raises(ValueError, match=r"d.tsv, line 2: expected 'label<TAB>text'"):
        read_labeled(path)


def test_a_single_class_is_a_clear_error():
    with pytest.raises(ValueError, match=r"only one: 'ham' \(2 examples\)"):
        label_names([("ham", "a"), ("ham", "b")])
    with pytest.raises(ValueError, match="only one"):
        balance([("ham", "a")])


def test_balance_and_split_are_seeded_and_sized():
    examples = [("a", f"x{i}") for i in range(30)] + [("b", f"y{i}") for i in range(10)]
    balanced = balance(examples, seed=1)
    assert sum(label == "a" for label, _ in balanced) == 10 and len(balanced) == 20
    assert balance(examples, seed=1) == balanced and balance(examples, seed=2) != balanced
    train, val, test = split_examples(balanced)
    assert (len(train), len(val), len(test)) == (14, 2, 4)
    assert sorted(train + val + test) == sorted(balanced)


def test_builtin_task_is_two_balanced_classes_of_lines():
    examples = builtin_task(per_class=50, seed=0)
    assert label_names(examples) == ["code", "prose"]
    assert sum(label == "code" for label, _ in examples) == 50
    assert builtin_task(per_class=50, seed=0) == examples


@pytest.mark.skipif(not (DATA / "sms_spam.tsv").exists(), reason="shared data folder absent")
def test_sms_spam_balances_to_747_each_and_splits_70_10_20():
    examples = read_labeled(DATA / "sms_spam.tsv")
    balanced = balance(examples)
    assert len(examples) == 5573 and len(balanced) == 2 * 747
    assert [len(s) for s in split_examples(balanced)] == [1045, 149, 300]


# ---------------------------------------------------------------------------------------------- end to end

def toy_task(n=40, seed=0):
    """Two classes a character model can tell apart: texts of a-e letters vs texts of f-j letters."""
    rng = np.random.default_rng(seed)
    return [(label, "".join(rng.choice(list(letters), size=rng.integers(2, 7))))
            for label, letters in [("low", "abcde"), ("high", "fghij")] * (n // 2)]


def test_classifier_learns_reports_saves_and_loads(tmp_path):
    tokenizer = CharTokenizer.from_text("abcdefghij")
    model = GPTClassifier.from_gpt(GPT(GPTConfig(**{**TINY, "vocab_size": 10})), 2, ["high", "low"])
    train, test = toy_task(40, seed=0), toy_task(20, seed=1)
    summary = train_classifier(model, tokenizer, train, test, FinetuneConfig(epochs=4, batch_size=8, lr=1e-2, warmup=2),
                               progress=False)
    report = classification_report(model, tokenizer, test)

    assert report["accuracy"] >= 0.9 > report["majority_baseline"], report
    assert len(summary["history"]) == 4 and {"train_loss", "train_acc", "val_acc"} <= set(summary["history"][-1])
    assert np.array(report["confusion"]).sum() == 20 and 0.0 <= report["f1"] <= 1.0

    save_classifier(tmp_path, model, tokenizer)
    loaded, loaded_tokenizer = load_classifier(tmp_path)
    texts = [text for _, text in test]
    labels, probs = predict(model, tokenizer, texts)
    loaded_labels, loaded_probs = predict(loaded, loaded_tokenizer, texts)
    assert loaded_labels == labels and loaded.label_names == ["high", "low"]
    np.testing.assert_allclose(loaded_probs, probs, rtol=1e-6)
    assert np.allclose(probs.sum(axis=1), 1.0)


def test_lora_classifier_trains_head_and_adapters_and_loads_from_its_adapter(tmp_path):
    from tinyllm.checkpoint import save_model
    tokenizer = CharTokenizer.from_text("abcdefghij")
    base = GPT(GPTConfig(**{**TINY, "vocab_size": 10}))
    save_model(tmp_path / "base", base, tokenizer)
    model = GPTClassifier.from_gpt(base, 2, ["high", "low"])
    apply_lora(model, rank=2, alpha=4, trainable=("classifier",))
    train_classifier(model, tokenizer, toy_task(20), [], FinetuneConfig(epochs=1, batch_size=10), progress=False)
    assert model.classifier.weight.grad is None and model.classifier.weight.requires_grad
    save_adapter(tmp_path / "run", model, base=tmp_path / "base",
                 extra_config={"task": "classify", "labels": model.label_names})
    texts = [text for _, text in toy_task(10, seed=3)]
    expected = predict(model, tokenizer, texts)[1]

    loaded, _, config = load_finetuned(tmp_path / "run")
    np.testing.assert_allclose(predict(loaded, tokenizer, texts)[1], expected, rtol=1e-6)
    merge_lora(loaded)
    np.testing.assert_allclose(predict(loaded, tokenizer, texts)[1], expected, rtol=1e-5)
    assert config["task"] == "classify"


def test_unknown_label_at_training_is_a_clear_error():
    tokenizer = CharTokenizer.from_text("abcdefghij")
    model = GPTClassifier.from_gpt(GPT(GPTConfig(**{**TINY, "vocab_size": 10})), 2, ["high", "low"])
    with pytest.raises(ValueError, match=r"labels \['medium'\] are not among"):
        train_classifier(model, tokenizer, [("medium", "abc")], [], progress=False)


# ---------------------------------------------------------------------------------------------- command line

@pytest.fixture
def tiny_base(tmp_path):
    """A saved tiny 'pretrained' run (random weights) with a character tokenizer."""
    from tinyllm.checkpoint import save_model
    tokenizer = CharTokenizer.from_text("abcdefghij")
    save_model(tmp_path / "base", GPT(GPTConfig(**{**TINY, "vocab_size": 10})), tokenizer)
    data = tmp_path / "toy.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for label, text in toy_task(60)))
    return tmp_path / "base", data


def test_cli_finetune_classify_then_evaluate(tiny_base, tmp_path, capsys):
    from tinyllm.cli import main
    base, data = tiny_base
    out = tmp_path / "run"
    code = main(["finetune", "classify", "--ckpt", str(base), "--data", str(data), "--out", str(out),
                 "--epochs", "2", "--lr", "1e-2", "--freeze-except", "1"])
    printed = capsys.readouterr().out
    assert code == 0 and "test set: accuracy" in printed and "confusion matrix" in printed
    assert main(["evaluate", "--ckpt", str(out), "--json"]) == 0
    import json
    report = json.loads(capsys.readouterr().out)
    from tinyllm.checkpoint import load_config
    assert report["accuracy"] == load_config(out)["results"]["accuracy"], "evaluate must score the run's own test split"
    assert load_config(out)["task"] == "classify" and report["labels"] == ["high", "low"]


def test_cli_lora_run_keeps_adapter_and_merged_weights(tiny_base, tmp_path, capsys):
    from tinyllm.cli import main
    base, data = tiny_base
    out = tmp_path / "lora"
    assert main(["finetune", "classify", "--ckpt", str(base), "--data", str(data), "--out", str(out),
                 "--epochs", "1", "--lora-rank", "2"]) == 0
    assert (out / "adapter.safetensors").exists() and (out / "model.safetensors").exists()
    capsys.readouterr()
    main(["evaluate", "--ckpt", str(out), "--json"])
    merged = capsys.readouterr().out
    main(["evaluate", "--ckpt", str(out), "--json", "--adapter"])
    assert capsys.readouterr().out == merged, "merged weights and base + adapter must score the same"


@pytest.mark.parametrize("flags, message", [
    (["--lora-rank", "-1"], "argument --lora-rank: expected an integer >= 0"),
    (["--lora-rank", "2", "--lora-targets", "attn.qvk"], "match no Linear layer"),
])
def test_cli_bad_lora_flags_are_clear_errors(tiny_base, tmp_path, capsys, flags, message):
    from tinyllm.cli import main
    base, data = tiny_base
    code = main(["finetune", "classify", "--ckpt", str(base), "--data", str(data), "--out", str(tmp_path / "x"), *flags])
    assert code == 2 and message in capsys.readouterr().err


def test_epoch_batches_cover_every_example_once_and_bucketing_cuts_padding():
    from tinyllm.finetune.loop import epoch_batches
    lengths = np.random.default_rng(0).integers(1, 100, size=203)
    plain = epoch_batches(np.random.default_rng(1), 203, 8)
    bucketed = epoch_batches(np.random.default_rng(1), 203, 8, lengths, bucket=8)
    for batches in (plain, bucketed):
        assert sorted(np.concatenate(batches).tolist()) == list(range(203))
    padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches)
    assert padded(bucketed) < 0.8 * padded(plain), "similar lengths together must mean less padding"


@pytest.mark.parametrize("command, epochs, batch_size", [("classify", 5, 8), ("instruct", 3, 8)])
def test_finetune_flags_are_generated_from_the_config_fields(command, epochs, batch_size):
    """Every ``flags.option`` field of FinetuneConfig is a flag of ``finetune classify|instruct``
    with the field's default (epochs and batch size: the command's), and the parsed flags build the
    config the loop runs with."""
    import dataclasses
    from tinyllm.cli import build_parser
    from tinyllm.cli.finetune import _finetune_config
    parser = build_parser()
    args = parser.parse_args(["finetune", command])
    options = [f for f in dataclasses.fields(FinetuneConfig) if "help" in f.metadata]
    assert len(options) >= 7
    for f in options:
        expected = {"epochs": epochs, "batch_size": batch_size}.get(f.name, f.default)
        assert getattr(args, f.name) == expected, f.name
    config = _finetune_config(parser.parse_args(["finetune", command, "--warmup", "3",
                                                 "--seed", "7", "--lr", "1e-3"]))
    assert (config.warmup, config.seed, config.lr, config.min_lr) == (3, 7, 1e-3, 1e-4)
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", command, "--bucket", "-1"])
