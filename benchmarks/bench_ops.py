"""Time every fused op of tinyllm.functional, forward and forward+backward, at GPT-like sizes.

    python benchmarks/bench_ops.py                     # B=8, T=256, C=384, 6 heads, V=8192, float32
    python benchmarks/bench_ops.py --repeats 9 --json bench_ops.json
    python benchmarks/bench_ops.py --ops attention,cross_entropy --no-torch

Each measurement is the median (or with ``--stat min`` the minimum; the JSON stores both) of ``--repeats``
runs after ``--warmup`` untimed ones. "fwd" runs the op with gradients enabled (so it saves what its backward needs, as in
training); "fwd+bwd" adds the backward from a fixed random output gradient. When PyTorch is importable the same
op runs in PyTorch eager mode (default thread count) on the same data, and "ratio" is tinyllm's fwd+bwd time
over PyTorch's (below 1: tinyllm is faster). PyTorch is optional: without it only tinyllm's columns are shown.

Timings on a shared machine are noisy; use more repeats (the minimum is the least noisy statistic).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time

import numpy as np

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor, backend

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the benchmark runs without PyTorch
    torch = None


def sync():
    """Wait for queued GPU work (a no-op on the CPU), so that times cover the computation itself."""
    if backend.device == "cuda":
        backend.xp.cuda.Device().synchronize()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


# ---------------------------------------------------------------------- the cases
def cases(b, t, c, n_head, vocab):
    """(name, shape text, arrays maker, tinyllm op, torch op): ops take the same positional inputs.

    Arrays are NumPy float32 (integer ids/targets as int64); inputs listed in ``grad`` require gradients.
    """
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    d = c // n_head
    ids = rng.integers(0, vocab, size=(b, t))

    def torch_self_attention(qkv):
        q, k, v = (z.view(b, t, n_head, d).transpose(1, 2) for z in qkv.split(c, dim=2))
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(b, t, c)

    return [
        dict(name="linear", shape=f"({b},{t},{c})→{4 * c}", inputs=[f32(b, t, c), f32(4 * c, c) * 0.05, f32(4 * c)],
             grad=[0, 1, 2], tiny=F.linear, torch=TF.linear),
        dict(name="int8_linear", shape=f"({b},{t},{c})→{4 * c}",
             inputs=[f32(b, t, c), rng.integers(-127, 128, size=(4 * c, c)).astype(np.int8), f32(4 * c) * 4e-4 + 1e-3,
                     f32(4 * c)], grad=[0, 3],
             tiny=lambda x, q, s, bias: F.int8_linear(x, Tensor(q), s, bias),
             torch=lambda x, q, s, bias: TF.linear(x, q.float() * s[:, None], bias)),
        dict(name="embedding", shape=f"({b},{t}) in ({vocab},{c})", inputs=[ids, f32(vocab, c)], grad=[1],
             tiny=F.embedding, torch=lambda i, w: TF.embedding(i, w)),
        dict(name="gelu", shape=f"({b},{t},{c})", inputs=[f32(b, t, c)], grad=[0],
             tiny=F.gelu, torch=lambda x: TF.gelu(x, approximate="tanh")),
        dict(name="gelu", shape=f"({b},{t},{4 * c})", inputs=[f32(b, t, 4 * c)], grad=[0],
             tiny=F.gelu, torch=lambda x: TF.gelu(x, approximate="tanh")),
        dict(name="dropout p=0.1", shape=f"({b},{t},{c})", inputs=[f32(b, t, c)], grad=[0],
             tiny=lambda x: F.dropout(x, 0.1), torch=lambda x: TF.dropout(x, 0.1, training=True)),
        dict(name="layer_norm", shape=f"({b},{t},{c})", inputs=[f32(b, t, c), f32(c), f32(c)], grad=[0, 1, 2],
             tiny=F.layer_norm, torch=lambda x, w, bias: TF.layer_norm(x, (x.shape[-1],), w, bias)),
        dict(name="layer_norm", shape=f"({b},{t},{4 * c})", inputs=[f32(b, t, 4 * c), f32(4 * c), f32(4 * c)],
             grad=[0, 1, 2], tiny=F.layer_norm, torch=lambda x, w, bias: TF.layer_norm(x, (x.shape[-1],), w, bias)),
        dict(name="softmax", shape=f"({b},{n_head},{t},{t})", inputs=[f32(b, n_head, t, t)], grad=[0],
             tiny=F.softmax, torch=lambda x: torch.softmax(x, -1)),
        dict(name="log_softmax", shape=f"({b},{t},{vocab})", inputs=[f32(b, t, vocab)], grad=[0],
             tiny=F.log_softmax, torch=lambda x: torch.log_softmax(x, -1)),
        dict(name="cross_entropy", shape=f"({b},{t},{vocab})", inputs=[f32(b, t, vocab), ids], grad=[0],
             tiny=F.cross_entropy, torch=lambda z, y: TF.cross_entropy(z.view(-1, z.shape[-1]), y.view(-1))),
        dict(name="attention causal", shape=f"({b},{n_head},{t},{d})",
             inputs=[f32(b, n_head, t, d), f32(b, n_head, t, d), f32(b, n_head, t, d)], grad=[0, 1, 2],
             tiny=F.scaled_dot_product_attention,
             torch=lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True)),
        dict(name="self_attention", shape=f"({b},{t},{3 * c}) h={n_head}", inputs=[f32(b, t, 3 * c)], grad=[0],
             tiny=lambda qkv: F.self_attention(qkv, n_head), torch=torch_self_attention),
    ]


def bench_tinyllm(case, repeats, warmup):
    inputs = [Tensor(a, requires_grad=i in case["grad"]) if a.dtype.kind == "f" else backend.asarray(a)
              for i, a in enumerate(case["inputs"])]
    out = case["tiny"](*inputs)
    upstream = None if out.size == 1 else backend.asarray(
        np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype))

    def forward():
        return case["tiny"](*inputs)

    def forward_backward():
        for x in inputs:
            if isinstance(x, Tensor):
                x.grad = None
        forward().backward(upstream)

    return measure(forward, repeats, warmup), measure(forward_backward, repeats, warmup)


def bench_torch(case, repeats, warmup):
    device = "cuda" if backend.device == "cuda" and torch.cuda.is_available() else "cpu"
    inputs = [torch.tensor(a, device=device, requires_grad=(i in case["grad"] and a.dtype.kind == "f"))
              for i, a in enumerate(case["inputs"])]
    out = case["torch"](*inputs)
    upstream = None if out.numel() == 1 else torch.tensor(
        np.random.default_rng(1).standard_normal(tuple(out.shape)).astype(np.float32), device=device)

    def forward():
        return case["torch"](*inputs)

    def forward_backward():
        for x in inputs:
            x.grad = None
        forward().backward(upstream)

    return measure(forward, repeats, warmup), measure(forward_backward, repeats, warmup)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="B (default 8)")
    parser.add_argument("--time", type=int, default=256, help="T (default 256)")
    parser.add_argument("--channels", type=int, default=384, help="C (default 384)")
    parser.add_argument("--heads", type=int, default=6, help="attention heads (default 6)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size for cross_entropy (default 8192)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="statistic shown in the table (default median; min is steadier on a busy machine)")
    parser.add_argument("--ops", default="", help="comma-separated op names to run (default: all)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)

    use_torch = torch is not None and not args.no_torch
    wanted = [w.strip() for w in args.ops.split(",") if w.strip()]
    tinyllm.manual_seed(0)
    print(f"tinyllm on {backend.device} ({backend.xp.__name__} {backend.xp.__version__}), float32, "
          f"B={args.batch} T={args.time} C={args.channels} H={args.heads} V={args.vocab}; "
          f"{args.stat} of {args.repeats} runs after {args.warmup} warm-up, ms"
          + (f"; PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads" if use_torch else "; no PyTorch"))

    header = f"{'op':<17} {'shape':<24} {'fwd':>8} {'fwd+bwd':>8}"
    if use_torch:
        header += f" {'torch fwd':>9} {'torch f+b':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    results = []
    for case in cases(args.batch, args.time, args.channels, args.heads, args.vocab):
        if wanted and not any(w in case["name"] for w in wanted):
            continue
        pick = 1 if args.stat == "min" else 0
        fwd, both = bench_tinyllm(case, args.repeats, args.warmup)
        row = dict(op=case["name"], shape=case["shape"], fwd_ms=fwd[0], fwd_bwd_ms=both[0],
                   fwd_min_ms=fwd[1], fwd_bwd_min_ms=both[1])
        line = f"{case['name']:<17} {case['shape']:<24} {fwd[pick]:8.2f} {both[pick]:8.2f}"
        if use_torch:
            t_fwd, t_both = bench_torch(case, args.repeats, args.warmup)
            row.update(torch_fwd_ms=t_fwd[0], torch_fwd_bwd_ms=t_both[0], torch_fwd_min_ms=t_fwd[1],
                       torch_fwd_bwd_min_ms=t_both[1], ratio=both[pick] / t_both[pick])
            line += f" {t_fwd[pick]:9.2f} {t_both[pick]:9.2f} {both[pick] / t_both[pick]:6.2f}"
        print(line, flush=True)
        results.append(row)

    if args.json:
        meta = dict(device=backend.device, ratio_statistic=args.stat, dtype="float32", batch=args.batch, time=args.time,
                    channels=args.channels, heads=args.heads, vocab=args.vocab, repeats=args.repeats,
                    warmup=args.warmup, numpy=np.__version__, python=platform.python_version(),
                    torch=torch.__version__ if use_torch else None,
                    torch_threads=torch.get_num_threads() if use_torch else None)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
