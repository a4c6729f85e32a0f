"""``tinyllm data list|get|prepare``: named public datasets, and the cleaning pipeline before
tokenization.

    tinyllm data list                                   # the datasets, their sizes and whether they are cached
    tinyllm data get tiny-shakespeare                   # download, verify and cache; prints the path and licence
    tinyllm data prepare a.txt b.jsonl --out data/mix   # normalise, strip markup, dedup, filter, mix → shards
    tinyllm pretrain --data data/mix                    # every --data flag also takes a dataset name
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("data",
                       help="public datasets by name (list, get) and the cleaning "
                            "pipeline (prepare)",
                       description="Datasets the README and examples use, fetched from their "
                                   "original sources (checked against pinned SHA-256 hashes, "
                                   "cached under $TINYLLM_DATA_DIR or ~/.cache/tinyllm), and "
                                   "`prepare`, the cleaning pipeline. Any --data flag of another "
                                   "command accepts a dataset name too.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    a = actions.add_parser("list", help="the named datasets",
                           description="The named datasets: size, whether they are cached, what "
                                       "they are.")
    a.add_argument("--dir", default=None,
                   help="cache directory (default: $TINYLLM_DATA_DIR or ~/.cache/tinyllm)")
    a.set_defaults(func=run_list)

    a = actions.add_parser("get",
                           help="download a dataset (resumable), verify its SHA-256 and cache it",
                           description="Download datasets from their original sources (resuming a "
                                       "partial download), check each file's SHA-256 and cache it; "
                                       "prints where it is, its licence and how to cite it.")
    a.add_argument("names", nargs="+", metavar="NAME",
                   help="dataset name(s), from `tinyllm data list`")
    a.add_argument("--dir", default=None,
                   help="cache directory (default: $TINYLLM_DATA_DIR or ~/.cache/tinyllm)")
    a.set_defaults(func=run_get)
    _add_prepare(actions.add_parser(
        "prepare", help="clean, deduplicate, filter and mix text into shards (or a token file) for "
                        "pretraining",
        description="Read documents (JSONL 'text' records; blank-line separated paragraphs of "
                    "other files), then: clean (markup, Unicode normalisation) → exact dedup → "
                    "quality rules (Gopher/C4) → blocklist → near dedup (MinHash + LSH) → mix by "
                    "weight. Writes OUT/shard-*.txt, OUT/report.json and, with --tokenizer, "
                    "OUT/tokens.npy + OUT/tokenizer.json; `tinyllm pretrain --data OUT` uses "
                    "either."))


def run_list(args) -> int:
    from ..data.datasets import DATASETS, cache_dir, is_cached
    root = Path(args.dir) if args.dir else cache_dir()
    print(f"{'name':18} {'size':>8}  {'cached':6}  description")
    for d in DATASETS.values():
        size = sum(f.size for f in d.files) / 1e6
        print(f"{d.name:18} {size:6.2f}MB  {'yes' if is_cached(d, root) else 'no':6}  "
              f"{d.description}")
    print(f"\ncache: {root}  (`tinyllm data get NAME` downloads one; `--data NAME` works in "
          "every command)")
    return 0


def run_get(args) -> int:
    from ..data.datasets import cache_dir, fetch, get_dataset, source_url
    for name in args.names:
        get_dataset(name)                       # every name checked before anything is downloaded
    for name in args.names:
        dataset = get_dataset(name)
        path = fetch(name, args.dir or cache_dir())
        print(f"{name}: {path}")
        for remote in dataset.files:
            print(f"  source   {source_url(remote)}\n  sha256   {remote.sha256}")
        print(f"  licence  {dataset.licence}\n  cite     {dataset.citation}")
    return 0


def _add_prepare(a) -> None:
    from ..data.quality import QualityConfig
    q = QualityConfig()
    a.add_argument("inputs", nargs="+", metavar="IN", help="files, directories or dataset names")
    a.add_argument("--out", required=True, help="directory to write (must be new or empty)")
    a.add_argument("--weights", default=None,
                   help="comma-separated weight per input: 2 = twice, 0.5 = a random "
                                                   "half of its documents (default: 1 each)")
    a.add_argument("--normalize", default="NFC", choices=["NFC", "NFKC", "none"],
                   help="Unicode normal form (default: NFC)")
    a.add_argument("--keep-markup", action="store_true", help="do not strip HTML tags and entities")
    a.add_argument("--no-exact-dedup", action="store_true", help="keep exact duplicates")
    a.add_argument("--near-dup-threshold", type=float, default=0.7,
                   help="drop a document whose word-shingle Jaccard similarity to an earlier one "
                        "is at least this (default: 0.7; 0 = no near dedup)")
    a.add_argument("--shingle", type=int, default=3,
                   help="words per shingle for near dedup (default: 3)")
    a.add_argument("--no-quality", action="store_true", help="skip the quality rules")
    a.add_argument("--min-words", type=int, default=q.min_words,
                   help="quality: fewest words in a document (default: %(default)s)")
    a.add_argument("--stop-words", default=None,
                   help="quality: comma-separated stop words, or 'english' for Gopher's (default: "
                        "the 8 words found in the most documents of the corpus, for any language)")
    a.add_argument("--min-stop-words", type=int, default=q.min_stop_words,
                   help="quality: fewest stop words (default: %(default)s; 0 = off)")
    a.add_argument("--blocklist", default=None,
                   help="file of words, one per line: documents containing one are dropped")
    a.add_argument("--no-shuffle", action="store_true", help="keep the documents in source order")
    a.add_argument("--shard-size", type=float, default=32.0,
                   help="megabytes of text per shard (default: %(default)s)")
    a.add_argument("--tokenizer", default=None,
                   help="also write tokens.npy: 'bpe' (trained on the output), 'char', "
                                                     "or a tokenizer.json")
    a.add_argument("--vocab-size", type=int, default=2048,
                   help="BPE vocabulary size with --tokenizer bpe (default: %(default)s)")
    a.add_argument("--seed", type=int, default=0,
                   help="seed of the MinHash functions, weights' sampling, shuffle "
                        "(default: %(default)s)")
    a.set_defaults(func=run_prepare)


def _prepare_config(args):
    from ..data.prepare import PrepareConfig
    from ..data.quality import QualityConfig
    blocklist = frozenset()
    if args.blocklist:
        words = Path(args.blocklist).read_text(encoding="utf-8").split()
        blocklist = frozenset(w.lower() for w in words)
    quality = None if args.no_quality else QualityConfig(
        min_words=args.min_words, min_stop_words=args.min_stop_words,
        stop_words=_stop_words(args.stop_words))
    return PrepareConfig(normalize=None if args.normalize == "none" else args.normalize,
                         strip_html=not args.keep_markup, exact_dedup=not args.no_exact_dedup,
                         near_dup_threshold=args.near_dup_threshold, shingle=args.shingle,
                         quality=quality,
                         blocklist=blocklist, shuffle=not args.no_shuffle, seed=args.seed)


def _stop_words(flag):
    from ..data.quality import GOPHER_STOP_WORDS
    if flag is None or flag == "english":
        return None if flag is None else GOPHER_STOP_WORDS
    return tuple(w.strip().lower() for w in flag.split(",") if w.strip())


def run_prepare(args) -> int:
    from ..data.datasets import resolve_data
    from ..data.prepare import Source, mix, run_stages, write_shards, write_tokens
    from ..files import atomic_write_json
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"'{out}' is not empty; choose another --out or remove it")
    weights = ([1.0] * len(args.inputs) if args.weights is None
               else [float(w) for w in args.weights.split(",")])
    if len(weights) != len(args.inputs) or any(w < 0 for w in weights):
        raise ValueError(f"--weights needs one non-negative number per input ({len(args.inputs)}), "
                         f"got {args.weights!r}")
    sources = [Source(resolve_data(path), w) for path, w in zip(args.inputs, weights)]
    config = _prepare_config(args)
    kept, report = run_stages(sources, config)
    documents = mix(kept, sources, config.shuffle, config.seed)
    if not documents:
        print(format_report(report))
        raise ValueError("no document survived the pipeline (see the report above); loosen the "
                         "quality flags?")
    shards = write_shards(out, documents, int(args.shard_size * 1e6))
    summary = {"sources": [dataclasses.asdict(s) for s in sources], "read": report.read,
               "stages": report.stages,
               "quality_rules": report.rules, "stop_words": report.stop_words,
               "output": {"documents": len(documents),
               "characters": sum(map(len, documents)), "shards": [p.name for p in shards]},
               "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "blocklist"}}
    if args.tokenizer:
        from .train import _make_tokenizer
        tokenizer = _make_tokenizer(args.tokenizer, "\n\n".join(documents), args.vocab_size, out)
        summary["output"]["tokens"] = len(write_tokens(out, documents, tokenizer))
    atomic_write_json(out / "report.json", summary)
    print(format_report(report, summary["output"]))
    print(f"written to {out}/ (report.json has the details) — next: tinyllm pretrain --data {out}")
    return 0


def format_report(report, output=None) -> str:
    """The report as a table: documents and characters each stage removed,
    in total and per source."""
    names = [Path(n).name for n in report.names]
    lines = [f"read {report.read['documents']:,} documents, "
             f"{report.read['characters']:,} characters: "
             + ", ".join(f"{n} {c:,}" for n, c in zip(names, report.read["per_source"])),
             f"{'stage':12} {'docs in':>9} {'removed':>8} {'chars removed':>14}  removed per "
             "source"]
    for row in report.stages:
        per_source = ", ".join(f"{n} {c:,}" for n, c in zip(names, row["removed_per_source"]) if c)
        lines.append(f"{row['stage']:12} {row['documents_in']:9,} {row['removed']:8,} "
                     f"{row['characters_removed']:14,}  {per_source}")
        if row["stage"] == "quality" and report.rules:
            lines.append(" " * 13 + "rules: " + ", ".join(f"{k} {v:,}" for k, v in
                                                        sorted(report.rules.items(),
                                                               key=lambda kv: -kv[1])))
            lines.append(" " * 13 + "stop words: " + ", ".join(report.stop_words or ()))
    if output is not None:
        tokens = f", {output['tokens']:,} tokens" if "tokens" in output else ""
        lines.append(f"output: {output['documents']:,} documents, {output['characters']:,} "
                     "characters in "
                     f"{len(output['shards'])} shard(s){tokens}")
    return "\n".join(lines)
