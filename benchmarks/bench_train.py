"""Training-step speed: tinyllm vs PyTorch eager on the same GPT shapes.

    python benchmarks/bench_train.py                 # all models below, float32, batch 8
    python benchmarks/bench_train.py --models llama-mini moe-mini --json out.json --steps 5
    python benchmarks/bench_train.py --models medium --rounds 5    # alternate tinyllm/torch 5 times, median
    python benchmarks/bench_train.py --rounds 8 --baseline /tmp/before   # this checkout against another one

For each model it times full training steps (forward + backward + gradient clipping + AdamW) after a
warm-up step and reports the median ms/step, tokens/s and the peak resident memory of a process that did
only that. Each measurement runs in its own subprocess so that peak RSS belongs to one framework and one
model. When PyTorch is installed, an equivalent eager PyTorch GPT (same shapes, same initial weights, same
AdamW settings) is timed too, and the ratio tinyllm / PyTorch is printed (below 1 means tinyllm is faster).

The Llama-style model (RMSNorm, rotary positions, SwiGLU, grouped-query attention, no biases) is compared
with a PyTorch Llama block written the usual way (``F.rms_norm``, rotate-half RoPE, ``scaled_dot_product_attention``
with ``enable_gqa``); the mixture-of-experts model with a PyTorch MoE routed the same way (softmax → top-k →
renormalised weights, a loop over experts with ``index_add_``, the same load-balancing loss). Both start from
tinyllm's weights, so their first losses agree (printed as a check).

``--baseline DIR`` times a second tinyllm checkout (say ``git worktree add /tmp/before <commit>``) in
every round too, right beside this one, and prints the median over rounds of this checkout's step time
divided by the baseline's. On a noisy machine whole runs a few minutes apart differ by more than a
small change does; steps timed back to back in the same round share the machine's mood, so their
ratio is the fair measure of whether a change made training slower.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = {
    # name: GPTConfig fields (batch 8 for all)
    "mini": dict(n_layer=6, n_head=6, n_embd=192, block_size=256, vocab_size=8192),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192),
    # the llama-mini and moe-mini presets at this vocabulary
    "llama-mini": dict(n_layer=6, n_head=6, n_kv_head=3, n_embd=192, block_size=256, vocab_size=8192,
                       norm="rmsnorm", pos="rope", mlp="swiglu", bias=False),
    "moe-mini": dict(n_layer=6, n_head=6, n_kv_head=3, n_embd=192, block_size=256, vocab_size=8192,
                     norm="rmsnorm", pos="rope", mlp="moe", n_expert=4, expert_top_k=2, bias=False),
    # GPT-2 small (124M), for a GPU; and a tiny model for smoke tests (gpu_check.sh --dry-run)
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256),
}
DEFAULT_MODELS = ["mini", "medium", "llama-mini", "moe-mini"]
BATCH = 8
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")  # set by --device; the workers read it from the environment
TORCH_DEVICE = "cuda" if DEVICE == "cuda" else "cpu"   # device 'strict' is NumPy under CuPy's rules: torch on cpu


def tinyllm_step_fn(config, seed=0):
    import tinyllm                             # before NumPy: see OPENBLAS_THREAD_TIMEOUT in tinyllm/__init__.py
    import numpy as np
    from tinyllm.model import GPT, GPTConfig
    from tinyllm.optim import AdamW, clip_factor, grad_norm
    from tinyllm.train import forward_backward, param_groups

    tinyllm.set_device(DEVICE)
    model = GPT(GPTConfig(**config), seed=seed)
    optimizer = AdamW(param_groups(model, 0.1), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, config["vocab_size"], (BATCH, config["block_size"]))
    y = rng.integers(0, config["vocab_size"], (BATCH, config["block_size"]))

    def step():                                # what `tinyllm pretrain` does per step
        loss = forward_backward(model, x, y)     # batch split over the CPU cores (parallel.data_parallel)
        optimizer.step(grad_scale=clip_factor(grad_norm(optimizer.parameters()), 1.0))   # clip at 1.0, folded in
        model.zero_grad()
        return loss
    return step, model


def torch_training_step(model, config, seed):
    """The PyTorch twin of tinyllm_step_fn's step: same batch, same AdamW groups and settings, same clipping."""
    import numpy as np
    import torch

    model.to(TORCH_DEVICE)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-4, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, config["vocab_size"], (BATCH, config["block_size"]))).to(TORCH_DEVICE)
    y = torch.from_numpy(rng.integers(0, config["vocab_size"], (BATCH, config["block_size"]))).to(TORCH_DEVICE)

    def step():
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def torch_step_fn(config, seed=0):
    """A minimal nanoGPT-style model in PyTorch eager, initialised from tinyllm's weights."""
    if config.get("pos") == "rope":
        return torch_llama_step_fn(config, seed)
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, c, h):
            super().__init__()
            self.h = h
            self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
            self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
            self.fc, self.fc_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
            return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.wte = nn.Embedding(cfg["vocab_size"], cfg["n_embd"])
            self.wpe = nn.Embedding(cfg["block_size"], cfg["n_embd"])
            self.blocks = nn.ModuleList(Block(cfg["n_embd"], cfg["n_head"]) for _ in range(cfg["n_layer"]))
            self.ln_f = nn.LayerNorm(cfg["n_embd"])

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.blocks:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    from tinyllm.backend import to_numpy
    _, tiny = tinyllm_step_fn(config, seed)
    model = TorchGPT(config)
    names = {"blocks.{i}.mlp.fc": "blocks.{i}.fc", "blocks.{i}.mlp.proj": "blocks.{i}.fc_proj",
             "blocks.{i}.attn.qkv": "blocks.{i}.qkv", "blocks.{i}.attn.proj": "blocks.{i}.proj"}
    state = {}
    for name, array in tiny.state_dict().items():
        torch_name = name
        for pattern, target in names.items():
            for i in range(config["n_layer"]):
                torch_name = torch_name.replace(pattern.format(i=i) + ".", target.format(i=i) + ".")
        state[torch_name] = torch.from_numpy(to_numpy(array))
    model.load_state_dict(state)
    return torch_training_step(model, config, seed), model


