"""Labelled texts for classification: read them, balance the classes, split them,
or make a built-in task.

File formats (``read_labeled``), one example per line or record:

    .tsv / .txt   label<TAB>text                   the SMS Spam Collection's layout ("ham\\tOk lar...")
    .csv          label,text (quoted as CSV); a first row "label,text" is a header and skipped
    .jsonl        {"label": "spam", "text": "..."}  one JSON object per line
    .json         a list of such objects

An example is a ``(label, text)`` pair of strings. ``balance`` downsamples every class to the size
of the smallest (seeded), as "LLMs from scratch" does for SMS spam (747 spam + 747 of the 4,826
ham), so accuracy is not flattered by always answering the majority class. ``split_examples``
shuffles and cuts 70/10/20.

``builtin_task()`` needs no download: lines of English prose from Python's help topics
(``pydoc_data``) against lines of Python source from the standard library's own modules, labelled
"prose" and "code".
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..files import read_utf8


def _fail(path, line, message):
    raise ValueError(f"{path}, line {line}: {message}")


def read_labeled(path) -> list[tuple[str, str]]:
    """The ``(label, text)`` examples of a TSV, CSV, JSONL or JSON file (see the module docstring).

    Empty lines are skipped; a line that cannot be read raises ValueError naming the file and line.
    Labels and texts are stripped of surrounding whitespace; an empty label or text is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at '{path}'")
    content = read_utf8(path, "data")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(path, content)
    elif suffix == ".json":
        rows = _json_rows(path, content)
    elif suffix == ".csv":
        rows = _csv_rows(path, content)
    else:
        rows = _tsv_rows(path, content)
    examples = []
    for line, label, text in rows:
        label, text = str(label).strip(), str(text).strip()
        if not label:
            _fail(path, line, "the label is empty")
        if not text:
            _fail(path, line, f"the text of this {label!r} example is empty")
        examples.append((label, text))
    if not examples:
        raise ValueError(f"data file '{path}' holds no examples")
    return examples


def _tsv_rows(path, content):
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab:
            _fail(path, number, f"expected 'label<TAB>text' but found no tab in {line[:60]!r}")
        yield number, label, text


def _csv_rows(path, content):
    reader = csv.reader(io.StringIO(content))
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            _fail(path, number,
                  f"expected two columns 'label,text' but found {len(row)}: {row!r}"[:200])
        if number == 1 and [c.strip().lower() for c in row[:2]] == ["label", "text"]:
            continue
        yield number, row[0], ",".join(row[1:]) if len(row) > 2 else row[1]


def _record_fields(path, where, record):
    if not isinstance(record, dict):
        _fail(path, where,
              f"expected a JSON object with 'label' and 'text', got {type(record).__name__}")
    missing = [k for k in ("label", "text") if k not in record]
    if missing:
        _fail(path, where, f"the record lacks the field(s) {missing} (it has {sorted(record)})")
    return record["label"], record["text"]


def _jsonl_rows(path, content):
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(path, number, f"not valid JSON ({e.msg} at column {e.colno})")
        yield (number, *_record_fields(path, number, record))


def _json_rows(path, content):
    try:
        records = json.loads(content)
    except json.JSONDecodeError as e:
        _fail(path, e.lineno, f"not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for i, record in enumerate(records):
        yield (f"record {i}", *_record_fields(path, f"record {i}", record))


def label_names(examples) -> list[str]:
    """The sorted distinct labels; ValueError if there are fewer than two
    (nothing to tell apart)."""
    counts = Counter(label for label, _ in examples)
    if len(counts) < 2:
        only = ", ".join(f"{label!r} ({n} examples)" for label, n in counts.items()) or "none"
        raise ValueError("classification needs at least two classes, but the label column has "
                         f"only one: {only}")
    return sorted(counts)


def balance(examples, seed: int = 123) -> list[tuple[str, str]]:
    """Keep a random subset of every class as large as the smallest class;
    the result is in file order."""
    names = label_names(examples)
    by_label = {
        name: [i for i, (label, _) in enumerate(examples) if label == name] for name in names
    }
    smallest = min(len(rows) for rows in by_label.values())
    rng = np.random.default_rng(seed)
    keep = sorted(i for rows in by_label.values() for i in rng.choice(rows, size=smallest,
                                                                      replace=False).tolist())
    return [examples[i] for i in keep]


def split_examples(examples, fractions=(0.7, 0.1, 0.2), seed: int = 123):
    """(train, val, test): the examples shuffled (seeded)
    and cut at the cumulative ``fractions``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError("split fractions must be three non-negative numbers summing to 1, got "
                         f"{tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    train_end = int(len(shuffled) * fractions[0])
    val_end = train_end + int(len(shuffled) * fractions[1])
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


def class_counts(examples) -> dict[str, int]:
    return dict(sorted(Counter(label for label, _ in examples).items()))


# ------------------------------------------------------------------------------------ built-in task

@functools.lru_cache(maxsize=1)
def _prose_lines() -> tuple[str, ...]:
    """Lines of English paragraphs in Python's help topics: unindented, mostly letters,
    40+ characters."""
    try:
        from ..data.text import builtin_corpus
        text = builtin_corpus()
    except (ImportError, RuntimeError):
        from pydoc_data.topics import topics
        text = "\n\n".join(topics[name] for name in sorted(topics))
    lines = []
    for line in text.splitlines():
        if (len(line) >= 40 and not line[0].isspace() and line[0].isalpha()
                and not set(line) & set("*=+|")):
            letters = sum(c.isalpha() or c == " " for c in line)
            if letters >= 0.85 * len(line):
                lines.append(line.strip())
    return tuple(dict.fromkeys(lines))


@functools.lru_cache(maxsize=1)
def _code_lines() -> tuple[str, ...]:
    """Stripped lines of code (not comments, not docstrings)
    from the standard library's top-level modules."""
    stdlib = Path(os.path.dirname(os.__file__))
    lines = []
    for file in sorted(stdlib.glob("*.py")):
        try:
            source = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        in_string = False
        for line in source.splitlines():
            quotes = line.count('"""') + line.count("'''")
            if in_string or quotes:
                in_string = in_string != (quotes % 2 == 1)    # an odd number of quotes toggles
                continue
            stripped = line.strip()
            if len(stripped) >= 30 and not stripped.startswith("#") and any(c in stripped
                                                                            for c in "=()[]:."):
                lines.append(stripped)
    return tuple(dict.fromkeys(lines))


def builtin_task(per_class: int = 600, seed: int = 123) -> list[tuple[str, str]]:
    """``per_class`` "prose" and ``per_class`` "code" examples (one line each), drawn with ``seed``.

    Prose comes from ``pydoc_data.topics`` (the demo model's pretraining text), code from the
    ``.py`` files in ``os.path.dirname(os.__file__)``; both ship with Python, so the task runs
    offline. Examples are in a seeded random order.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for label, pool in (("prose", _prose_lines()), ("code", _code_lines())):
        if len(pool) < per_class:
            raise ValueError(f"the built-in task has only {len(pool)} {label} lines; ask for "
                             f"per_class <= {len(pool)}")
        examples += [(label, pool[i]) for i in rng.choice(len(pool), size=per_class, replace=False)]
    return [examples[i] for i in rng.permutation(len(examples))]
