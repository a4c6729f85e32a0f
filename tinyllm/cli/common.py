"""What every command shares: flag types that refuse nonsense, the help layout, tokenizer choices
and an ``--out`` folder that a failed command does not leave behind.

The flag types run while argparse reads the command line, so ``--steps 0`` or ``--lr -1`` is refused
with a one-line message before any data is read, any model built or any file written::

    tinyllm pretrain: error: argument --steps: expected an integer >= 1, got '0'
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..interrupt import TrainingInterrupted

# the name a run directory keeps its tokenizer under (checkpoint.TOKENIZER)
TOKENIZER_FILE = "tokenizer.json"


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
    return value


def _number(text: str, ok, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """Counts that must be at least one: steps, batch sizes, layers, heads, context, intervals."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """Counts where 0 means "none" or "off": warmup steps, sample tokens, LoRA rank, limits."""
    return _integer(text, 0)


def positive_float(text: str) -> float:
    """Finite numbers > 0: learning rates, temperatures of training rollouts, β of DPO."""
    return _number(text, lambda v: v > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    """Finite numbers >= 0: weight decay, gradient clip (0 = off), penalty weights."""
    return _number(text, lambda v: v >= 0, "a number >= 0")


def probability(text: str) -> float:
    """Dropout rates and decay rates (AdamW's β1, β2; γ, λ of GAE): in [0, 1)."""
    return _number(text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def unit_interval(text: str) -> float:
    """Discount factors (γ, λ of GAE): in [0, 1]."""
    return _number(text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def top_p(text: str) -> float:
    """Nucleus sampling's probability mass: in (0, 1]."""
    return _number(text, lambda v: 0 < v <= 1, "a probability mass in (0, 1]")


def energy_share(text: str) -> float:
    """A share of a total to keep (the singular values' energy of a low-rank factorisation): in (0,
    1]."""
    return _number(text, lambda v: 0 < v <= 1, "a share in (0, 1]")


def group_size(text: str) -> int:
    """GRPO's completions per prompt: at least two, to compare them with each other."""
    return _integer(text, 2)


def fraction(text: str) -> float:
    """A share of the data held out: strictly between 0 and 1."""
    return _number(text, lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)")


def add_config_flags(parser, config_class, skip=(), defaults=None) -> None:
    """A flag for every ``flags.option`` field of the dataclass ``config_class`` (but those named in
    ``skip``): ``--field-name``, its default (or ``defaults[name]``, for a command whose default
    differs), help and check; a bool field is an on/off switch."""
    defaults = defaults or {}
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata or f.name in skip:
            continue
        name, text = "--" + f.name.replace("_", "-"), f.metadata["help"].replace("%", "%%")
        if isinstance(f.default, bool):
            parser.add_argument(name, action="store_true", help=text)
            continue
        integer = "int" in str(f.type) and "float" not in str(f.type)
        check = f.metadata["check"] or ("positive" if integer else "non_negative")
        parse = {("positive", True): positive_int, ("positive", False): positive_float,
                 ("non_negative", True): non_negative_int,
                 ("non_negative", False): non_negative_float,
                 ("probability", False): probability, ("unit", False): unit_interval,
                 ("group", True): group_size}[check, integer]
        parser.add_argument(name, type=parse, default=defaults.get(f.name, f.default), help=text)


def config_from_args(config_class, args, **overrides):
    """A config dataclass from the parsed flags of the same names (a field without a flag keeps its
    default), then ``overrides``."""
    values = {f.name: getattr(args, f.name)
              for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    return config_class(**{**values, **overrides})


def split_fractions(text: str) -> tuple[float, float, float]:
    """``--split``: train,val,test fractions such as 0.7,0.1,0.2 (non-negative, summing to 1)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0
                                   for v in values) or abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError("expected three comma-separated fractions summing to 1, "
                                         f"like 0.7,0.1,0.2; got {text!r}")
    return values


def _tokenizer_path(text: str) -> str:
    """``text`` if it is a file, its tokenizer.json if it is a run directory; else ArgumentTypeError
    why not."""
    path = Path(text)
    if path.is_dir():
        if not (path / TOKENIZER_FILE).is_file():
            raise argparse.ArgumentTypeError(f"'{text}' is a directory without a {TOKENIZER_FILE}")
        return str(path / TOKENIZER_FILE)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"there is no file or directory '{text}'")
    return text


def tokenizer_file(text: str) -> str:
    """A tokenizer .json file, or a run directory holding one (its tokenizer.json)."""
    try:
        return _tokenizer_path(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError("expected a tokenizer .json file (from `tinyllm tokenizer "
                                         f"train`) or a run directory holding one; {e}") from None


def tokenizer_choice(text: str) -> str:
    """``bpe`` or ``wordpiece`` (train one on the data), ``char``, or a tokenizer to reuse
    (``tokenizer_file``)."""
    if text in ("bpe", "char", "wordpiece"):
        return text
    try:
        return _tokenizer_path(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError("expected 'bpe' or 'wordpiece' (train one), 'char', a "
                                         "tokenizer .json file or a run directory holding one; "
                                         f"{e}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default appended, except where saying it adds nothing: the help
    already names its default, the flag is required, or the default is None or "" (no value) or
    False (a switch)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        no_value = action.default is None or action.default is False or action.default == ""
        if action.required or no_value or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and all its sub-commands' parsers the one ``HelpFormatter``."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                use_help_formatter(subparser)


@contextmanager
def no_leftover_folder(out, scratch=("cache",)):
    """Run a command that writes into the folder ``out``. If it fails and ``out`` did not exist
    before, remove what it made there unless results were written: the ``scratch`` sub-folders (a
    token cache) and the then-empty ``out``. A refused command leaves the file system as it found
    it."""
    out = Path(out) if out is not None else None
    existed = out is None or out.exists()
    try:
        yield
    except BaseException:
        if not existed and out.is_dir() and set(os.listdir(out)) <= set(scratch):
            for name in scratch:
                shutil.rmtree(out / name, ignore_errors=True)
            try:
                out.rmdir()
            except OSError:
                pass
        raise


def stop_if_interrupted(summary: dict, out, save=None) -> None:
    """After a finetuning loop that Ctrl-C stopped (``summary["interrupted"]``, see
    ``finetune.loop.fit``): save the model as trained so far with ``save()`` (unless the caller
    saved it already), then stop, saying so. These runs keep no optimizer state, so unlike
    pretraining they cannot be resumed."""
    if not summary.get("interrupted"):
        return
    if save is not None:
        save()
    steps, total = summary["steps"], summary["total_steps"]
    raise TrainingInterrupted(f"interrupted after step {steps} of {total}: the model as trained so "
                              f"far is saved in {out}/, not scored (finetuning cannot be resumed: "
                              "run the command again to train it fully)", steps)


def add_filter_flags(p) -> None:
    """``--filter BLOCKLIST`` and ``--filter-mode`` (generate, chat, serve; see
    tinyllm.safety.blocklist)."""
    g = p.add_argument_group("output filter")
    g.add_argument("--filter", metavar="BLOCKLIST", default=None,
                   help="a file of words and phrases (one per line, # comments) that must not "
                        "reach the output: matched case-insensitively as whole words, also across "
                        "streamed pieces")
    g.add_argument("--filter-mode", choices=("mask", "block"), default="mask",
                   help="mask: replace each blocked term by asterisks; block: end the reply before "
                        "the first one")


def output_filter(args):
    """A function making one ``FilterStream`` per reply (None without ``--filter``); the file is
    read and checked here, before any model is loaded."""
    if args.filter is None:
        return lambda: None
    from ..safety.blocklist import FilterStream, load_blocklist
    blocklist = load_blocklist(args.filter)
    return lambda: FilterStream(blocklist, args.filter_mode)
