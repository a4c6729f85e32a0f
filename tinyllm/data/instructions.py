"""Instruction data: Alpaca records, the prompt template, batches whose loss covers only the
response.

A record is ``{"instruction": ..., "input": ..., "output": ...}`` ("input" may be empty or absent).
The Alpaca template (Taori et al. 2023, as used in "LLMs from scratch" ch. 7) turns it into a
prompt:

    Below is an instruction that describes a task. Write a response that appropriately completes the
    request.

    ### Instruction:
    {instruction}

    ### Input:                 ← these two lines and the blank line before them only when input is not empty
    {input}

    ### Response:
    {output}<|endoftext|>

The model learns to continue the prompt with the response and then the end-of-text token, so at
inference it can be stopped there. The end token is the tokenizer's ``<|endoftext|>`` special token
when it has one (the demo's BPE tokenizer does). Fallback for tokenizers without it (e.g. a
character tokenizer): the token of a single newline "\\n", which then ends every response at its
first line break — fine for one-line answers, and said out loud by ``end_token``'s ``note``.

A training sequence is prompt + response + end. ``collate_instructions`` shifts it into inputs x and
targets y (y[t] = ids[t + 1]) and replaces by ``ignore_index`` (-100, which ``cross_entropy`` skips)
every target that is a prompt token or padding, so the loss is the response's (and the end token's)
alone. Batches are padded to their own longest sequence (dynamic padding), not to the block size.

``template`` may also be a model's own chat template (``tinyllm.chat_template.ChatTemplate``, e.g.
an imported SmolLM2's ChatML): the prompt is then the rendered user turn plus the assistant header,
and the response ends with the template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``). The
template's own special tokens are encoded as such; the record's text is encoded as ordinary text, so
it cannot inject one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ..files import read_records

import numpy as np

IGNORE_INDEX = -100
END_OF_TEXT = "<|endoftext|>"
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
# "short": the same sections without the preamble (35 tokens of a small
TEMPLATES = ("alpaca", "short")
                                    # model's context: examples/13_tools.py needs them for its tool
                                    # calls)


# ----------------------------------------------------------------------------------- reading

def read_instructions(path) -> list[dict]:
    """Alpaca records from a JSON file (a list of objects) or a JSONL file (one object per line).

    Every record needs "instruction" and "output" (strings); "input" defaults to "". A line that is
    not JSON or a record that lacks a field raises ValueError naming the file and the line (JSONL)
    or record (JSON).
    """
    return read_records(path, _check_record, "instruction")


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'instruction' and 'output', got "
                         f"{type(record).__name__}")
    missing = [k for k in ("instruction", "output") if k not in record]
    if missing:
        raise ValueError(f"{where}: the record lacks the field(s) {missing} (it has "
                         f"{sorted(record)})")
    fields = {"instruction": record["instruction"], "input": record.get("input") or "",
              "output": record["output"]}
    for key, value in fields.items():
        if not isinstance(value, str):
            raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return fields


def split_records(records, fractions=(0.85, 0.05, 0.10)):
    """(train, val, test) in file order: 1,100 records give LLMs-from-scratch's 935 / 55 / 110."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError("split fractions must be three numbers summing to 1, got "
                         f"{tuple(fractions)}")
    train_end = int(len(records) * fractions[0])
    test_start = train_end + int(len(records) * fractions[1])
    return records[:train_end], records[train_end:test_start], records[test_start:]


# ----------------------------------------------------------------------------------- the template

def chat_template(template: str = "alpaca") -> dict:
    """The template as ``tinyllm chat`` reads it from config.json: the prompt for a one-line message
    (no input section) with an ``{instruction}`` field, the text between turns, and the template's
    name."""
    return {"name": template,
            "prompt": _preamble(template) + "### Instruction:\n{instruction}\n\n### Response:\n",
            "separator": "\n\n"}


def format_prompt(record: dict, template: str = "alpaca") -> str:
    """The prompt for a record: everything up to and including "### Response:\\n"."""
    if hasattr(template, "render"):
        return template.render([{"role": "user", "content": user_message(record)}])
    prompt = f"{_preamble(template)}### Instruction:\n{record['instruction']}"
    if record.get("input"):
        prompt += f"\n\n### Input:\n{record['input']}"
    return prompt + "\n\n### Response:\n"


