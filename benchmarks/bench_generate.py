"""Generation speed: tokens/s with and without the KV cache at several context lengths, float32.

    python benchmarks/bench_generate.py                 # the table (batch 1, CPU)
    python benchmarks/bench_generate.py --json          # the same numbers as JSON
    python benchmarks/bench_generate.py --quick         # fewer repeats, for a smoke test
    python benchmarks/bench_generate.py --blas-threads 1   # one OpenBLAS / PyTorch thread
    python benchmarks/bench_generate.py --device cuda --model gpt2 --batch 16 --contexts 128 --cached-only
    python benchmarks/bench_generate.py --hf DIR --contexts 16 128 --cached-only   # a downloaded Llama/Qwen2/...

The default model is a 6-layer, 6-head, 384-dim GPT with a vocabulary of 8192 and block_size 1024 (random
weights: speed does not depend on what the weights are); ``--model gpt2`` is GPT-2 small's shape (124M).
With ``--batch B`` every step decodes B rows, and tokens/s counts all of them. For each context length L the
prompt has L tokens (at
L = block_size, block_size - new_tokens - 1, so the window does not slide) and greedy decoding produces
``--new-tokens`` more; the time per token is the median gap between consecutive tokens yielded by
``stream_generate`` (the prefill is excluded), over ``--repeats`` runs. "no cache" recomputes the whole
context for every token.

When PyTorch is importable, a minimal PyTorch GPT of the same shapes with a hand-written, preallocated KV
cache decodes the same way, for comparison. With ``--hf DIR`` (a Hugging Face Llama-family directory) tinyllm
decodes with the imported weights and the comparison is ``transformers``' own model on the same files
(``AutoModelForCausalLM``, float32, its KV cache), when transformers is installed.

Timings on a shared machine are noisy: other processes steal cores and OpenBLAS threads then wait for each
other. Medians help; run it twice if a number looks odd.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# --blas-threads must act before NumPy loads OpenBLAS, which reads its thread count once.
if "--blas-threads" in sys.argv[:-1]:
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--blas-threads") + 1]

import numpy as np

import tinyllm
from tinyllm.generate import stream_generate
from tinyllm.model import GPT, GPTConfig

MODELS = {"medium": dict(vocab_size=8192, block_size=1024, n_layer=6, n_head=6, n_embd=384),
          "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
          "tiny": dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32)}


def token_gaps(model, prompt, new_tokens, use_cache):
    """Seconds between consecutive tokens of one greedy run (the prefill, before the first token, excluded)."""
    gaps, last = [], None
    for _token in stream_generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache):
        now = time.perf_counter()
        if last is not None:
            gaps.append(now - last)
        last = now
    return gaps


# ------------------------------------------------------------------------------------------ PyTorch

def torch_per_token_seconds(config, contexts, new_tokens, repeats, batch=1, device="cpu"):
    """A minimal PyTorch GPT (same shapes, tied head, tanh GELU) with a preallocated KV cache."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    C, H, S, V = config["n_embd"], config["n_head"], config["block_size"], config["vocab_size"]
    D = C // H

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.fc_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x, keys, values, start):             # x (B, T, C); keys, values (B, H, S, D)
            B, T = x.shape[:2]
            q, k, v = self.qkv(self.ln_1(x)).view(B, T, 3, H, D).unbind(2)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # (B, H, T, D)
            keys[:, :, start:start + T] = k
            values[:, :, start:start + T] = v
            y = F.scaled_dot_product_attention(q, keys[:, :, :start + T], values[:, :, :start + T], is_causal=T > 1)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(S, C)
            self.blocks = nn.ModuleList(Block() for _ in range(config["n_layer"]))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, cache, start):                  # idx (B, T) → logits of the last position (B, V)
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(start, start + T, device=idx.device))
            for block, (keys, values) in zip(self.blocks, cache):
                x = block(x, keys, values, start)
            return self.ln_f(x[:, -1]) @ self.wte.weight.T

    if os.environ.get("OPENBLAS_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OPENBLAS_NUM_THREADS"]))
    torch.manual_seed(0)
    model = TorchGPT().eval().to(device)
    with torch.no_grad():
        gaps = {context: [] for context in contexts}
        for _ in range(repeats):                       # contexts interleaved, so load changes hit them all alike
            for context in contexts:
                cache = [(torch.zeros(batch, H, S, D, device=device), torch.zeros(batch, H, S, D, device=device))
                         for _ in range(config["n_layer"])]
                prompt = torch.randint(0, V, (batch, context), device=device)
                token = model(prompt, cache, 0).argmax(-1, keepdim=True)          # prefill
                for step in range(new_tokens - 1):
                    t0 = time.perf_counter()
                    token = model(token, cache, context + step).argmax(-1, keepdim=True)
                    token.tolist()                                                  # as generate hands out ints
                    gaps[context].append(time.perf_counter() - t0)
        results = {context: float(np.median(g)) for context, g in gaps.items()}
    return results, torch.__version__, torch.get_num_threads()


