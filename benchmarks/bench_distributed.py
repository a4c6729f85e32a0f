"""Data parallelism over processes (MPI) against threads, at the same core count; and the cost model.

    python benchmarks/bench_distributed.py                      # 1 and 2 cores, the "mini" shape, 6 steps
    python benchmarks/bench_distributed.py --cores 1 2 4 --steps 10 --json out.json

For each core count C it times full training steps (forward + backward + gradient all-reduce + clipping +
AdamW) three ways, each in fresh processes, on the same global batch:

    processes   mpiexec -n C, one thread each (tinyllm.distributed: every process its share of the batch,
                the gradients added by reduce-scatter + all-gather through MPI)
    threads     one process, C threads (tinyllm.parallel.data_parallel: the batch split over the threads)

and reports tokens/s and, for the processes, the milliseconds per step spent adding the gradients. Then
it prints the alpha-beta model of a ring all-reduce for the GPT-2 (124M) shape, to predict what the
exchange costs between machines:

    T = 2 (N - 1) α  +  2 (N - 1)/N · bytes / β          (α: latency per message, β: bandwidth)

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

SHAPE = dict(n_layer=6, n_head=6, n_embd=192, block_size=256, vocab_size=8192)     # the "mini" preset
GPT2_PARAMETERS = 124_439_808            # tinyllm's gpt2 preset (tied embeddings), vocabulary 50257
LATENCY_S = 5e-6                         # α: a typical per-message latency between machines (Ethernet/RDMA)


def worker(steps: int, batch: int) -> None:
    """One process of a measurement: time ``steps`` training steps after one warm-up step; rank 0 prints
    a JSON line with the median step time and the median time in the gradient exchange."""
    import numpy as np
    from tinyllm import distributed
    from tinyllm.model import GPT, GPTConfig
    from tinyllm.train import forward_backward, param_groups, update_weights
    from tinyllm.zero import make_adamw

    model = GPT(GPTConfig(**SHAPE), seed=0)
    optimizer = make_adamw(param_groups(model, 0.1), 0, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    distributed.broadcast_parameters(model.parameters())
    exchange = []
    plain = distributed.all_reduce_gradients

    def timed_all_reduce(*args):
        started = time.perf_counter()
        result = plain(*args)
        exchange.append(time.perf_counter() - started)
        return result
    distributed.all_reduce_gradients = timed_all_reduce
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps + 1):
        x = rng.integers(0, SHAPE["vocab_size"], (batch, SHAPE["block_size"]))
        started = time.perf_counter()
        loss = forward_backward(model, x, np.roll(x, -1, axis=1))
        update_weights(optimizer, loss, 1.0, "the benchmark")
        times.append(time.perf_counter() - started)
    if distributed.is_main():
        print(json.dumps({"step_s": statistics.median(times[1:]), "exchange_s": statistics.median(exchange[1:]),
                          "processes": distributed.world().size}))


def measure(kind: str, cores: int, steps: int, batch: int) -> dict:
    """Run one measurement in fresh processes; its tokens/s and step times."""
    env = {**os.environ, "TINYLLM_NUM_THREADS": str(1 if kind == "processes" else cores)}
    command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--batch", str(batch)]
    if kind == "processes":
        command = [mpiexec(), "-n", str(cores)] + command
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    tokens = batch * SHAPE["block_size"]
    return {"kind": kind, "cores": cores, "tokens_per_s": tokens / result["step_s"],
            "step_ms": 1000 * result["step_s"],
            "exchange_ms": 1000 * result["exchange_s"] if kind == "processes" and cores > 1 else 0.0}


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("bench_distributed needs mpiexec and mpi4py: pip install -e '.[mpi]'")
    return found


def ring_all_reduce_seconds(nbytes: float, processes: int, gbit_per_s: float, messages: int = 1) -> float:
    """The alpha-beta cost of a ring all-reduce of ``nbytes`` over ``processes`` (``messages`` buckets)."""
    if processes == 1:
        return 0.0
    bandwidth = gbit_per_s * 1e9 / 8
    return messages * 2 * (processes - 1) * LATENCY_S + 2 * (processes - 1) / processes * nbytes / bandwidth


def cost_model(step_compute_s: float) -> list:
    """Rows (processes, Gbit/s, seconds, share of a step) for the GPT-2 shape's float32 gradients."""
    nbytes = 4 * GPT2_PARAMETERS
    buckets = -(-nbytes // (32 * 2**20))
    rows = []
    for gbit in (10, 100):
        for processes in (2, 8, 64):
            seconds = ring_all_reduce_seconds(nbytes, processes, gbit, buckets)
            rows.append((processes, gbit, seconds, seconds / (step_compute_s + seconds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="core counts to compare")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (windows of 256 tokens)")
    parser.add_argument("--gpt2-step-s", type=float, default=None,
                        help="compute seconds of one GPT-2 step per process, for the cost model (default: "
                             "scaled from this machine's measured tokens/s by the ratio of the models' FLOPs)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.batch)

    rows = []
    print(f"model: {SHAPE}; global batch {args.batch} × {SHAPE['block_size']} tokens; {os.cpu_count()} CPUs here")
    print(f"{'cores':>5} {'how':>10} {'tokens/s':>10} {'ms/step':>9} {'all-reduce ms/step':>19}")
    for cores in args.cores:
        for kind in ("processes", "threads"):
            if kind == "threads" and cores == 1:
                continue                                     # one process of one thread: the same run
            row = measure(kind, cores, args.steps, args.batch)
            rows.append(row)
            print(f"{cores:>5} {kind:>10} {row['tokens_per_s']:>10,.0f} {row['step_ms']:>9.0f} "
                  f"{row['exchange_ms']:>19.1f}")

    from tinyllm.model import GPT, GPTConfig
    mini_parameters = GPT(GPTConfig(**SHAPE)).num_parameters()
    one = next(r for r in rows if r["cores"] == 1)
    per_token_s = 1 / one["tokens_per_s"] * GPT2_PARAMETERS / mini_parameters    # ≈ 6 · params FLOPs a token
    step_s = args.gpt2_step_s or per_token_s * 8 * 1024
    print(f"\nring all-reduce of GPT-2's float32 gradients ({4 * GPT2_PARAMETERS / 1e6:.0f} MB, buckets of 32 MiB), "
          f"α = {LATENCY_S * 1e6:.0f} µs; a step of 8 × 1024 tokens per process computing {step_s:.1f} s:")
    print(f"{'processes':>9} {'Gbit/s':>7} {'all-reduce s':>13} {'share of the step':>18}")
    model_rows = cost_model(step_s)
    for processes, gbit, seconds, share in model_rows:
        print(f"{processes:>9} {gbit:>7} {seconds:>13.3f} {100 * share:>17.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": rows, "cost_model": model_rows, "gpt2_step_s": step_s},
                                              indent=2))


if __name__ == "__main__":
    main()