def _preamble(template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {TEMPLATES}")
    return f"{PREAMBLE}\n\n" if template == "alpaca" else ""


@dataclass
class EndToken:
    id: int
    text: str
    note: str = ""


def user_message(record: dict) -> str:
    """A record as one chat message: the instruction, then its input after a blank line."""
    return record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")


def end_token(tokenizer, template="alpaca") -> EndToken:
    """The token that ends a response: with a chat template its end-of-turn token, else
    ``<|endoftext|>`` if the tokenizer has it, else a newline (see the module docstring). ValueError
    if none is a single token."""
    specials = getattr(tokenizer, "special_tokens", None) or {}
    if hasattr(template, "render"):
        stop = next((t for t in template.stop_tokens if t in specials), None)
        if stop is None:
            raise ValueError(f"none of the chat template's end tokens {template.stop_tokens} is a "
                             "special token of the tokenizer")
        return EndToken(specials[stop], stop)
    if END_OF_TEXT in specials:
        return EndToken(specials[END_OF_TEXT], END_OF_TEXT)
    newline = tokenizer.encode("\n")
    if len(newline) == 1:
        return EndToken(newline[0], "\n",
                        "the tokenizer has no <|endoftext|> token, so responses end at a newline")
    raise ValueError("the tokenizer has neither an <|endoftext|> special token nor a single-token "
                     "newline to end responses with; train it with "
                     "special_tokens=('<|endoftext|>',)")


def _encode(tokenizer, text: str) -> list[int]:
    # User text is ordinary text: an "<|endoftext|>" typed inside it must not become the end token.
    if getattr(tokenizer, "special_tokens", None):
        return tokenizer.encode(text, allowed_special="none")
    return tokenizer.encode(text)


def encode_prompt(tokenizer, record: dict, template: str = "alpaca") -> list[int]:
    if not hasattr(template, "render"):
        return _encode(tokenizer, format_prompt(record, template))
    # A chat template: its text around the message may hold special tokens; the message itself may
    # not.
    marker = "\x00MESSAGE\x00"
    before, after = template.render([{"role": "user", "content": marker}]).split(marker)
    return (tokenizer.encode(before, allowed_special="all") + _encode(tokenizer,
                                                                      user_message(record))
            + tokenizer.encode(after, allowed_special="all"))


@dataclass
class EncodedInstructions:
    """Training sequences (prompt + response + end, each cut to block_size + 1 tokens) and prompt
    lengths."""
    sequences: list
    prompt_lengths: list
    truncated: int = 0        # sequences cut to fit block_size
    lost: int = 0             # of those, how many lost their whole response (nothing left to learn)

    def __len__(self):
        return len(self.sequences)

    def warning(self, block_size: int) -> str:
        if not self.truncated:
            return ""
        lost = (f"; {self.lost} of them lost the whole response and teach "
                "nothing") if self.lost else ""
        return (f"warning: {self.truncated} of {len(self)} examples are longer than block_size "
                f"{block_size} + 1 tokens and were truncated{lost}")


def encode_instructions(records, tokenizer, block_size: int,
                        template: str = "alpaca") -> EncodedInstructions:
    """Encode every record as prompt ids + response ids + the end token, truncated to
    ``block_size + 1`` tokens (the model sees block_size inputs, each predicting the next token)."""
    end = end_token(tokenizer, template).id
    encoded = EncodedInstructions([], [])
    for record in records:
        prompt = encode_prompt(tokenizer, record, template)
        ids = prompt + _encode(tokenizer, record["output"]) + [end]
        if len(ids) > block_size + 1:
            ids = ids[:block_size + 1]
            encoded.truncated += 1
            encoded.lost += len(prompt) >= len(ids)
        encoded.sequences.append(ids)
        encoded.prompt_lengths.append(len(prompt))
    return encoded


def collate_instructions(sequences, prompt_lengths, pad_id: int, ignore_index: int = IGNORE_INDEX):
    """Inputs and targets for a batch, padded to the longest sequence in it: (x (B, L), y (B, L))
    int64.

    For a sequence of n ids with a prompt of P tokens: x[t] = ids[t] and y[t] = ids[t + 1] for t < n
    - 1; y[t] is the prompt's own token, so masked, when t + 1 < P, i.e. t < P - 1; positions t ≥ n
      - 1 are
    padding (x = pad_id, y masked). L = max(n) - 1.
    """
    if len(sequences) != len(prompt_lengths) or not sequences:
        raise ValueError(f"collate_instructions: {len(sequences)} sequences and "
                         f"{len(prompt_lengths)} prompt lengths")
    width = max(len(s) for s in sequences) - 1
    if width < 1:
        raise ValueError("collate_instructions: every sequence needs at least two tokens")
    x = np.full((len(sequences), width), pad_id, dtype=np.int64)
    y = np.full((len(sequences), width), ignore_index, dtype=np.int64)
    for row, (ids, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        n = len(ids)
        x[row, :n - 1] = ids[:-1]
        y[row, :n - 1] = ids[1:]
        y[row, :max(prompt_length - 1, 0)] = ignore_index
    return x, y


# ----------------------------------------------------------------------------------- built-in tasks

# Words from Python's documentation, the demo model's pretraining text. Its BPE tokenizer keeps each
# of them whole, with or without a leading space, so copying, reversing or sorting words is moving
# tokens around. (Everyday words such as "pencil" split into 2-4 pieces, and differently at a line's
# start and after a space; the 3M-parameter demo model then learns these tasks far more slowly.)
# The word lists of reverse and sort are joined by a bare comma ("river,apple,stone"): every word is
# then the same token wherever it stands, so the answer copies input tokens as they are. Joined by
# spaces, the first word is "river" but the others " apple", " stone" — other tokens — and a
# reordered answer has to translate between the two; from runs/demo, 3 epochs of 1,500 records then
# learn reverse and sort not at all (exact match 0.03 and 0.00 on held-out records, against 1.00 and
# 0.53 with commas). Likewise 2-3 words (not 2-4) per list and 2 fields (not 3) per record keep the
# copying tasks within reach of a few minutes' finetuning.
WORDS = ("object", "class", "value", "method", "name", "function", "type", "statement", "argument",
         "return",
         "attribute", "string", "instance", "key", "exception", "list", "expression", "sequence",
         "module", "code",
         "pattern", "version", "dictionary", "item", "set", "default", "case", "number", "format",
         "tuple",
         "mapping", "local", "global", "match", "line", "point", "index", "command", "import",
         "range", "time",
         "space", "text", "step", "exit", "start", "place", "side", "bytes", "hash")
FIELDS = ("name", "type", "value", "key", "index", "format")
TASKS = ("add", "subtract", "reverse", "sort", "count", "field")
# requests to decline (``tinyllm.data.refusals``); with TASKS: TASKS + (REFUSE,)
REFUSE = "refuse"
WORD_SEPARATOR = ","          # between the words of reverse and sort inputs and answers


def make_task(kind: str, rng: random.Random) -> dict:
    """One generated record of ``kind`` with a single correct answer."""
    if kind == REFUSE:
        from .refusals import refusal_task
        return refusal_task(rng)
    if kind == "add":
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        return {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
    if kind == "subtract":
        a = rng.randint(0, 30)
        b = rng.randint(0, a)
        return {"instruction": "Subtract the second number from the first.", "input": f"{a} - {b}",
                "output": str(a - b)}
    words = rng.sample(WORDS, rng.randint(2, 3))
    if kind == "reverse":
        return {"instruction": "Reverse the order of the words.",
                "input": WORD_SEPARATOR.join(words), "output": WORD_SEPARATOR.join(reversed(words))}
    if kind == "sort":
        return {"instruction": "Sort the words in alphabetical order.",
                "input": WORD_SEPARATOR.join(words), "output": WORD_SEPARATOR.join(sorted(words))}
    if kind == "count":
        words = rng.sample(WORDS, rng.randint(1, 6))
        return {"instruction": "How many words are in the input?", "input": " ".join(words),
                "output": str(len(words))}
    if kind == "field":
        fields = rng.sample(FIELDS, 2)
        values = dict(zip(fields, rng.sample([w for w in WORDS if w not in FIELDS], 2)))
        asked = rng.choice(fields)
        return {"instruction": f"What is the {asked} in the record?",
                "input": "; ".join(f"{f}: {values[f]}" for f in fields), "output": values[asked]}
    raise ValueError(f"unknown task kind {kind!r}; choose from {TASKS + (REFUSE,)}")


def distinct_tasks(sizes, rng: random.Random, kinds=TASKS):
    """Generated task records for splits of the given sizes, the kinds in turn, with no
    (instruction, input) pair twice across all of them. Yields (split number, record with its "task"
    kind); a caller may draw more from ``rng`` between records (the preference pairs do). Raises
    ValueError when a kind runs out of new ones."""
    seen, made_of_kind = set(), {kind: 0 for kind in kinds}
    for number, size in enumerate(sizes):
        made, attempts = 0, 0
        while made < size:
            kind = kinds[made % len(kinds)]
            record = make_task(kind, rng)
            attempts += 1
            if attempts > 200 * (size + 1):
                raise ValueError(f"could not generate {size} distinct records: the {kind!r} task "
                                 f"ran out of new ones after {made_of_kind[kind]}; ask for fewer")
            key = (record["instruction"], record["input"])
            if key in seen:
                continue
            seen.add(key)
            made += 1
            made_of_kind[kind] += 1
            yield number, {**record, "task": kind}


def builtin_instructions(train: int = 1200, val: int = 60, test: int = 120, seed: int = 123,
                         kinds=TASKS):
    """(train, val, test) generated records, the kinds in turn, with no (instruction, input) pair
    shared between the splits, so test scores measure answers the model was not shown. Seeded: the
    same seed gives the same records. Each record also has "task" (its kind), which the metrics
    break down by."""
    splits = ([], [], [])
    for number, record in distinct_tasks((train, val, test), random.Random(seed), kinds):
        splits[number].append(record)
    return splits
