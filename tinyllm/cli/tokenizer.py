"""``tinyllm tokenizer train`` and ``tinyllm tokenizer encode``. For example::

    tinyllm tokenizer train --vocab-size 4096 --out tokenizer.json        # on the built-in corpus
    tinyllm tokenizer train --data input.txt --pattern gpt2 --special "<|endoftext|>" "<|pad|>"
    echo "Hello world" | tinyllm tokenizer encode --tokenizer tokenizer.json
    tinyllm tokenizer encode --tokenizer tokenizer.json --count < input.txt

Each sub-command's ``--help`` lists its flags with their defaults.
"""

from __future__ import annotations

import os
import sys
import time

from ..data.text import builtin_corpus
from ..tokenizer import PATTERNS, BPETokenizer, CharTokenizer, load_tokenizer
from .common import positive_int, tokenizer_file


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a tokenizer, or encode text with one",
        description="Train a byte-level BPE (or character) tokenizer, or encode text with a "
                    "trained one.",
    )
    parser.set_defaults(func=lambda args: parser.print_help())
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="learn a tokenizer from a text file",
        description="Learn a tokenizer from a text file and save it as JSON.",
    )
    train.add_argument(
        "--data",
        metavar="FILE",
        help="UTF-8 text file to learn from (default: the built-in corpus, Python's help topics, "
             "~465 KB)",
    )
    train.add_argument(
        "--vocab-size",
        type=positive_int,
        default=4096,
        metavar="N",
        help="number of tokens, counting the 256 single bytes and the special tokens (default: "
             "4096)",
    )
    train.add_argument(
        "--out", default="tokenizer.json", metavar="PATH",
        help="where to save it (default: tokenizer.json)"
    )
    train.add_argument(
        "--pattern",
        default="gpt4",
        metavar="PATTERN",
        help="split regex applied before BPE: 'gpt4' (cl100k), 'gpt2', 'none' (no split) or a "
             "regex of your own (default: gpt4)",
    )
    train.add_argument(
        "--special",
        nargs="*",
        default=["<|endoftext|>"],
        metavar="TOKEN",
        help="special tokens, given the last ids (default: <|endoftext|>; '--special' alone for "
             "none)",
    )
    train.add_argument(
        "--kind",
        choices=["bpe", "char", "wordpiece"],
        default="bpe",
        help="'bpe': byte-level BPE; 'char': one token per character of the data, which ignores "
        "--vocab-size, --pattern and --special; 'wordpiece': BERT's tokenizer (likelihood merges, "
        "[PAD] [UNK] [CLS] [SEP] [MASK]; ignores --pattern and --special; also writes vocab.txt "
        "beside --out) (default: bpe)",
    )
    train.add_argument(
        "--criterion",
        choices=["likelihood", "count"],
        default="likelihood",
        help="wordpiece: merge the pair with the best count(ab)/(count(a)count(b)) (WordPiece's) "
             "or the most frequent one (BPE's, as HF tokenizers)",
    )
    train.add_argument(
        "--min-frequency",
        type=positive_int,
        default=5,
        metavar="N",
        help="wordpiece: merge only pairs seen at least N times",
    )
    train.add_argument(
        "--cased",
        action="store_true",
        help="wordpiece: keep case and accents (default: lower-case and strip accents, as "
             "bert-base-uncased)",
    )
    train.add_argument("--quiet", action="store_true",
                       help="no progress line while merging (default: show it)")
    train.set_defaults(func=run_train)

    encode = commands.add_parser(
        "encode",
        help="turn text into token ids",
        description="Encode text from stdin (or --text) and print the ids on one line, or only "
                    "their count.",
    )
    encode.add_argument(
        "--tokenizer",
        default="tokenizer.json",
        type=tokenizer_file,
        metavar="PATH",
        help="tokenizer file from 'tinyllm tokenizer train', or a run directory holding one "
             "(default: tokenizer.json)",
    )
    encode.add_argument("--text",
                        help="encode this text instead of reading stdin (default: read stdin)")
    encode.add_argument("--count", action="store_true",
                        help="print only the number of tokens (default: print the ids)")
    encode.add_argument(
        "--allow-special",
        action="store_true",
        help="encode special-token strings in the input (e.g. <|endoftext|>) as their special ids "
        "(default: stop with an error if the input contains one)",
    )
    encode.set_defaults(func=run_encode)


