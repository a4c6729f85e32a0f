"""The command line as a new user meets it: Ctrl-C keeps the run and ``--resume`` continues it exactly,
nonsense flags are refused before any work or any file, bad input gives a message and never a traceback,
and ``--help``, ``--version`` and chat's ``/help`` read well.

Where the point is what a user sees in the terminal, the CLI runs in a subprocess
(``python -m tinyllm``); elsewhere ``main()`` runs in-process, which is faster and fails the same way.
"""

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinyllm.cli import build_parser, main
from tinyllm.interrupt import StopRequests
from tinyllm.safetensors import load_metadata

ROOT = Path(__file__).parents[1]
TINY = ["--tokenizer", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "16",
        "--batch-size", "4", "--eval-iters", "2", "--sample-tokens", "0", "--log-interval", "100"]
STEPS = ["--steps", "12", "--eval-interval", "8"]

# Runs `tinyllm ARGS` with a real Ctrl-C (SIGINT to itself) in the middle of the CTRL_C_CALL-th call of
# CTRL_C_IN ("module:function", e.g. each step's forward and backward pass) and, with SECOND_CTRL_C, another
# one while the checkpoint after it is being written (between the optimizer state and the weights).
INTERRUPTED_RUN = """
import importlib, os, signal, sys
import tinyllm.train as train
from tinyllm.cli import main
module_name, name = os.environ["CTRL_C_IN"].split(":")
module, ctrl_c_call, second = importlib.import_module(module_name), int(os.environ["CTRL_C_CALL"]), "SECOND_CTRL_C" in os.environ
calls, step_function, save_model = 0, getattr(module, name), train.save_model

def step_function_then_ctrl_c(*args, **kwargs):
    global calls
    calls += 1
    if calls == ctrl_c_call:
        os.kill(os.getpid(), signal.SIGINT)
    return step_function(*args, **kwargs)

def ctrl_c_between_the_files(*args, **kwargs):
    if second and calls >= ctrl_c_call:
        os.kill(os.getpid(), signal.SIGINT)
    return save_model(*args, **kwargs)

setattr(module, name, step_function_then_ctrl_c)
train.save_model = ctrl_c_between_the_files
sys.exit(main(sys.argv[1:]))
"""


def run_cli(*args, script=None, env=None, cwd=None, stdin=None):
    """``python -m tinyllm ARGS`` (or ``python -c SCRIPT ARGS``) as a user runs it, from this checkout."""
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "tinyllm"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=environment,
                          cwd=cwd, input=stdin, timeout=300)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    words = "the cat sat on a mat and the dog ran far away from home to see the sun".split()
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(" ".join(words[(i * 7) % len(words)] for i in range(3000)))
    return path


@pytest.fixture(scope="module")
def finished_run(text_file, tmp_path_factory):
    """A 12-step run without interruption: the reference for resumed runs."""
    out = tmp_path_factory.mktemp("runs") / "whole"
    assert main(["pretrain", "--data", str(text_file), *TINY, *STEPS, "--out", str(out)]) == 0
    return out


