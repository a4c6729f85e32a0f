"""What each fast path saves on a whole training step.

    python benchmarks/bench_fast_paths.py                          # mini and medium, 30 rounds
    python benchmarks/bench_fast_paths.py --models llama-mini --rounds 50 --paths adamw_on_cores

A fast path is the same maths as a plain forward/backward pair written in place or with einsum row
sums, so that it makes fewer passes over memory and fewer temporaries: ``gelu`` and ``layer_norm``.
The models run the fast one; the plain one is what a reader reads, what ``tests/test_op_pairs.py``
gradchecks, and what ``tests/test_fast_paths.py`` holds the fast one equal to. One more row,
"adamw_on_cores", runs AdamW's per-parameter updates on one core instead of sharing them out
(``parallel.for_each``).

Each row times ``bench_train.py``'s tinyllm training step (forward + backward + clip + AdamW, batch
8, float32, the batch split over the CPU cores) with every fast path on, and with one of them
replaced by its plain version. All the variants run in one process, switched every ``--steps``
steps (default: every step), in a shuffled order, for ``--rounds`` rounds, so that a busy spell of
a shared machine hits them alike; the table shows the median step of each and the gain, (plain -
fast) / plain of the whole step. The rule for keeping a fast path: at least 3% of a whole step for
some model. "all" replaces every one at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (the step and the model shapes are bench_train's)


def for_each_in_order(fn, items, sizes):
    """``parallel.for_each`` on this thread alone: AdamW's updates one after the other."""
    for item in items:
        fn(item)


# fast path: (module, {name of the fast function: the plain one, or its name, that replaces it})
FAST_PATHS = {
    "gelu": ("tinyllm.functional.dense",
             {"gelu_forward_fast": "gelu_forward", "gelu_backward_fast": "gelu_backward"}),
    "layer_norm": ("tinyllm.functional.norms",
                   {"layer_norm_forward_fast": "layer_norm_forward",
                    "layer_norm_backward_fast": "layer_norm_backward"}),
    "adamw_on_cores": ("tinyllm.parallel", {"for_each": for_each_in_order}),
}


def use(path: str | None) -> None:
    """Run fast path ``path`` (or, for "all", every one) by its plain version in this process; None
    restores every fast path."""
    for name, (module_name, swaps) in FAST_PATHS.items():
        module = importlib.import_module(module_name)
        for fast, plain in swaps.items():
            original = ORIGINALS.setdefault((module_name, fast), getattr(module, fast))
            replaced = path in (name, "all")
            plain = getattr(module, plain) if isinstance(plain, str) else plain
            setattr(module, fast, plain if replaced else original)


ORIGINALS = {}


def measure(model: str, paths: list, steps: int, rounds: int) -> dict:
    """ms of each training step of ``model`` with every fast path ("none" replaced), and with each
    of ``paths`` replaced by its plain version, switching every ``steps`` steps."""
    step, _ = bench_train.tinyllm_step_fn(bench_train.MODELS[model])
    step()                                                  # warm-up
    times = {variant: [] for variant in ["none"] + paths}
    order = random.Random(0)
    for _ in range(rounds):
        for variant in order.sample(list(times), len(times)):   # no variant always follows another
            use(None if variant == "none" else variant)
            for _ in range(steps):
                start = time.perf_counter()
                step()
                times[variant].append(1e3 * (time.perf_counter() - start))
    use(None)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mini", "medium"],
                        choices=list(bench_train.MODELS))
    parser.add_argument("--paths", nargs="+", default=list(FAST_PATHS) + ["all"],
                        choices=list(FAST_PATHS) + ["all"], help="default: each, then all")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per switch")
    parser.add_argument("--rounds", type=int, default=30, help="switches through every variant")
    parser.add_argument("--json", default=None, help="also write every step's time to this file")
    args = parser.parse_args()

    results = {}
    print(f"{'model':<12} {'plain version of':<17} {'fast ms':>8} {'plain ms':>9} {'gain':>6}")
    for model in args.models:
        times = results[model] = measure(model, args.paths, args.steps, args.rounds)
        fast_ms = statistics.median(times["none"])
        for path in args.paths:
            plain_ms = statistics.median(times[path])
            print(f"{model:<12} {path:<17} {fast_ms:8.0f} {plain_ms:9.0f} "
                  f"{100 * (plain_ms - fast_ms) / plain_ms:5.1f}%", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