def transformers_per_token_seconds(directory, contexts, new_tokens, repeats, batch=1):
    """Greedy decoding with transformers' own model on the same files: seconds per token at each context."""
    import torch
    import transformers

    if os.environ.get("OPENBLAS_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OPENBLAS_NUM_THREADS"]))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    gaps = {context: [] for context in contexts}
    with torch.no_grad():
        for _ in range(repeats):
            for context in contexts:
                prompt = torch.randint(0, vocab, (batch, context))
                out = model(prompt, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                for _step in range(new_tokens - 1):
                    t0 = time.perf_counter()
                    out = model(token, past_key_values=cache, use_cache=True)
                    cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                    token.tolist()
                    gaps[context].append(time.perf_counter() - t0)
    medians = {context: float(np.median(g)) for context, g in gaps.items()}
    return medians, transformers.__version__, torch.get_num_threads()


# ----------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="medium",
                        help="medium (6×384, vocab 8192), gpt2 (GPT-2 small's shape, 124M) or tiny (smoke tests)")
    parser.add_argument("--hf", default=None, metavar="DIR",
                        help="time a Hugging Face Llama/Qwen2/Mistral/Mixtral directory instead (its weights, and "
                             "transformers on the same files as the comparison)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None,
                        help="context lengths to measure (default: 16 128 512 and the block size)")
    parser.add_argument("--batch", type=int, default=1, help="rows decoded together (default 1)")
    parser.add_argument("--device", choices=["cpu", "cuda", "strict"], default="cpu",
                        help="tinyllm's device; PyTorch runs on cuda for cuda, else on the CPU")
    parser.add_argument("--new-tokens", type=int, default=17, help="tokens generated per run, cached (default 17)")
    parser.add_argument("--new-tokens-uncached", type=int, default=4,
                        help="tokens generated per run without the cache, which is slow (default 4)")
    parser.add_argument("--cached-only", action="store_true", help="skip decoding without the cache")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, fewer tokens: a smoke test")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="threads for OpenBLAS (and PyTorch); default: the libraries' own choice. On a busy "
                             "machine 1 can be much faster at batch 1: multi-threaded small matmuls wait for each other")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.new_tokens, args.new_tokens_uncached = 1, 6, 3
    tinyllm.set_device(args.device)
    if args.hf:
        from tinyllm.interop.hf_llama import load_hf_llama
        model = load_hf_llama(args.hf)[0]
        config = {key: getattr(model.config, key) for key in ("vocab_size", "block_size", "n_layer", "n_head",
                                                              "n_kv_head", "n_embd", "mlp_hidden")}
    else:
        config = MODELS[args.model]
        model = GPT(GPTConfig(**config), seed=0).eval()
    block_size = config["block_size"]
    contexts = args.contexts or [c for c in (16, 128, 512) if c < block_size] + [block_size]
    rng = np.random.default_rng(0)
    prompts = {c: rng.integers(0, config["vocab_size"], (args.batch, min(c, block_size - args.new_tokens - 1))).tolist()
               for c in contexts}
    prompts = {c: p[0] if args.batch == 1 else p for c, p in prompts.items()}
    gaps = {(c, cached): [] for c in contexts for cached in (True, False)}
    for _ in range(args.repeats):                      # contexts interleaved, so load changes hit them all alike
        for context, prompt in prompts.items():
            gaps[context, True] += token_gaps(model, prompt, args.new_tokens, use_cache=True)
            if not args.cached_only:
                gaps[context, False] += token_gaps(model, prompt, args.new_tokens_uncached, use_cache=False)
    rows = []
    for context, prompt in prompts.items():
        prompt_tokens = len(prompt) if args.batch == 1 else len(prompt[0])
        cached = float(np.median(gaps[context, True]))
        row = {"context": context, "prompt_tokens": prompt_tokens, "cached_ms": cached * 1e3,
               "cached_tok_s": args.batch / cached}
        if not args.cached_only:
            uncached = float(np.median(gaps[context, False]))
            row.update(uncached_ms=uncached * 1e3, uncached_tok_s=args.batch / uncached, speedup=uncached / cached)
        rows.append(row)

    torch_info = None
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            lengths = [r["prompt_tokens"] for r in rows]
            if args.hf:
                torch_times, version, threads = transformers_per_token_seconds(args.hf, lengths, args.new_tokens,
                                                                               args.repeats, args.batch)
            else:
                device = "cuda" if args.device == "cuda" else "cpu"
                torch_times, version, threads = torch_per_token_seconds(config, lengths, args.new_tokens, args.repeats,
                                                                        args.batch, device)
            for row in rows:
                row["torch_cached_ms"] = torch_times[row["prompt_tokens"]] * 1e3
                row["torch_cached_tok_s"] = args.batch * 1e3 / row["torch_cached_ms"]
            torch_info = {"version": version, "threads": threads}

    by_context = {r["context"]: r for r in rows}
    checks = {}
    if 16 in by_context and 512 in by_context and not args.cached_only:
        checks["cached_512_over_16"] = by_context[512]["cached_ms"] / by_context[16]["cached_ms"]
        checks["speedup_at_512"] = by_context[512]["speedup"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None   # other processes competing for the cores
    report = {"model": config, "batch": args.batch, "device": args.device, "dtype": "float32", "numpy": np.__version__, "tinyllm": tinyllm.__version__,
              "cpus": os.cpu_count(), "load_average": load, "blas_threads": args.blas_threads, "repeats": args.repeats, "rows": rows, "torch": torch_info,
              "checks": checks}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    print(f"generation on {args.device}, batch {args.batch}, float32: {args.hf or 'GPT'} {config['n_layer']} layers × "
          f"{config['n_embd']} dims, vocab {config['vocab_size']}, block_size {block_size}; median of "
          f"{args.repeats} runs, {os.cpu_count()} CPUs"
          + (f", load average {load:.1f}" if load is not None else "")
          + (f", {args.blas_threads} BLAS thread(s)" if args.blas_threads else ""))
    header = f"{'context':>8} {'cache ms/step':>14} {'tok/s':>8}"
    if not args.cached_only:
        header += f" {'no-cache ms/step':>17} {'tok/s':>7} {'speedup':>8}"
    if torch_info:
        header += f" {'torch cache ms/step':>20} {'tok/s':>8}"
    print(header)
    for r in rows:
        line = f"{r['context']:>8} {r['cached_ms']:>14.2f} {r['cached_tok_s']:>8.1f}"
        if not args.cached_only:
            line += f" {r['uncached_ms']:>17.1f} {r['uncached_tok_s']:>7.2f} {r['speedup']:>7.1f}×"
        if torch_info:
            line += f" {r['torch_cached_ms']:>20.2f} {r['torch_cached_tok_s']:>8.1f}"
        print(line)
    if torch_info and args.hf:
        print(f"(\"torch\": transformers {torch_info['version']}'s own model on the same files, "
              f"{torch_info['threads']} threads, its KV cache)")
    elif torch_info:
        print(f"(PyTorch {torch_info['version']}, {torch_info['threads']} threads, same shapes, hand-written KV cache)")
    if checks:
        ratio, speedup = checks["cached_512_over_16"], checks["speedup_at_512"]
        print(f"cached per-token time at 512 / at 16: {ratio:.2f} (target ≤ 1.5)   "
              f"cache speedup at 512: {speedup:.1f}× (target ≥ 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
