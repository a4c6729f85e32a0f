"""Verifiable tasks for GRPO: problems whose answers a program can check, and reward functions that
check them.

The problems are the built-in instruction tasks of ``tinyllm.data.instructions`` (add or subtract
small numbers, count words, reverse or sort words, read a field of a record), in the Alpaca
template, so a model instruction-tuned on them already knows the format and GRPO can sharpen what it
gets right. Any Alpaca file whose "output" is the one right answer works too (``--data``), and so do
GSM8K's word problems (records with
"task": "gsm8k", checked by ``tinyllm.rl.gsm8k``: the number after "####", worked steps before it).

A reward function takes a ``Rollout`` (prompt and completion text, whether it ended with the end
token, the record with the reference "output") and returns a number:

    correctness_reward   1 if the answer is right, else 0. Numeric tasks compare the last integer in the
                         completion with the reference (so "7" and "The answer is 7" both count);
                         others compare the whitespace-normalised, case-folded text.
    format_reward        1 if the completion ended with the end token and is *only* an answer of the right
                         shape (an integer for numeric tasks, words for the others), else 0.

``RewardFunctions`` combines weighted functions into the score function the trainers call, checks
every value is finite (naming the function and the completion when not), and reports each function's
mean: the mean of ``correct`` over sampled completions is the sampling accuracy.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..data.instructions import builtin_instructions
from . import gsm8k
from .rollout import Rollout

TASK_SETS = {"arithmetic": ("add", "subtract"), "add": ("add",), "subtract": ("subtract",),
             "count": ("count",), "words": ("reverse", "sort"), "field": ("field",),
             "all": ("add", "subtract", "reverse", "sort", "count", "field")}
_INTEGER = re.compile(r"-?\d+")
_WORDS = re.compile(r"[A-Za-z]+([ ,][A-Za-z]+)*")


def verifiable_problems(task: str = "arithmetic", train: int = 300, test: int = 100, seed: int = 7):
    """(train, test) generated records of a task set (``TASK_SETS``), no problem in both."""
    if task not in TASK_SETS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_SETS)}")
    train_records, _, test_records = builtin_instructions(train, 0, test, seed, TASK_SETS[task])
    return train_records, test_records


def is_numeric(record: dict) -> bool:
    return bool(_INTEGER.fullmatch(record["output"].strip()))


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!")


def is_correct(record: dict, text: str) -> bool:
    """Does ``text`` answer ``record`` correctly (see the module docstring)?"""
    if record.get("task") == "gsm8k":
        return gsm8k.is_correct(record, text)
    if is_numeric(record):
        numbers = _INTEGER.findall(text)
        return bool(numbers) and int(numbers[-1]) == int(record["output"])
    return _normalise(text) == _normalise(record["output"])


def correctness_reward(rollout: Rollout) -> float:
    return 1.0 if is_correct(rollout.record, rollout.completion) else 0.0


def format_reward(rollout: Rollout) -> float:
    if rollout.record.get("task") == "gsm8k":
        return 1.0 if rollout.finished and gsm8k.has_final_line(rollout.completion) else 0.0
    text = rollout.completion.strip()
    shape = _INTEGER if is_numeric(rollout.record) else _WORDS
    return 1.0 if rollout.finished and shape.fullmatch(text) else 0.0


BUILTIN_REWARDS = {"correct": correctness_reward, "format": format_reward}


class RewardFunctions:
    """A score function for ``train_grpo``/``train_ppo`` from named, weighted reward functions.

    ``functions``: (name, fn, weight) triples, fn(Rollout) → float. ``records[i]`` is the record of
    prompt i; completions are decoded with ``tokenizer`` after dropping the end token ``end_id``.
    Calling it returns (weighted sum (N,), {name: values (N,)}).
    """

    def __init__(self, functions, tokenizer, records, end_id: int):
        self.functions = [(name, fn, float(weight)) for name, fn, weight in functions]
        if not self.functions:
            raise ValueError("RewardFunctions needs at least one reward function")
        self.tokenizer, self.records, self.end_id = tokenizer, records, end_id

    def __call__(self, index, prompt_ids, completions, finished):
        texts = [self.tokenizer.decode([t for t in c if t != self.end_id]) for c in completions]
        total = np.zeros(len(texts))
        parts = {}
        for name, fn, weight in self.functions:
            values = np.empty(len(texts))
            for n, (i, text, done) in enumerate(zip(index, texts, finished)):
                record = self.records[int(i)]
                value = fn(Rollout(record.get("prompt", ""), text, bool(done), record))
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"reward function {name!r} returned {value!r} (not a number) "
                                     f"for the completion {text!r}") from None
                if not math.isfinite(value):
                    raise ValueError(f"reward function {name!r} returned {value} for the "
                                     f"completion {text!r}; rewards must be finite numbers")
                values[n] = value
            parts[name] = values
            total += weight * values
        return total, parts


def task_accuracy(model, tokenizer, records, max_new_tokens: int = 12,
                  batch_size: int = 32) -> dict:
    """Greedy answers to ``records`` (stopped at the end token) checked with ``is_correct``: the
    accuracy, per task kind too when records have "task"."""
    from ..finetune.instruct import generate_responses
    responses = generate_responses(model, tokenizer, records, max_new_tokens, batch_size=batch_size)
    correct = np.array([is_correct(r, text) for r, text in zip(records, responses)], dtype=float)
    result = {"accuracy": float(correct.mean()) if len(correct) else float("nan")}
    kinds = sorted({r["task"] for r in records if "task" in r})
    if len(kinds) > 1:
        for kind in kinds:
            result[f"accuracy_{kind}"] = float(np.mean([c
                                                        for c,
                                                        r in zip(correct, records)
                                                        if r.get("task") == kind]))
    return result