def _read_data(path: str | None) -> tuple[str, str]:
    """(text, description) of --data, or of the built-in corpus."""
    if path is None:
        return builtin_corpus(), "the built-in corpus (Python's help topics)"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except UnicodeDecodeError as e:
        raise ValueError(f"data file '{path}' is not UTF-8 text (byte {e.start} cannot be "
                         "decoded)") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"no data file at '{path}'") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"--data '{path}' is a directory; give one UTF-8 text "
                                "file") from None


def run_train(args) -> int:
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save the tokenizer to '{args.out}': there is no "
                                f"folder {folder}")
    text, source = _read_data(args.data)
    if not text:
        raise ValueError(f"{source} is empty; there is nothing to learn from")
    print(f"training a {args.kind} tokenizer on {source}: {len(text.encode('utf-8')):,} bytes",
          file=sys.stderr)
    start = time.perf_counter()
    if args.kind == "char":
        tokenizer = CharTokenizer.from_text(text)
    elif args.kind == "wordpiece":
        from ..tokenizer.wordpiece_train import train_wordpiece
        tokenizer = train_wordpiece(text, args.vocab_size, lowercase=not args.cased,
                                    verbose=not args.quiet,
                                    min_frequency=args.min_frequency, criterion=args.criterion)
    else:
        pattern = None if args.pattern == "none" else args.pattern
        tokenizer = BPETokenizer.train(
            text, args.vocab_size, pattern=pattern, special_tokens=args.special,
            verbose=not args.quiet
        )
    seconds = time.perf_counter() - start
    tokenizer.save(args.out)
    if args.kind == "wordpiece":
        vocab_txt = os.path.join(folder, "vocab.txt")
        tokenizer.save_vocab(vocab_txt)
        print(f"BERT's vocab.txt: {vocab_txt}")

    print(f"trained in {seconds:.2f} s")
    for label, value in _summary(tokenizer, args, text):
        print(f"  {label:<12} {value}")
    return 0


def _summary(tokenizer, args, text: str) -> list[tuple[str, str]]:
    """(label, value) lines describing a freshly trained tokenizer."""
    lines = [("saved to", args.out)]
    if isinstance(tokenizer, BPETokenizer):
        merges, specials = len(tokenizer.merges), list(tokenizer.special_tokens)
        plural = "s" if len(specials) != 1 else ""
        lines.append(
            (
                "vocab size",
                f"{tokenizer.vocab_size:,} = 256 bytes + {merges:,} merges + "
                f"{len(specials)} special token{plural} {specials}",
            )
        )
        if merges < args.vocab_size - 256 - len(specials):
            lines.append(("note", f"the data ran out of pairs to merge after {merges:,} merges"))
        name = next((name for name, regex in PATTERNS.items() if regex == tokenizer.pattern),
                    tokenizer.pattern)
        lines.append(("pattern", str(name)))
        longest = sorted(range(256, 256 + merges),
                         key=lambda i: -len(tokenizer.token_to_bytes(i)))[:4]
        lines.append(("longest", ", ".join(_show(tokenizer.token_to_bytes(i)) for i in longest)))
    elif isinstance(tokenizer, CharTokenizer):
        lines.append(("vocab size", f"{tokenizer.vocab_size:,} characters"))
    else:
        lines.append(("vocab size",
                      f"{tokenizer.vocab_size:,} tokens (5 special, then characters, then merges)"))
        lines.append(("casing",
                      "lower-cased, accents stripped" if tokenizer.lowercase else "cased"))
        if tokenizer.vocab_size < args.vocab_size:
            lines.append(("note", f"the data ran out of pairs seen {args.min_frequency} times"))
    num_tokens, size = len(tokenizer.encode_ordinary(text)), len(text.encode("utf-8"))
    lines.append(("compression", f"{num_tokens:,} tokens for the training text, "
                                 f"{size / num_tokens:.2f} bytes each"))
    return lines


def _show(token: bytes, width: int = 24) -> str:
    """A token as a short printable literal."""
    shown = repr(token.decode("utf-8", errors="replace"))
    return shown if len(shown) <= width else shown[: width - 4] + "...'"


def run_encode(args) -> int:
    tokenizer = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    try:
        ids = tokenizer.encode(text, allowed_special="all" if args.allow_special else "none_raise")
    except ValueError as e:
        if "special token" in str(e):
            raise ValueError(
                f"{e}\n(on the command line: add --allow-special to encode it as a special token)"
            ) from None
        raise
    print(len(ids) if args.count else " ".join(map(str, ids)))
    return 0
