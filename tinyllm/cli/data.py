"""``tinyllm data list|get|prepare``: named public datasets, and the cleaning pipeline before tokenization.

    tinyllm data list                                   # the datasets, their sizes and whether they are cached
    tinyllm data get tiny-shakespeare                   # download, verify and cache; prints the path and licence
    tinyllm data prepare a.txt b.jsonl --out data/mix   # normalise, strip markup, dedup, filter, mix → shards
    tinyllm pretrain --data data/mix                    # every --data flag also takes a dataset name
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("data", help="public datasets by name (list, get) and the cleaning pipeline (prepare)",
                       description="Datasets the README and examples use, fetched from their original sources "
                                   "(checked against pinned SHA-256 hashes, cached under $TINYLLM_DATA_DIR or "
                                   "~/.cache/tinyllm), and `prepare`, the cleaning pipeline. Any --data flag of "
                                   "another command accepts a dataset name too.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda args: p.print_help() or 0)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    a = actions.add_parser("list", help="the named datasets", formatter_class=fmt)
    a.add_argument("--dir", default=None, help="cache directory (default: $TINYLLM_DATA_DIR or ~/.cache/tinyllm)")
    a.set_defaults(func=run_list)

    a = actions.add_parser("get", help="download a dataset (resumable), verify its SHA-256 and cache it",
                           formatter_class=fmt)
    a.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s), from `tinyllm data list`")
    a.add_argument("--dir", default=None, help="cache directory (default: $TINYLLM_DATA_DIR or ~/.cache/tinyllm)")
    a.set_defaults(func=run_get)


def run_list(args) -> int:
    from ..data.datasets import DATASETS, cache_dir, is_cached
    root = Path(args.dir) if args.dir else cache_dir()
    print(f"{'name':18} {'size':>8}  {'cached':6}  description")
    for d in DATASETS.values():
        size = sum(f.size for f in d.files) / 1e6
        print(f"{d.name:18} {size:6.2f}MB  {'yes' if is_cached(d, root) else 'no':6}  {d.description}")
    print(f"\ncache: {root}  (`tinyllm data get NAME` downloads one; `--data NAME` works in every command)")
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
