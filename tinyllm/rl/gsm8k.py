"""GSM8K (Cobbe et al., 2021): grade-school math word problems with worked solutions, for reasoning
RL.

Each JSONL record has a "question" and an "answer": worked steps, with calculator annotations such
as ``<<16-3-4=9>>``, and the final number after ``####``::

    Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.
    She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.
    #### 18

The worked-steps format: the model is asked to reason step by step and to end with a line
``#### <number>``, the same shape as the references (annotations removed), so a model finetuned on
GSM8K solutions already writes it.

Rewards (``Rollout`` → float, the records carry "task": "gsm8k" so ``tinyllm.rl.tasks`` dispatches
here):

    correct   1 if the completion's answer equals the reference number: the number after its last ``####``,
              or, when there is none, the last number in it. Parsing is tolerant: "$1,234.50",
              "1234.5", "2469/2" and "1,234.50." are all the same number; "50%" is 50.
    format    1 if the completion ended with the end token and its last line is ``#### <number>``.

A model trained from scratch here (a few million parameters on a few MB of text) will not solve
GSM8K: even GPT-2 (124M) solves almost none. These functions make the path run and score correctly;
the same command trains an imported model (``tinyllm import-hf``) that can.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ..files import read_records

INSTRUCTION = ("Solve the math word problem. Reason step by step, then write the final answer on "
               "the last line as #### followed by the number.")
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"(-\s*)?\$?\s*(?:(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?|(\.\d+))(?:\s*/\s*(\d+))?")
_FINAL_LINE = re.compile(r"####\s*\S+")


def read_gsm8k(path) -> list[dict]:
    """GSM8K records as instruction records: "instruction" (the worked-steps request), "input" (the
    question), "output" (the worked solution without annotations, ending "#### N"), "final" (N) and
    "task": "gsm8k"."""
    return read_records(path, _gsm8k_record, "GSM8K")


def _gsm8k_record(row, where: str) -> dict:
    if not (isinstance(row, dict) and isinstance(row.get("question"),
                                                 str) and isinstance(row.get("answer"), str)):
        raise ValueError(f"{where}: expected a GSM8K record {{\"question\", \"answer\"}}")
    final = reference_answer(row["answer"])
    if final is None:
        raise ValueError(f"{where}: the answer has no '#### <number>' line")
    return {"instruction": INSTRUCTION, "input": row["question"],
            "output": worked_steps(row["answer"]), "final": final, "task": "gsm8k"}


def worked_steps(answer: str) -> str:
    """A reference solution without its calculator annotations: the response format the model should
    write."""
    return _ANNOTATION.sub("", answer).strip()


def reference_answer(answer: str) -> str | None:
    """The text after the last ``####`` of a reference solution ("#### 1,234" → "1,234"), or
    None."""
    if "####" not in answer:
        return None
    return answer.rsplit("####", 1)[1].strip() or None


def parse_number(text: str) -> Fraction | None:
    """The first number in ``text`` as an exact fraction: "$1,234.50." → 2469/2, "-3/4" → -3/4; None
    if none."""
    return _value(_NUMBER.search(text))


def last_number(text: str) -> Fraction | None:
    """The last number in ``text`` (see ``parse_number``)."""
    matches = list(_NUMBER.finditer(text))
    return _value(matches[-1]) if matches else None


def _value(match) -> Fraction | None:
    if match is None:
        return None
    sign, whole, decimals, bare_decimals, denominator = match.groups()
    value = Fraction((whole or "0").replace(",", "") + (decimals or bare_decimals or ""))
    if denominator is not None:
        if int(denominator) == 0:
            return None
        value /= int(denominator)
    return -value if sign else value


def predicted_answer(completion: str) -> Fraction | None:
    """The completion's answer: the number after its last ``####``, else its last number."""
    if "####" in completion:
        value = parse_number(completion.rsplit("####", 1)[1])
        if value is not None:
            return value
    return last_number(completion)


def numbers_match(predicted: Fraction | None, reference: Fraction | None) -> bool:
    """Exact equality of the parsed numbers (as fractions, so 0.75 = 3/4 and 18 = 18.00)."""
    return predicted is not None and reference is not None and predicted == reference


def is_correct(record: dict, completion: str) -> bool:
    return numbers_match(predicted_answer(completion), parse_number(record["final"]))


def has_final_line(completion: str) -> bool:
    """Is the completion's last line ``#### <number>``?"""
    lines = completion.strip().splitlines()
    return bool(lines) and bool(_FINAL_LINE.fullmatch(lines[-1].strip())) and \
        parse_number(lines[-1].split("####", 1)[1]) is not None


def gsm8k_problems(path=None, train_size: int = 300, test_size: int = 100, seed: int = 7,
                   split=(0.9, 0.0, 0.1)):
    """(train, test) GSM8K records: from the official files (fetched with
    ``tinyllm.data.datasets``), or from ``path`` split by ``split``; ``train_size``/``test_size``
    records drawn from each at random (seeded)."""
    import numpy as np
    if path is None:
        from ..data.datasets import fetch
        train, test = read_gsm8k(fetch("gsm8k-train")), read_gsm8k(fetch("gsm8k-test"))
    else:
        from ..data.instructions import split_records
        train, _, test = split_records(read_gsm8k(path), split)
    rng = np.random.default_rng(seed)
    pick = lambda rows, n: [rows[i] for i in np.sort(rng.permutation(len(rows))[:n])]   # noqa: E731
    return pick(train, train_size), pick(test, test_size)
