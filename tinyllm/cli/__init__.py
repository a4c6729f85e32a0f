"""``tinyllm`` on the command line: one sub-command per stage of the pipeline.

Each stage's commands live in their own small module of this package, which exposes
``add_commands(subparsers)``; every sub-command sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__, backend

from . import tokenizer as _tokenizer
from . import train as _train
from . import finetune as _finetune
from . import generate as _generate
from . import interop as _interop
from . import compress as _compress
from . import align as _align
from . import serve as _serve
from .common import no_leftover_folder, use_help_formatter
from . import data as _data
from . import encoder as _encoder

# The stages, in pipeline order. A new stage adds its module here.
STAGES = [_data, _tokenizer, _train, _encoder, _generate, _finetune, _interop, _compress, _align, _serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyllm",
        description="The whole life of a small GPT on NumPy: tokenize, pretrain, evaluate, finetune, align, generate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        stage.add_commands(sub)
    for command in _leaf_parsers(parser):
        command.add_argument(
            "--device", choices=backend.DEVICES, default=None,
            help="where the arrays live: cpu (NumPy), cuda (CuPy on an NVIDIA GPU), strict (NumPy under "
                 "CuPy's rules, to test the GPU path on a CPU) (default: $TINYLLM_DEVICE, else cpu)")
    use_help_formatter(parser)
    return parser


def _leaf_parsers(parser):
    """Every parser that runs a command (the sub-commands' sub-commands, recursively)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for p in dict.fromkeys(a.choices.values()) for leaf in _leaf_parsers(p)]


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:        # --help, --version, or a flag refused (argparse printed why): its exit status
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if args.device is not None:
            backend.set_device(args.device)
        elif backend.device_error is not None:
            raise backend.device_error
        if getattr(args, "data", None) is not None:   # every --data flag takes a dataset name too
            from ..data.datasets import resolve_data
            args.data = resolve_data(args.data)
        with no_leftover_folder(getattr(args, "out", None)):
            return args.func(args) or 0
    except (ValueError, OSError, RuntimeError) as e:
        # Errors from tinyllm name the problem; show them without a traceback.
        print(f"tinyllm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # A training loop says where it saved the run (train.TrainingInterrupted); anything else just stops.
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        return 130
