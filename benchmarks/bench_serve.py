"""Serving throughput: total tokens/s and latency with 1, 4 and 16 concurrent clients of `tinyllm serve`.

    python benchmarks/bench_serve.py --ckpt runs/demo            # the table
    python benchmarks/bench_serve.py --ckpt runs/demo --json out.json
    python benchmarks/bench_serve.py --quick                     # a random mini model, fewer requests

The server runs as `tinyllm serve` in a process of its own on a free localhost port; the clients are
threads of this process that each send ``--requests`` streaming completions one after another, every one asking
for ``--max-tokens`` tokens at temperature 1 (seeded, so runs repeat). Reported per concurrency level:

    tokens/s     all generated tokens (from each response's usage) / wall time of the level
    latency      seconds from sending a request to its last event: median, p90, max
    first token  seconds to the first streamed text: median

With continuous batching, C concurrent clients share each decode step, so the total tokens/s grows with C
while each client's own speed drops much less than C-fold. ``--max-batch`` caps the rows per step (more
clients than rows wait in the queue). On a shared machine numbers are noisy; run twice if one looks odd.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np


def one_request(url, model_id, prompt, max_tokens, seed):
    """(latency, time to first text, completion tokens) of one streamed completion."""
    body = {"model": model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed,
            "stream": True}
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start_time, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start_time
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - start_time
    return latency, first if first is not None else latency, tokens


def run_level(url, model_id, clients, requests, max_tokens, prompts):
    results, threads = [], []

    def client(c):
        for r in range(requests):
            results.append(one_request(url, model_id, prompts[(c + r) % len(prompts)], max_tokens, 1000 * c + r))

    t0 = time.perf_counter()
    for c in range(clients):
        threads.append(threading.Thread(target=client, args=(c,)))
        threads[-1].start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latency, first, tokens = (np.array(x) for x in zip(*results))
    return {"clients": clients, "requests": len(results), "tokens": int(tokens.sum()), "seconds": wall,
            "tokens_per_s": tokens.sum() / wall, "latency_p50": float(np.median(latency)),
            "latency_p90": float(np.percentile(latency, 90)), "latency_max": float(latency.max()),
            "first_token_p50": float(np.median(first))}


def start_server(ckpt, max_batch):
    """`tinyllm serve` in its own process (so the clients' threads do not share its interpreter), on a free
    port; returns (process, base URL) once it answers."""
    command = [sys.executable, "-m", "tinyllm", "serve", "--ckpt", str(ckpt), "--port", "0", "--quiet",
               "--max-batch", str(max_batch), "--max-queue", "256"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()                        # "serving 'NAME' (...) at http://HOST:PORT/ — ..."
    match = re.search(r"at (http://[^/\s]+)/", line)
    if match is None:
        process.kill()
        raise RuntimeError(f"tinyllm serve did not start: {line}{process.stderr.read()}")
    return process, match.group(1)


def quick_run(directory):
    """A random 'mini'-shaped model with a small BPE tokenizer, saved as a run (for --quick)."""
    from tinyllm.checkpoint import save_model
    from tinyllm.data.text import builtin_corpus
    from tinyllm.model import GPT, preset
    from tinyllm.tokenizer import BPETokenizer
    tokenizer = BPETokenizer.train(builtin_corpus()[:50_000], 512, special_tokens=("<|endoftext|>",))
    save_model(directory, GPT(preset("micro", vocab_size=tokenizer.vocab_size)), tokenizer)
    return directory


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="runs/demo", help="run to serve (default: runs/demo)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens asked for per request")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    parser.add_argument("--quick", action="store_true", help="a random micro model and 1 request per client")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    ckpt = quick_run(tempfile.mkdtemp() + "/quick") if args.quick else args.ckpt
    requests = 1 if args.quick else args.requests
    server, url = start_server(ckpt, args.max_batch)
    try:
        with urllib.request.urlopen(url + "/v1/models") as response:
            model_id = json.loads(response.read())["data"][0]["id"]
        prompts = ["The", "A class", "To define a function", "The module", "An exception", "The value of"]
        one_request(url, model_id, "warm up", 4, 0)
        rows = [run_level(url, model_id, int(c), requests, args.max_tokens, prompts) for c in args.clients.split(",")]
    finally:
        server.terminate()
        server.wait()
    print(f"tinyllm serve, {ckpt}: {requests} streamed requests per client, {args.max_tokens} tokens each, "
          f"max batch {args.max_batch}")
    print(f"{'clients':>7} {'requests':>8} {'tokens':>7} {'tokens/s':>9} {'latency p50':>12} {'p90':>7} "
          f"{'max':>7} {'first token p50':>16}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['tokens']:>7} {r['tokens_per_s']:>9.1f} "
              f"{r['latency_p50']:>11.2f}s {r['latency_p90']:>6.2f}s {r['latency_max']:>6.2f}s "
              f"{r['first_token_p50']:>15.2f}s")
    if args.json:
        from tinyllm.files import atomic_write_json
        atomic_write_json(args.json, {"ckpt": str(ckpt), "max_tokens": args.max_tokens, "rows": rows})


if __name__ == "__main__":
    main()