def torch_llama_step_fn(config, seed=0):
    """A Llama-style model (and its MoE variant) in PyTorch eager, with tinyllm's parameter names and weights."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from tinyllm.model import GPTConfig

    cfg = GPTConfig(**config)
    C, H, KV, D, hidden = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_size, cfg.hidden_size

    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(C))

        def forward(self, x):
            return F.rms_norm(x, (C,), self.weight, cfg.norm_eps)

    inv_freq = cfg.rope_theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(cfg.block_size, dtype=torch.float64)[:, None] * inv_freq      # (T, D/2)
    cos, sin = angles.cos().float().to(DEVICE), angles.sin().float().to(DEVICE)

    def rotate(x):                                            # rotate-half RoPE on (B, H, T, D)
        t = x.shape[2]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        c, s = cos[:t], sin[:t]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(C, (H + 2 * KV) * D, bias=False), nn.Linear(C, C, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).split([H * D, KV * D, KV * D], dim=2)
            q, k, v = (z.view(b, t, -1, D).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True, enable_gqa=KV < H)
            return self.proj(y.transpose(1, 2).reshape(b, t, C))

    class SwiGLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.up = nn.Linear(C, hidden, bias=False), nn.Linear(C, hidden, bias=False)
            self.proj = nn.Linear(hidden, C, bias=False)

        def forward(self, x):
            return self.proj(F.silu(self.gate(x)) * self.up(x))

    class Stacked(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(shape))

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            E = cfg.n_expert
            self.router = nn.Linear(C, E, bias=False)
            self.experts = nn.Module()
            self.experts.gate, self.experts.up = Stacked((E, hidden, C)), Stacked((E, hidden, C))
            self.experts.proj = Stacked((E, C, hidden))

        def forward(self, x):
            b, t, _ = x.shape
            E, k = cfg.n_expert, cfg.expert_top_k
            flat = x.reshape(-1, C)
            probs = F.softmax(self.router(flat), dim=-1)                    # (N, E)
            weights, idx = torch.topk(probs, k, dim=-1)                     # (N, k)
            if k > 1:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            out = torch.zeros_like(flat)
            for e in range(E):
                token, slot = torch.where(idx == e)
                if token.numel():
                    xe = flat[token]
                    h = F.silu(xe @ self.experts.gate.weight[e].T) * (xe @ self.experts.up.weight[e].T)
                    out.index_add_(0, token, (h @ self.experts.proj.weight[e].T) * weights[token, slot, None])
            fraction = torch.bincount(idx.flatten(), minlength=E).float() / idx.numel()
            self.aux = E * (fraction * probs.mean(dim=0)).sum()
            return out.view(b, t, C)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = Norm(), Attention(), Norm()
            self.mlp = MoE() if cfg.mlp == "moe" else SwiGLU()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchLlama(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, C)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = Norm()

        def forward(self, idx, targets):
            x = self.wte(idx)
            for block in self.blocks:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            if cfg.mlp == "moe":
                loss = loss + cfg.aux_loss_coef * sum(block.mlp.aux for block in self.blocks)
            return loss

    from tinyllm.backend import to_numpy
    _, tiny = tinyllm_step_fn(config, seed)
    model = TorchLlama()
    model.load_state_dict({name: torch.from_numpy(to_numpy(a)) for name, a in tiny.state_dict().items()})
    return torch_training_step(model, config, seed), model


def worker(framework, model_name, steps):
    config = MODELS[model_name]
    step, model = (tinyllm_step_fn if framework == "tinyllm" else torch_step_fn)(config)
    first_loss = step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = _peak_gpu_mb(framework)
    n_params = sum(int(p.numel() if hasattr(p, "numel") else p.size) for p in model.parameters())
    active = model.active_parameters() if hasattr(model, "active_parameters") else None
    print(json.dumps({"framework": framework, "model": model_name, "ms_per_step": ms, "min_ms": min(times) * 1e3,
                      "tokens_per_s": BATCH * config["block_size"] / (ms / 1e3), "peak_rss_mb": peak_mb,
                      "gpu_mb": gpu_mb, "device": DEVICE,
                      "params": n_params, "active_params": active, "first_loss": first_loss}))


def _peak_gpu_mb(framework):
    """GPU memory the framework held for the steps: CuPy's pool (what it keeps allocated), PyTorch's peak."""
    if DEVICE != "cuda":
        return None
    if framework == "torch":
        import torch
        return torch.cuda.max_memory_allocated() / 2**20
    import cupy
    return cupy.get_default_memory_pool().total_bytes() / 2**20


def run_worker(framework, model_name, args) -> dict:
    """One measurement in a fresh process: this checkout's tinyllm or PyTorch, or ('baseline') the
    tinyllm of the checkout ``args.baseline`` through its own copy of this script."""
    root, name = os.path.dirname(os.path.dirname(os.path.abspath(__file__))), framework
    if framework == "baseline":
        root, framework = os.path.abspath(args.baseline), "tinyllm"
    script = os.path.join(root, "benchmarks", "bench_train.py")
    env = {**os.environ, "BENCH_DEVICE": args.device,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, script, "--worker", framework, model_name, "--steps", str(args.steps)],
                         capture_output=True, text=True, env=env, cwd=root)
    if out.returncode:
        sys.exit(f"{name} / {model_name} ({root}) failed:\n{out.stderr}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "framework": name}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS),
                        help=f"default: {' '.join(DEFAULT_MODELS)} (gpt2, the 124M shape, is for a GPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "strict"],
                        help="cuda: tinyllm on CuPy and PyTorch on the same GPU (loss.item() syncs each step); "
                             "strict: tinyllm under CuPy's rules on the CPU (a smoke test), PyTorch on the CPU")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each framework this many times, alternating, and report the median round "
                             "(a shared or noisy machine needs 3 or more)")
    parser.add_argument("--baseline", metavar="DIR", default=None,
                        help="another tinyllm checkout to time in every round beside this one (its own "
                             "benchmarks/bench_train.py runs the steps); prints this / baseline per model")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.steps)
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "benchmarks", "bench_train.py")):
        parser.error(f"--baseline {args.baseline}: no benchmarks/bench_train.py there (not a tinyllm checkout?)")

    try:
        import torch  # noqa: F401
        frameworks = ["tinyllm", "torch"]
    except ImportError:
        frameworks = ["tinyllm"]
        print("(PyTorch is not installed: timing tinyllm only)")
    if args.baseline:
        frameworks.insert(1, "baseline")
    results, paired = [], {}
    for model_name in args.models:
        rounds = {framework: [] for framework in frameworks}
        for i in range(args.rounds):  # alternate the order so that a busy spell on the machine hits all
            for framework in frameworks if i % 2 == 0 else frameworks[::-1]:
                rounds[framework].append(run_worker(framework, model_name, args))
        for framework, runs in rounds.items():
            times = [r["ms_per_step"] for r in runs]
            median_run = sorted(runs, key=lambda r: r["ms_per_step"])[(len(runs) - 1) // 2]
            results.append({**median_run, "rounds_ms_per_step": times})
        if args.baseline:
            paired[model_name] = [a["ms_per_step"] / b["ms_per_step"]
                                  for a, b in zip(rounds["tinyllm"], rounds["baseline"])]

    print(f"\ntraining step (forward + backward + clip + AdamW) on {args.device}, batch {BATCH}, float32, "
          f"median of {args.steps} steps"
          + (f", median of {args.rounds} alternating rounds (each round's ms/step in the JSON)" if args.rounds > 1 else ""))
    print("(MoE: params counts every expert; a token uses the active ones: top-k of n_expert experts per layer)")
    memory = "GPU MB" if args.device == "cuda" else "peak RSS MB"
    print(f"{'model':10} {'params':>11} {'active':>11} {'framework':10} {'ms/step':>9} {'tokens/s':>10} {memory:>12} "
          f"{'vs torch':>9} {'first loss':>11}")
    for r in results:
        torch_ms = next((t["ms_per_step"] for t in results if t["framework"] == "torch" and t["model"] == r["model"]), None)
        ratio = f"{r['ms_per_step'] / torch_ms:.2f}x" if torch_ms and r["framework"] != "torch" else ""
        active = r.get("active_params") or next((t.get("active_params") for t in results
                                                 if t["model"] == r["model"] and t.get("active_params")), r["params"])
        print(f"{r['model']:10} {r['params']:>11,} {active:>11,} {r['framework']:10} {r['ms_per_step']:>9.0f} "
              f"{r['tokens_per_s']:>10,.0f} {r['gpu_mb'] or r['peak_rss_mb']:>12,.0f} {ratio:>9} {r['first_loss']:>11.5f}")
    if paired:
        print(f"\nthis checkout / baseline ({args.baseline}), step time in the same round "
              "(below 1 means this checkout is faster)")
        for model_name, ratios in paired.items():
            print(f"{model_name:10} median {statistics.median(ratios):.3f}   rounds: "
                  + " ".join(f"{r:.3f}" for r in ratios))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "vs_baseline": paired} if paired else results, f, indent=2)


if __name__ == "__main__":
    main()
