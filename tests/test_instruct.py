"""Tests of instruction finetuning (tinyllm.finetune.instruct) and its data (tinyllm.data.instructions).

The promises: the template is Alpaca's, word for word; the loss counts exactly the response and end tokens,
nothing of the prompt or the padding; records are read with errors that name file and line; the generated
tasks have one checkable answer and never leak from train to test; and the metrics run end to end.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from tinyllm.data.instructions import (IGNORE_INDEX, builtin_instructions, collate_instructions, encode_instructions,
                                       end_token, format_prompt, read_instructions, split_records)
from tinyllm.finetune import FinetuneConfig, evaluate_instructions, response_perplexity, train_instructions
from tinyllm.finetune.instruct import instruction_loss
from tinyllm.model import GPT, GPTConfig
from tinyllm.tokenizer import BPETokenizer, CharTokenizer

DATA = Path(__file__).parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------- template

def test_alpaca_template_with_and_without_input():
    with_input = format_prompt({"instruction": "Add the numbers.", "input": "2 + 3", "output": "5"})
    assert with_input == ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 + 3\n\n"
                          "### Response:\n")
    without = format_prompt({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert "### Input" not in without and without.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


def test_end_token_is_endoftext_when_the_tokenizer_has_it():
    bpe = BPETokenizer.train("hello world " * 20, 270, special_tokens=("<|endoftext|>",))
    assert end_token(bpe).id == bpe.special_tokens["<|endoftext|>"]
    char = CharTokenizer.from_text("ab\n")
    fallback = end_token(char)
    assert fallback.id == char.encode("\n")[0] and "newline" in fallback.note


# ---------------------------------------------------------------------------------------------- the mask

def test_collate_masks_prompt_and_padding_so_only_response_and_end_count():
    # Sequence 0: prompt [10, 11, 12], response [20, 21], end 99  → 6 ids, 5 input positions.
    # Sequence 1: prompt [10, 11], response [30], end 99           → 4 ids, 3 positions, padded to 5.
    x, y = collate_instructions([[10, 11, 12, 20, 21, 99], [10, 11, 30, 99]], [3, 2], pad_id=0)
    m = IGNORE_INDEX
    np.testing.assert_array_equal(x, [[10, 11, 12, 20, 21], [10, 11, 30, 0, 0]])   # the end id is never an input
    np.testing.assert_array_equal(y, [[m, m, 20, 21, 99],     # position 2 (sees the whole prompt) predicts 20
                                      [m, 30, 99, m, m]])     # the last two are padding
    counted = [(row, t) for row, t in zip(*np.nonzero(y != m))]
    assert counted == [(0, 2), (0, 3), (0, 4), (1, 1), (1, 2)], "exactly the response and end targets count"


def test_loss_ignores_prompt_and_padding_targets():
    model = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    x, y = collate_instructions([[10, 11, 12, 20, 21, 99], [10, 11, 30, 99]], [3, 2], pad_id=0)
    logits = model(x)[0].numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    rows, cols = np.nonzero(y != IGNORE_INDEX)
    by_hand = -logp[rows, cols, y[rows, cols]].mean()
    assert abs(instruction_loss(model, x, y).item() - by_hand) < 1e-5


def test_encode_truncates_to_block_size_plus_one_and_counts():
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#:.\n ")
    record = {"instruction": "x", "input": "", "output": "a long answer"}
    prompt_tokens = len(format_prompt(record))
    encoded = encode_instructions([record, record], tok, block_size=prompt_tokens + 3)
    assert all(len(s) == prompt_tokens + 4 for s in encoded.sequences)
    assert encoded.truncated == 2 and encoded.lost == 0 and "2 of 2 examples" in encoded.warning(prompt_tokens + 3)
    lost = encode_instructions([record], tok, block_size=prompt_tokens - 5)
    assert lost.lost == 1


# ---------------------------------------------------------------------------------------------- reading

def test_reads_json_lists_and_jsonl(tmp_path):
    records = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "output": "e"}]
    (tmp_path / "r.json").write_text(json.dumps(records))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    expected = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "input": "", "output": "e"}]
    assert read_instructions(tmp_path / "r.json") == expected == read_instructions(tmp_path / "r.jsonl")


def test_bad_records_name_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output"\n')
    with pytest.raises(ValueError, match=r"r.jsonl, line 2: not valid JSON"):
        read_instructions(path)
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "input": "x"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl, line 2: the record lacks the field\(s\) \['output'\]"):
        read_instructions(path)
    (tmp_path / "r.json").write_text('[{"instruction": "a", "output": 3}]')
    with pytest.raises(ValueError, match=r"record 0: field 'output' must be a string"):
        read_instructions(tmp_path / "r.json")


@pytest.mark.skipif(not (DATA / "instruction-data.json").exists(), reason="shared data folder absent")
def test_instruction_data_splits_935_55_110():
    records = read_instructions(DATA / "instruction-data.json")
    assert [len(s) for s in split_records(records)] == [935, 55, 110]


# ---------------------------------------------------------------------------------------------- built-in tasks

def test_builtin_tasks_are_seeded_checkable_and_do_not_leak():
    train, val, test = builtin_instructions(60, 12, 30, seed=5)
    assert builtin_instructions(60, 12, 30, seed=5) == (train, val, test)
    keys = lambda split: {(r["instruction"], r["input"]) for r in split}
    assert not keys(train) & keys(test) and not keys(val) & keys(test)
    for record in train:
        if record["task"] == "add":
            a, b = record["input"].split(" + ")
            assert record["output"] == str(int(a) + int(b))
        if record["task"] == "sort":
            assert record["output"] == ",".join(sorted(record["input"].split(",")))
        if record["task"] == "reverse":
            assert record["output"] == ",".join(reversed(record["input"].split(",")))
        if record["task"] == "count":
            assert record["output"] == str(len(record["input"].split()))
    assert {r["task"] for r in test} == {"add", "subtract", "reverse", "sort", "count", "field"}


# ---------------------------------------------------------------------------------------------- end to end

def test_finetuning_lowers_response_loss_and_metrics_run_end_to_end():
    train, _, test = builtin_instructions(24, 0, 6, seed=0, kinds=("field",))
    text = "".join(format_prompt(r) + r["output"] for r in train + test)
    tok = BPETokenizer.train(text, 400, special_tokens=("<|endoftext|>",))
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=72, n_layer=1, n_head=2, n_embd=16), seed=0)
    before = response_perplexity(model, tok, train)["loss"]
    summary = train_instructions(model, tok, train, test, FinetuneConfig(epochs=3, batch_size=8, lr=1e-2, warmup=2),
                                 progress=False)
    after = response_perplexity(model, tok, train)["loss"]
    scores = evaluate_instructions(model, tok, test, max_new_tokens=6)

    assert after < before - 0.5, f"response loss did not fall: {before:.3f} → {after:.3f}"
    assert {"val_loss", "val_ppl"} <= set(summary["history"][-1])
    assert set(scores) >= {"exact_match", "rouge_l", "bleu", "response_ppl", "exact_match_by_task", "responses"}
    assert len(scores["responses"]) == 6


@pytest.mark.parametrize("adapter", [["--lora-rank", "2"], ["--prompt-tuning", "4"]])
def test_cli_finetune_instruct_then_evaluate(tmp_path, capsys, adapter):
    """With LoRA the run keeps merged weights too; with prompt tuning the adapter alone, which every later
    command (evaluate, generate, chat) loads on top of its base."""
    from tinyllm.checkpoint import load_config, save_model
    from tinyllm.cli import main
    train, _, _ = builtin_instructions(30, 0, 0, seed=0)
    tok = BPETokenizer.train("".join(format_prompt(r) + r["output"] for r in train), 400, special_tokens=("<|endoftext|>",))
    save_model(tmp_path / "base", GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=80, n_layer=1, n_head=2, n_embd=16)), tok)
    out = tmp_path / "run"
    code = main(["finetune", "instruct", "--ckpt", str(tmp_path / "base"), "--out", str(out), "--epochs", "1",
                 "--train-size", "24", "--test-size", "6", "--max-new-tokens", "4", *adapter])
    printed = capsys.readouterr().out
    assert code == 0 and "before:" in printed and "after:" in printed
    assert (out / "model.safetensors").exists() == (adapter[0] == "--lora-rank")
    config = load_config(out)
    assert config["task"] == "instruct" and config["template"]["name"] == "alpaca"
    assert config["data"]["refusals"] is True, "the built-in tasks include refusals unless --no-refusals"
    assert "{instruction}" in config["template"]["prompt"], "tinyllm chat reads the prompt with an {instruction} field"
    assert main(["evaluate", "--ckpt", str(out), "--max-new-tokens", "4"]) == 0
    assert "exact match" in capsys.readouterr().out
    assert main(["evaluate", "--ckpt", str(out), "--max-new-tokens", "2", "--split", "train", "--limit", "7", "--json"]) == 0
    assert "refuse" in json.loads(capsys.readouterr().out)["exact_match_by_task"], "evaluate rebuilds the same data"
    assert main(["generate", "--ckpt", str(out), "--prompt", "Add", "--max-new-tokens", "3"]) == 0


def test_asking_for_more_distinct_tasks_than_exist_is_a_clear_error():
    with pytest.raises(ValueError, match=r"the 'add' task ran out of new ones after 961; ask for fewer"):
        builtin_instructions(train=1000, val=0, test=0, kinds=("add",))     # 31 × 31 sums of 0…30