def logged(run_dir):
    """Everything a run logged but the timings: (kind, step, loss values) per record."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss"), r.get("val_loss"), r.get("train_loss")) for r in records]


# ---------------------------------------------------------------------------------------- Ctrl-C and --resume

@pytest.mark.parametrize("second_ctrl_c", [False, True], ids=["ctrl-c", "ctrl-c-again-while-saving"])
def test_ctrl_c_saves_the_step_and_resume_continues_exactly(text_file, finished_run, tmp_path, capsys,
                                                            second_ctrl_c):
    out = tmp_path / "run"
    flags = ["pretrain", "--data", text_file, *TINY, *STEPS, "--out", out]
    ctrl_c = {"CTRL_C_IN": "tinyllm.train:forward_backward", "CTRL_C_CALL": "5"}
    stopped = run_cli(*flags, script=INTERRUPTED_RUN, env={**ctrl_c, **({"SECOND_CTRL_C": "1"} if second_ctrl_c else {})})

    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    if not second_ctrl_c:
        assert f"interrupted after step 5 of 12: checkpoint saved in {out}/" in stopped.stderr
    # The checkpoint is whole (weights and optimizer state of the same step) even when a second Ctrl-C
    # came between writing its two files, and it is step 5's, although Ctrl-C came in the middle of step 5.
    assert load_metadata(out / "model.safetensors")["step"] == "5"
    assert json.loads(load_metadata(out / "train_state.safetensors")["state"])["step"] == 5

    assert main([str(f) for f in flags] + ["--resume"]) == 0
    assert "resuming from step 5 of 12" in capsys.readouterr().err
    assert logged(out) == logged(finished_run), "the resumed run must repeat the uninterrupted one exactly"


def test_ctrl_c_from_outside_at_any_moment_leaves_a_whole_checkpoint(text_file, tmp_path):
    out = tmp_path / "long"
    command = [sys.executable, "-m", "tinyllm", "pretrain", "--data", str(text_file), *TINY, "--steps", "100000",
               "--out", str(out)]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    log, deadline = out / "log.jsonl", time.time() + 120
    while not (log.exists() and '"kind": "train"' in log.read_text()):     # wait for its first step
        assert time.time() < deadline and run.poll() is None, "the run did not start training"
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)                # as Ctrl-C in a terminal does, at whatever point it is
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    step = int(load_metadata(out / "model.safetensors")["step"])
    assert f"interrupted after step {step} of 100000: checkpoint saved in {out}/" in stderr
    assert json.loads(load_metadata(out / "train_state.safetensors")["state"])["step"] == step
    trained = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert trained[-1]["step"] == step, "the checkpoint is of the last step the log shows"


def test_ctrl_c_while_finetuning_keeps_the_model_trained_so_far(finished_run, tmp_path, capsys):
    data = tmp_path / "labels.tsv"
    words = "the cat sat on a mat and dog ran far away from home to see sun".split()   # the run's characters
    data.write_text("".join(f"{'cat' if i % 2 else 'dog'}\t{'the cat sat' if i % 2 else 'a dog ran'} "
                            f"{words[i % len(words)]}\n" for i in range(40)))
    out = tmp_path / "classifier"
    stopped = run_cli("finetune", "classify", "--ckpt", finished_run, "--data", data, "--epochs", "3",
                      "--batch-size", "4", "--out", out, script=INTERRUPTED_RUN,
                      env={"CTRL_C_IN": "tinyllm.finetune.loop:data_parallel_backward", "CTRL_C_CALL": "2"})

    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr
    assert f"interrupted after step 2 of 21: the model as trained so far is saved in {out}/" in stopped.stderr
    assert main(["evaluate", "--ckpt", str(out), "--json"]) == 0, "the saved run loads and scores"
    assert "accuracy" in json.loads(capsys.readouterr().out)


def test_ctrl_c_is_a_request_then_a_stop_and_waits_for_a_save():
    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)                          # the handler runs in the main thread, between bytecodes

    before = signal.getsignal(signal.SIGINT)
    with StopRequests() as stop:
        ctrl_c()
        assert stop.requested, "the first Ctrl-C only asks the loop to stop"
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()                              # the second stops at once
    with StopRequests() as stop:
        written = []
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                ctrl_c()
                ctrl_c()
                written.append("the whole checkpoint")
        assert written, "Ctrl-C during a save waits until the save is done"
    assert signal.getsignal(signal.SIGINT) is before


def test_resume_says_why_there_is_nothing_to_resume(tmp_path, capsys):
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "typo"), *TINY]) == 2
    assert "cannot resume: there is no run directory" in capsys.readouterr().err
    started = tmp_path / "started"
    started.mkdir()
    (started / "log.jsonl").write_text('{"kind": "eval", "step": 0, "val_loss": 3.0}\n')
    assert main(["pretrain", "--resume", "--out", str(started), *TINY]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and "stopped before its first checkpoint" in err


# ---------------------------------------------------------------------------------------- refused flags

def test_nonsense_steps_are_refused_without_a_traceback(tmp_path):
    for steps in ("-1", "0"):
        result = run_cli("pretrain", "--steps", steps, "--out", tmp_path / "r", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"argument --steps: expected an integer >= 1, got '{steps}'" in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing is written"


@pytest.mark.parametrize("command, flag, value, expected", [
    ("pretrain", "--batch-size", "0", "expected an integer >= 1"),
    ("pretrain", "--context", "-8", "expected an integer >= 1"),
    ("pretrain", "--lr", "-0.001", "expected a number > 0"),
    ("pretrain", "--lr", "nan", "expected a number > 0"),
    ("pretrain", "--dropout", "1.5", "expected a number in [0, 1)"),
    ("pretrain", "--val-fraction", "1", "expected a fraction between 0 and 1"),
    ("pretrain", "--warmup", "-5", "expected an integer >= 0"),
    ("pretrain", "--eval-interval", "0", "expected an integer >= 1"),
    ("demo", "--steps", "0", "expected an integer >= 1"),
    ("finetune instruct", "--epochs", "0", "expected an integer >= 1"),
    ("finetune classify", "--split", "0.7,0.7,0.2", "expected three comma-separated fractions summing to 1"),
    ("align dpo", "--beta", "0", "expected a number > 0"),
    ("align ppo", "--gamma", "1.5", "expected a number in [0, 1]"),
    ("generate", "--top-p", "1.5", "expected a probability mass in (0, 1]"),
    ("generate", "--temperature", "-1", "expected a number >= 0"),
])
def test_nonsense_numbers_are_refused_by_the_parser(tmp_path, capsys, command, flag, value, expected):
    out = tmp_path / "out"
    where = ["--ckpt", str(tmp_path)] if command == "generate" else ["--out", str(out)]
    assert main([*command.split(), flag, value, *where]) == 2
    assert f"argument {flag}: {expected}" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_model_shape_is_refused_before_any_work_or_file(tmp_path):
    out = tmp_path / "runs" / "shape"
    result = run_cli("pretrain", "--n-embd", "100", "--n-head", "3", "--out", out, cwd=tmp_path)

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "n_embd=100 must be divisible by n_head=3" in result.stderr
    assert "tokenizer" not in result.stdout, "refused before a tokenizer is trained"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_run_refused_after_tokenizing_leaves_no_folder(text_file, tmp_path, capsys):
    out = tmp_path / "short"               # the data is too short for the context: found only once tokenized
    assert main(["pretrain", "--data", str(text_file), *TINY, "--context", "4000", "--out", str(out)]) == 2
    assert "one training window needs 4001" in capsys.readouterr().err
    assert not out.exists(), "the token cache made on the way is removed with the folder it made"


# ---------------------------------------------------------------------------------------- tokenizers

def test_tokenizer_flags_explain_what_they_take(finished_run, tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    for args, expected in [   # in a subprocess: what the user sees
        (["pretrain", "--tokenizer", "bpee", "--out", tmp_path / "out"],
         "expected 'bpe' or 'wordpiece' (train one), 'char', a tokenizer .json file or a run directory holding one; "
         "there is no file or directory 'bpee'"),
        (["tokenizer", "encode", "--tokenizer", empty, "--text", "hi"],
         f"'{empty}' is a directory without a tokenizer.json"),
    ]:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert expected in result.stderr
    for args, expected in [   # in-process: the same parser, faster
        (["pretrain", "--tokenizer", str(empty), "--out", str(tmp_path / "out")], "without a tokenizer.json"),
        (["tokenizer", "encode", "--tokenizer", "bpee", "--text", "hi"], "there is no file or directory 'bpee'"),
    ]:
        assert main(args) == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # A run directory is taken as its tokenizer.json.
    assert main(["tokenizer", "encode", "--tokenizer", str(finished_run), "--text", "the cat"]) == 0
    assert len(capsys.readouterr().out.split()) == len("the cat")


# ---------------------------------------------------------------------------------------- rough edges

def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tinyllm {__import__('tinyllm').__version__}"


def _all_parsers(parser, name="tinyllm"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


def test_every_help_has_a_description_and_states_each_default_once():
    for name, parser in _all_parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        assert parser.description, f"`{name} --help` has no description"
        assert "(default: None)" not in text, name
        for action in parser._actions:
            if action.help and action.default not in (None, False, "") and action.option_strings:
                line = parser._get_formatter()._format_action(action)
                assert " ".join(line.split()).count("default") <= 1, f"{name} {action.option_strings[0]}: {line}"
        required = [a for a in parser._actions if a.required and a.option_strings]
        for action in required:
            assert "default" not in " ".join(parser._get_formatter()._format_action(action).split()), name


def test_generate_checks_its_flags_before_printing_the_prompt(finished_run, capsys):
    assert main(["generate", "--ckpt", str(finished_run), "--prompt", "the cat", "--top-k", "0",
                 "--top-p", "0.5", "--repetition-penalty", "1.2", "--max-new-tokens", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["generate", "--ckpt", str(finished_run), "--prompt", "the cat", "--top-p", "2"]) == 2
    assert capsys.readouterr().out == ""


def test_chat_answers_slash_commands_itself(finished_run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/help\n/undo last\n/quit\n"))
    assert main(["chat", "--ckpt", str(finished_run), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "", "nothing went to the model"
    assert "/reset forgets the conversation" in captured.err and "unknown command '/undo'" in captured.err


@pytest.mark.parametrize("example", ["01_autograd.py", "02_tokenizer.py"])
def test_examples_honour_help(example):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example), "--help"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stdout + result.stderr
