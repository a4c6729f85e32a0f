"""Data parallelism over processes (MPI) beside threads at the same core count, and a cost model.

    python benchmarks/bench_distributed.py                  # 1 and 2 cores, 8 steps, 2 rounds
    python benchmarks/bench_distributed.py --cores 1 2 4 --rounds 3 --json out.json

For each core count C it times full training steps (forward + backward + gradient all-reduce +
clipping + AdamW) of a small GPT (4 layers × 128, context 128) on the same global batch, two ways,
each in fresh processes:

    processes   mpiexec -n C, one thread each (tinyllm.distributed: each process its share of
                the batch, the gradients added by reduce-scatter + all-gather through MPI)
    threads     one process of C threads (tinyllm.parallel.data_parallel)

and reports tokens/s and, for the processes, the milliseconds per step spent waiting for the
slowest process to finish its backward pass (a barrier) and then adding the gradients (medians over
the steps, then over ``--rounds`` rounds that alternate the configurations, so that a machine busy
with other work disturbs them alike). Then it prints the alpha-beta model of a ring
all-reduce of the GPT-2 (124M) shape's gradients, which predicts the exchange between machines:

    T = 2 (N − 1) α  +  2 (N − 1)/N · bytes / β       (α: latency of a message, β: bandwidth)

Needs mpi4py and mpiexec (pip install -e '.[mpi]').
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=4096)
GPT2_PARAMETERS = 124_439_808     # tinyllm's gpt2 preset (tied embeddings, vocabulary 50257)
LATENCY_S = 5e-6                  # α: a typical latency of a message between machines
BUCKET_BYTES = 32 * 2**20         # tinyllm.distributed.BUCKET_BYTES: a message per bucket


def worker(steps: int, batch: int) -> None:
    """One process of a measurement: time ``steps`` training steps after a warm-up step; rank 0
    prints a JSON line with the median step time and the median time in the gradient exchange."""
    import numpy as np
    from tinyllm import distributed
    from tinyllm.model import GPT, GPTConfig
    from tinyllm.train import forward_backward, param_groups, update_weights
    from tinyllm.zero import make_adamw

    model = GPT(GPTConfig(**SHAPE), seed=0)
    optimizer = make_adamw(param_groups(model, 0.1), 0, lr=3e-4, betas=(0.9, 0.95))
    distributed.broadcast_parameters(model.parameters())
    waits, exchange, plain = [], [], distributed.all_reduce_gradients

    def timed_all_reduce(*args):
        started = time.perf_counter()
        if distributed.active():
            distributed.world().comm.Barrier()             # the slowest process's backward ends
        arrived = time.perf_counter()
        result = plain(*args)
        waits.append(arrived - started)
        exchange.append(time.perf_counter() - arrived)
        return result
    distributed.all_reduce_gradients = timed_all_reduce     # update_weights calls it by this name
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps + 1):
        x = rng.integers(0, SHAPE["vocab_size"], (batch, SHAPE["block_size"]))
        started = time.perf_counter()
        loss = forward_backward(model, x, np.roll(x, -1, axis=1))
        update_weights(optimizer, loss, 1.0, "the benchmark")
        times.append(time.perf_counter() - started)
    if distributed.is_main():
        median = lambda values: statistics.median(values[1:])       # noqa: E731 (after the warm-up)
        print(json.dumps({"step_s": median(times), "wait_s": median(waits),
                          "exchange_s": median(exchange)}))


def measure(kind: str, cores: int, steps: int, batch: int) -> dict:
    """One measurement in fresh processes: tokens/s, ms per step, ms per step in the exchange."""
    env = {**os.environ, "TINYLLM_NUM_THREADS": str(1 if kind == "processes" else cores)}
    command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--batch", str(batch)]
    if kind == "processes":
        command = [mpiexec(), "-n", str(cores)] + command
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    several = kind == "processes" and cores > 1
    return {"kind": kind, "cores": cores, "step_ms": 1000 * result["step_s"],
            "wait_ms": 1000 * result["wait_s"] if several else 0.0,
            "exchange_ms": 1000 * result["exchange_s"] if several else 0.0}


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("bench_distributed needs mpiexec and mpi4py: pip install -e '.[mpi]'")
    return found


def ring_all_reduce_seconds(nbytes: float, processes: int, gbit_per_s: float) -> float:
    """The alpha-beta cost of a ring all-reduce of ``nbytes`` in buckets over ``processes``."""
    if processes == 1:
        return 0.0
    messages = -(-nbytes // BUCKET_BYTES)
    latency = messages * 2 * (processes - 1) * LATENCY_S
    return latency + 2 * (processes - 1) / processes * nbytes / (gbit_per_s * 1e9 / 8)


def cost_model(step_seconds) -> list:
    """Rows (processes, Gbit/s, all-reduce seconds, [its share of a step whose compute takes s
    seconds, for each s in ``step_seconds``]) for GPT-2's float32 gradients."""
    rows = []
    for gbit in (10, 100):
        for processes in (2, 8, 64):
            seconds = ring_all_reduce_seconds(4 * GPT2_PARAMETERS, processes, gbit)
            rows.append((processes, gbit, seconds, [seconds / (s + seconds) for s in step_seconds]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="core counts")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--batch", type=int, default=8, help="global batch (windows of 128 tokens)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each")
    parser.add_argument("--step-seconds", type=float, nargs="+", default=[0.5, 5.0, 50.0],
                        help="compute seconds of a GPT-2 step in each process, for the cost model "
                             "(roughly a GPU, a many-core server, a laptop)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.batch)
    print(f"model: {SHAPE}; global batch {args.batch} × {SHAPE['block_size']} tokens; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the start")
    rows = measure_all(args)
    print(f"{'cores':>5} {'how':>10} {'tokens/s':>9} {'ms/step':>8} {'wait ms':>8} "
          f"{'all-reduce ms':>14}   (medians of {args.rounds} rounds; load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    for row in rows:
        print(f"{row['cores']:>5} {row['kind']:>10} {row['tokens_per_s']:>9,.0f} "
              f"{row['step_ms']:>8.0f} {row['wait_ms']:>8.1f} {row['exchange_ms']:>14.1f}")
    model_rows = cost_model(args.step_seconds)
    print(f"\nring all-reduce of GPT-2's float32 gradients ({4 * GPT2_PARAMETERS / 1e6:.0f} MB in "
          f"buckets of 32 MiB, α = {LATENCY_S * 1e6:.0f} µs), and its share of a step computing:")
    print(f"{'processes':>9} {'Gbit/s':>7} {'all-reduce s':>13} "
          + " ".join(f"{f'{s:g} s':>8}" for s in args.step_seconds))
    for processes, gbit, seconds, shares in model_rows:
        print(f"{processes:>9} {gbit:>7} {seconds:>13.3f} "
              + " ".join(f"{100 * share:>7.1f}%" for share in shares))
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": rows, "cost_model": model_rows,
                                               "step_seconds": args.step_seconds}, indent=2))


def measure_all(args) -> list:
    """Every configuration measured ``args.rounds`` times, alternating; the medians."""
    configurations = [(cores, kind) for cores in args.cores for kind in ("processes", "threads")
                      if not (kind == "threads" and cores == 1)]   # one thread: the same run twice
    runs = {c: [] for c in configurations}
    for _ in range(args.rounds):
        for cores, kind in configurations:
            runs[cores, kind].append(measure(kind, cores, args.steps, args.batch))
    rows = []
    for cores, kind in configurations:
        row = {"kind": kind, "cores": cores}
        for key in ("step_ms", "wait_ms", "exchange_ms"):
            row[key] = statistics.median(r[key] for r in runs[cores, kind])
        row["tokens_per_s"] = 1000 * args.batch * SHAPE["block_size"] / row["step_ms"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
