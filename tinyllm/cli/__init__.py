"""``tinyllm`` on the command line: one sub-command per stage of the pipeline.

Each stage's commands live in their own small module of this package, which exposes
``add_commands(subparsers)``; every sub-command sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__, backend
from ..interrupt import TrainingInterrupted

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
from . import distill as _distill

# The stages, in pipeline order. A new stage adds its module here.
STAGES = [_data, _tokenizer, _train, _encoder, _distill, _generate, _finetune, _interop, _compress,
          _align, _serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyllm",
        description="The whole life of a small GPT on NumPy: tokenize, pretrain, evaluate, "
                    "finetune, align, generate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        stage.add_commands(sub)
    for command in _leaf_parsers(parser):
        command.add_argument(
            "--device", choices=backend.DEVICES, default=None,
            help="where the arrays live: cpu (NumPy), cuda (CuPy on an NVIDIA GPU), strict (NumPy "
                 "under CuPy's rules, to test the GPU path on a CPU) (default: $TINYLLM_DEVICE, "
                 "else cpu)")
    use_help_formatter(parser)
    return parser


def _leaf_parsers(parser):
    """Every parser that runs a command (the sub-commands' sub-commands, recursively)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for p in dict.fromkeys(a.choices.values())
            for leaf in _leaf_parsers(p)]


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    # --help, --version, or a flag refused (argparse printed why): its exit status
    except SystemExit as e:
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if args.device is not None:
            backend.set_device(args.device)
        elif backend.device_error is not None:
            raise backend.device_error
        _join_processes()
        if getattr(args, "data", None) is not None:   # every --data flag takes a dataset name too
            from ..data.datasets import resolve_data
            args.data = resolve_data(args.data)
        with no_leftover_folder(getattr(args, "out", None)):
            return args.func(args) or 0
    except (ValueError, OSError, RuntimeError) as e:
        # Errors from tinyllm name the problem; show them without a traceback.
        return _fail(f"tinyllm {args.command}: error: {e}", 2)
    except TrainingInterrupted as e:
        # A training loop says where it saved the run (all processes of a job stop at one step).
        return _fail(f"\n{e}", 130, every_process_stopped=True)
    except KeyboardInterrupt as e:
        return _fail(f"\n{e or 'interrupted'}", 130)


def _join_processes() -> None:
    """Under ``mpiexec -n N`` (tinyllm.distributed): connect, and let only rank 0 print to stdout
    (every process runs the same command; errors still reach stderr from whichever process has
    one)."""
    from .. import distributed
    if distributed.launched_size() > 1 and not distributed.is_main():
        sys.stdout = open(os.devnull, "w")


def _fail(message: str, code: int, every_process_stopped: bool = False) -> int:
    """Report an error and return its exit status. In a job of several processes an error in one
    must end them all (the others would wait for it forever): ``distributed.abort``, which prints it
    once."""
    from .. import distributed
    if distributed.active():
        if not every_process_stopped:
            distributed.abort(message.strip(), code)
        if not distributed.is_main():
            return code
    print(message, file=sys.stderr)
    return code
