"""``tinyllm`` on the command line: one sub-command per stage of the pipeline.

Each stage's commands live in their own small module of this package, which exposes
``add_commands(subparsers)``; every sub-command sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import sys

from . import tokenizer as _tokenizer
from . import train as _train
from . import finetune as _finetune
from . import generate as _generate
from . import interop as _interop
from . import align as _align
from . import serve as _serve

# The stages, in pipeline order. A new stage adds its module here.
STAGES = [_tokenizer, _train, _generate, _finetune, _interop, _align, _serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyllm",
        description="The whole life of a small GPT on NumPy: tokenize, pretrain, evaluate, finetune, align, generate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        stage.add_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Errors from tinyllm name the problem; show them without a traceback.
        print(f"tinyllm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
