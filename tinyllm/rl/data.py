"""Preference data: a prompt and two responses, one preferred ("chosen") over the other
("rejected").

Files tinyllm reads (``read_preferences``):

    JSONL, one pair per line      {"prompt": "...", "chosen": "...", "rejected": "..."}
    JSON, a list of records       the same, or Alpaca-style {"instruction", "input", "chosen", "rejected"}
                                  (e.g. LLMs-from-scratch's preference-data.json): the prompt is
                                  then built with the Alpaca template of
                                  ``tinyllm.data.instructions``

A line or record that is not JSON, lacks a field or has a non-string field is an error naming the
file and the line (JSONL) or record (JSON). ``builtin_preferences`` generates pairs offline from the
built-in instruction tasks: chosen = the correct answer, rejected = a wrong answer (off by a little,
words in the wrong order, another field's value) or a badly formatted one (the answer buried in
chatter).

``encode_preferences`` turns text pairs into token ids: prompt ids, and each response followed by
the end token (what an instruction-tuned model writes last), cut to the model's block size — the
prompt loses tokens from its start first, then the longer response from its end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..files import read_records
from ..data.instructions import (TASKS, WORD_SEPARATOR, WORDS, distinct_tasks, end_token,
                                 format_prompt)

REQUIRED = ("chosen", "rejected")


# ----------------------------------------------------------------------------------- reading

def read_preferences(path, template: str = "alpaca") -> list[dict]:
    """Records {"prompt", "chosen", "rejected"} (plus any other fields of the file) from a JSONL or
    JSON file."""
    return read_records(path, lambda record, where: preference_record(record, where, template),
                        "preference")


def read_prompts(path, template: str = "alpaca") -> list[dict]:
    """Records with a "prompt" (given, or built from "instruction"/"input") from a JSONL or JSON
    file — the prompts of a preference or Alpaca file, for PPO's rollouts. Other fields (e.g.
    "output") are kept."""
    return read_records(path, lambda record, where: prompt_record(record, where, template),
                        "prompt")


def prompt_record(record, where: str = "record", template: str = "alpaca") -> dict:
    """A record with a "prompt": given, or built from instruction/input with the template."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'prompt' (or 'instruction'), got "
                         f"{type(record).__name__}")
    if "instruction" in record:
        for key in ("instruction", "input"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise ValueError(f"{where}: field {key!r} must be a string, got "
                                 f"{type(record[key]).__name__}")
        prompt = format_prompt({"instruction": record["instruction"],
                                "input": record.get("input") or ""}, template)
        return {**record, "prompt": prompt}
    if "prompt" not in record:
        raise ValueError(f"{where}: the record lacks the field 'prompt' (or 'instruction') (it has "
                         f"{sorted(record)})")
    if not isinstance(record["prompt"], str):
        raise ValueError(f"{where}: field 'prompt' must be a string, got "
                         f"{type(record['prompt']).__name__}")
    return dict(record)


def preference_record(record, where: str = "record", template: str = "alpaca") -> dict:
    """A checked preference record with a "prompt" (given, or built from instruction/input with the
    template)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'prompt', 'chosen' and 'rejected', "
                         f"got {type(record).__name__}")
    needed = ("instruction",) if "instruction" in record else ("prompt",)
    missing = [k for k in needed + REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{where}: the record lacks the field(s) {missing} (it has "
                         f"{sorted(record)}); a preference record needs 'prompt' (or 'instruction' "
                         "and optional 'input'), 'chosen' and 'rejected'")
    for key in REQUIRED:
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: field {key!r} must be a string, got "
                             f"{type(record[key]).__name__}")
    return prompt_record(record, where, template)


def split_pairs(records, fractions=(0.85, 0.05, 0.10)):
    """(train, val, test) in file order, as ``split_records`` does for instruction data."""
    from ..data.instructions import split_records
    return split_records(records, fractions)


# ----------------------------------------------------------------------------------- built-in pairs

def _wrong_answer(record: dict, kind: str, rng: random.Random) -> str:
    """A plausible but wrong response to a generated task."""
    out = record["output"]
    if kind in ("add", "subtract", "count"):
        value = int(out)
        wrong = value + rng.choice([-3, -2, -1, 1, 2, 3])
        return str(wrong if wrong >= 0 else value + rng.randint(1, 3))
    if kind in ("reverse", "sort"):
        words = record["input"].split(WORD_SEPARATOR)
        if WORD_SEPARATOR.join(words) != out:
            return WORD_SEPARATOR.join(words)                 # left as it was: the task not done
        while WORD_SEPARATOR.join(words) == out:
            rng.shuffle(words)
        return WORD_SEPARATOR.join(words)
    if kind == "field":
        others = [part.split(": ", 1)[1]
                  for part in record["input"].split("; ") if part.split(": ", 1)[1] != out]
        return rng.choice(others) if others else rng.choice(WORDS)
    raise ValueError(f"unknown task kind {kind!r}")


CHATTER = ("I think the answer is {}, but I am not sure.", "The answer is {} {} {}",
           "{} is what you get, probably.", "Well, {}.", "Answer: {} (this was a hard one!)")


def builtin_preferences(train: int = 600, val: int = 40, test: int = 200, seed: int = 123,
                        kinds=TASKS, format_fraction: float = 0.33):
    """(train, val, test) generated pairs on the built-in instruction tasks, none sharing an
    (instruction, input) with another split. A fraction ``format_fraction`` of the rejected
    responses are the right answer in the wrong format (chatter around it); the rest are wrong
    answers. Records have "prompt" (Alpaca template), "chosen", "rejected", "task" and "flaw"
    ("wrong" or "format")."""
    rng = random.Random(seed)
    splits = ([], [], [])
    for number, record in distinct_tasks((train, val, test), rng, kinds):
        if rng.random() < format_fraction:
            rejected, flaw = rng.choice(CHATTER).format(*[record["output"]] * 3), "format"
        else:
            rejected, flaw = _wrong_answer(record, record["task"], rng), "wrong"
        splits[number].append({"prompt": format_prompt(record), "chosen": record["output"],
                               "rejected": rejected,
                               "instruction": record["instruction"], "input": record["input"],
                               "task": record["task"], "flaw": flaw})
    return splits


# ----------------------------------------------------------------------------------- token ids

def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of user text: a "<|endoftext|>" typed inside it stays text and never becomes the end
    token."""
    if getattr(tokenizer, "special_tokens", None):
        return tokenizer.encode(text, allowed_special="none")
    return tokenizer.encode(text)


@dataclass
class EncodedPairs:
    """Token ids of preference pairs: prompts[i] + chosen[i] / prompts[i] + rejected[i] each fit
    block_size."""
    prompts: list = field(default_factory=list)
    chosen: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    truncated: int = 0

    def __len__(self):
        return len(self.prompts)

    def subset(self, index) -> "EncodedPairs":
        return EncodedPairs([self.prompts[i] for i in index], [self.chosen[i] for i in index],
                            [self.rejected[i] for i in index])


def encode_pair(prompt_ids, chosen_ids, rejected_ids, block_size: int):
    """Cut one pair to fit: the prompt (shared by both responses) loses tokens from its start until
    the longer response fits, keeping at least one; then each response loses tokens from its end.
    Returns (prompt, chosen, rejected, whether anything was cut)."""
    longest = max(len(chosen_ids), len(rejected_ids))
    keep = max(block_size - longest, 1)
    cut = len(prompt_ids) > keep
    prompt_ids = list(prompt_ids)[-keep:] if cut else list(prompt_ids)
    room = block_size - len(prompt_ids)
    cut = cut or longest > room
    return prompt_ids, list(chosen_ids)[:room], list(rejected_ids)[:room], cut


def encode_preferences(records, tokenizer, block_size: int) -> EncodedPairs:
    """Encode text pairs (records with "prompt", "chosen", "rejected") for a model with
    ``block_size``."""
    end = end_token(tokenizer).id
    encoded = EncodedPairs()
    for i, record in enumerate(records):
        prompt = encode_text(tokenizer, record["prompt"])
        if not prompt:
            raise ValueError(f"preference record {i} has an empty prompt; every response needs a "
                             "prompt to follow")
        chosen = encode_text(tokenizer, record["chosen"]) + [end]
        rejected = encode_text(tokenizer, record["rejected"]) + [end]
        prompt, chosen, rejected, cut = encode_pair(prompt, chosen, rejected, block_size)
        encoded.prompts.append(prompt)
        encoded.chosen.append(chosen)
        encoded.rejected.append(rejected)
        encoded.truncated += cut
    return encoded
