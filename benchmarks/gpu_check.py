"""Every GPU figure tinyllm reports, from one command, in at most six minutes.

    bash benchmarks/gpu_check.sh              # from the repository root, on a machine with an NVIDIA GPU
    bash benchmarks/gpu_check.sh --dry-run    # the same script on the CPU with tiny sizes (the suite runs this)
    OUT=somewhere bash benchmarks/gpu_check.sh

Needs CuPy (any cupy-cuda1Nx wheel), PyTorch with CUDA, NumPy, regex and pytest already installed; it installs
and downloads nothing (tinyllm is used from this checkout through PYTHONPATH). The parts, each in its own
subprocess with its own time cap, so that a slow part cannot eat the others' time:

1. ``versions``    the GPU, its driver, CuPy, PyTorch, NumPy.
2. ``suite``       the test suite on the GPU (``TINYLLM_DEVICE=cuda pytest -x -q``). It also warms CuPy's
                   kernel cache (compiled kernels are kept on disk) for the timings after it.
3. ``train-*``     a training step (forward, backward, clip, AdamW; float32, batch 8) of the medium model
                   (6×384, T=256) and of GPT-2 small's shape (124M, T=1024), tinyllm beside PyTorch eager on
                   the same GPU: ms/step and the ratio tinyllm / PyTorch (target ≤ 1.5; the goal is parity).
4. ``decode-b*``   decoding with the KV cache, GPT-2 small's shape, context 128: tokens/s at batch 1 and 16,
                   beside the same model in PyTorch with a hand-written cache.
5. ``shakespeare`` nanoGPT's character-level Tiny Shakespeare recipe (README) on the GPU: final validation
                   loss and wall time. The text is ``--data``, else ../shared/data/tinyshakespeare.txt, else
                   the ``tiny-shakespeare`` dataset if ``tinyllm data get`` has cached it.

Output: ``$OUT/gpu_check.json`` (everything, with each part's command, exit code, time and output tail) and
``$OUT/summary.txt`` (the lines to quote); ``$OUT`` defaults to ``gpu-results``. A part that fails or runs out
of time is reported as such and the others still run; the exit code is 0 only when every part succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PY = sys.executable


def parts(dry: bool, out: Path, data) -> list[dict]:
    """name, command, time cap (s) and extra environment of each part; tiny sizes on the CPU for a dry run."""
    device = "strict" if dry else "cuda"
    train_models = [("train-tiny", "tiny", 60)] if dry else [("train-medium", "medium", 45),
                                                           ("train-gpt2", "gpt2", 75)]
    decode = ["--model", "tiny", "--quick"] if dry else ["--model", "gpt2", "--new-tokens", "33", "--repeats", "2"]
    return [
        dict(name="versions", cap=20, cmd=[PY, "-c", VERSIONS, device]),
        dict(name="suite", cap=60 if dry else 100, env={"TINYLLM_DEVICE": device},
             cmd=[PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
             + (["tests/test_strict.py"] if dry else [])),
        *[dict(name=name, cap=cap, cmd=[PY, str(BENCH / "bench_train.py"), "--device", device, "--models", model,
                                        "--steps", "2" if dry else "5", "--json", str(out / f"{name}.json")])
          for name, model, cap in train_models],
        *[dict(name=f"decode-b{batch}", cap=30, cmd=[PY, str(BENCH / "bench_generate.py"), "--device", device,
                                                     "--batch", str(batch), "--contexts", "16" if dry else "128",
                                                     "--cached-only", "--json", *decode])
          for batch in (1, 16)],
        dict(name="shakespeare", cap=55, cmd=shakespeare_command(dry, device, out / "shakespeare", data)),
    ]   # the caps add up to 355 s: with the startup of each part, the whole check stays under six minutes


VERSIONS = r"""
import json, platform, subprocess, sys
import numpy
info = {"python": platform.python_version(), "numpy": numpy.__version__, "device": sys.argv[1]}
try:
    info["nvidia-smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
except (OSError, subprocess.TimeoutExpired) as e:
    info["nvidia-smi"] = f"unavailable ({e.__class__.__name__})"
try:
    import cupy
    info["cupy"] = cupy.__version__
    if sys.argv[1] == "cuda":
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
except ImportError:
    info["cupy"] = None
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.cuda.is_available()
except ImportError:
    info["torch"] = None
print(json.dumps(info))
"""


def shakespeare_command(dry: bool, device: str, out: Path, data) -> list[str]:
    """The README's recipe (benchmarks/bench_shakespeare.py), on ``device``; a 20-step sketch of it when dry."""
    sys.path.insert(0, str(BENCH))
    from bench_shakespeare import tinyllm_command
    text = shakespeare_text(data)
    command = tinyllm_command(text or "builtin", out, 1337) + ["--device", device]
    if text is None:                                     # the built-in text: drop "--data builtin"
        i = command.index("--data")
        del command[i:i + 2]
    if dry:
        command += ["--steps", "20", "--eval-interval", "10", "--eval-iters", "2", "--n-layer", "1",
                    "--n-embd", "16", "--n-head", "2"]
    return command


def shakespeare_text(data):
    """The Tiny Shakespeare file to train on, or None (then the recipe runs on the built-in text)."""
    candidates = [data, ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"]
    try:
        sys.path.insert(0, str(ROOT))
        from tinyllm.data.datasets import cache_dir, get_dataset
        dataset = get_dataset("tiny-shakespeare")
        candidates += [cache_dir() / dataset.name / f.name for f in dataset.files]
    except Exception:                                    # an older checkout without the dataset registry
        pass
    return next((str(p) for p in candidates if p and Path(p).is_file()), None)


def run_part(part: dict) -> dict:
    """Run one part under its time cap; its exit code, seconds and the tail of its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **part.get("env", {})}
    start = time.perf_counter()
    try:
        done = subprocess.run(part["cmd"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=part["cap"])
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc, output = "timeout", _text(e.stdout) + _text(e.stderr)
    return {"command": " ".join(map(str, part["cmd"])), "cap_s": part["cap"], "rc": rc,
            "seconds": round(time.perf_counter() - start, 1), "output_tail": output[-3000:]}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


# ------------------------------------------------------------------------- reading each part's figures

def figures(name: str, result: dict, out: Path) -> dict:
    """The numbers a part produced (empty when it produced none)."""
    tail = result["output_tail"]
    try:
        if name == "versions":
            return json.loads(tail.strip().splitlines()[-1])
        if name == "suite":
            counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
            if not counts:                           # stopped by its cap: count the progress dots so far
                dots = "".join(re.findall(r"^[.sxXFE]+", tail, re.M))
                counts = {"passed before the cap": dots.count("."), "failed": dots.count("F") + dots.count("E")}
            seconds = re.findall(r" in ([\d.]+)s", tail)
            return {**counts, **({"seconds": float(seconds[-1])} if seconds else {})}
        if name.startswith("train-"):
            return train_figures(json.loads((out / f"{name}.json").read_text()))
        if name.startswith("decode-"):
            report = json.loads(tail[tail.index("{"):])
            row = report["rows"][0]
            return {"batch": report["batch"], "context": row["context"], "tinyllm_tok_s": row["cached_tok_s"],
                    "torch_tok_s": row.get("torch_cached_tok_s")}
        if name == "shakespeare":
            return shakespeare_figures(out / "shakespeare" / "log.jsonl")
    except (ValueError, KeyError, IndexError, OSError):
        return {}
    return {}


def train_figures(results: list) -> dict:
    by_framework = {r["framework"]: r for r in results}
    tiny, torch = by_framework["tinyllm"], by_framework.get("torch")
    found = {"model": tiny["model"], "tinyllm_ms": tiny["ms_per_step"], "tinyllm_gpu_mb": tiny.get("gpu_mb")}
    if torch:
        found.update(torch_ms=torch["ms_per_step"], torch_gpu_mb=torch.get("gpu_mb"),
                     ratio=tiny["ms_per_step"] / torch["ms_per_step"])
    return found


def shakespeare_figures(log: Path) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("kind") == "eval"]
    steps = [r["step"] for r in records if r.get("kind") == "train"]
    return {"last_step": max(steps, default=0), "val_loss": evals[-1]["val_loss"] if evals else None,
            "train_tokens_per_s": next((r["tokens_per_s"] for r in reversed(records) if "tokens_per_s" in r), None)}


# ------------------------------------------------------------------------------------------ summary

def summary_lines(report: dict) -> list[str]:
    parts = report["parts"]
    lines = [f"tinyllm GPU check{' (DRY RUN on the CPU, tiny sizes)' if report['dry_run'] else ''}: "
             f"{report['started']}, {report['seconds']:.0f} s in all"]
    v = parts.get("versions", {}).get("figures", {})
    lines.append(f"machine: {v.get('gpu') or v.get('nvidia-smi')}; CuPy {v.get('cupy')}, PyTorch {v.get('torch')} "
                 f"(CUDA available: {v.get('torch_cuda')}), NumPy {v.get('numpy')}")
    for name, part in parts.items():
        if name != "versions":
            lines.append(f"{name:12} {_status(part):10} {_describe(name, part.get('figures', {}))}")
    return lines


def _status(part: dict) -> str:
    rc = part["rc"]
    return "ok" if rc == 0 else ("TIMEOUT" if rc == "timeout" else f"FAILED rc={rc}") + f" ({part['seconds']:.0f}s)"


def _describe(name: str, f: dict) -> str:
    if not f:
        return ""
    if name == "suite":
        return ", ".join(f"{n} {k}" for k, n in f.items() if k != "seconds")
    if name.startswith("train-"):
        torch = f" vs PyTorch {f['torch_ms']:.1f} ms: ratio {f['ratio']:.2f}x (target <= 1.5)" if "ratio" in f else ""
        return f"{f['model']}: tinyllm {f['tinyllm_ms']:.1f} ms/step{torch}"
    if name.startswith("decode-"):
        torch = f", PyTorch {f['torch_tok_s']:,.0f}" if f.get("torch_tok_s") else ""
        return f"batch {f['batch']}, context {f['context']}: tinyllm {f['tinyllm_tok_s']:,.0f} tok/s{torch}"
    if name == "shakespeare" and f.get("val_loss") is not None:
        return f"val loss {f['val_loss']:.4f} after {f['last_step']} steps"
    return json.dumps(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU (device 'strict'), tiny sizes")
    parser.add_argument("--data", default=None, help="Tiny Shakespeare text for the recipe")
    parser.add_argument("--only", nargs="+", default=None, help="run only these parts (names as in the output)")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT") or "gpu-results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
    start = time.perf_counter()
    for part in parts(args.dry_run, out, args.data):
        if args.only and part["name"] not in args.only:
            continue
        print(f"[gpu_check] {part['name']} (at most {part['cap']} s) ...", flush=True)
        result = run_part(part)
        result["figures"] = figures(part["name"], result, out)
        report["parts"][part["name"]] = result
        print(f"[gpu_check] {part['name']}: {_status(result)} {_describe(part['name'], result['figures'])}", flush=True)
    report["seconds"] = time.perf_counter() - start
    lines = summary_lines(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(["", *lines, f"(written to {out}/summary.txt and gpu_check.json)"]))
    return 0 if all(p["rc"] == 0 for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
