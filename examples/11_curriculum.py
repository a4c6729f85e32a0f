"""Example 11: curriculum learning — does showing the easy windows first help a small GPT?

    python examples/11_curriculum.py                         # built-in text, 3 orders × 2 seeds (about 1 minute)
    python examples/11_curriculum.py --data tiny-shakespeare # any text file or dataset name
    python examples/11_curriculum.py --steps 100 --seeds 1   # a quick look

Three runs per seed, identical in everything (model, initial weights, learning-rate schedule, steps, batch
size: the same compute) except the order of the training windows:

    random       uniformly random windows at every step (what `tinyllm pretrain` does)
    length       windows with short sentences first (`--curriculum length`)
    perplexity   windows a bigram model finds predictable first (`--curriculum perplexity`)

The curricula let in harder windows on a square-root schedule until, halfway through, every window is
available and sampling is uniform (``tinyllm.data.curriculum``). The validation loss is measured on the same
held-out tail of the text for all runs; the curves are drawn together in runs/example-curriculum/curves.svg.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from tinyllm.data.curriculum import curriculum_sampler
from tinyllm.data.datasets import resolve_data
from tinyllm.data.text import builtin_corpus
from tinyllm.data.tokens import read_text, split_train_val, tokenize
from tinyllm.files import atomic_write, read_jsonl
from tinyllm.model import GPT, preset
from tinyllm.plot import line_chart_svg
from tinyllm.tokenizer import BPETokenizer
from tinyllm.train import TrainConfig, evaluate, pretrain

parser = argparse.ArgumentParser(description="Curriculum vs random order at equal compute (example 11).")
parser.add_argument("--data", default=None, help="text file or dataset name (default: Python's help pages)")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--seeds", type=int, default=2, help="runs per order, with seeds 0, 1, ...")
parser.add_argument("--out", default="runs/example-curriculum")
args = parser.parse_args()

text = builtin_corpus() if args.data is None else read_text(resolve_data(args.data))
tokenizer = BPETokenizer.train(text, 1024, pattern="gpt4", special_tokens=("<|endoftext|>",))
train_ids, val_ids = split_train_val(tokenize(text, tokenizer), 0.1)
context, batch = 64, 16
print(f"{len(train_ids):,} training / {len(val_ids):,} validation tokens; {args.steps} steps of {batch}×{context} "
      f"tokens per run\n")

curves, finals = {}, {}
for order in ("random", "length", "perplexity"):
    sampler = None if order == "random" else curriculum_sampler(order, train_ids, context, batch, args.steps, tokenizer)
    for seed in range(args.seeds):
        model = GPT(preset("mini", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=64, n_head=2,
                           block_size=context), seed=seed)
        config = TrainConfig(steps=args.steps, batch_size=batch, lr=2e-3, min_lr=2e-4, warmup=20,
                             eval_interval=max(args.steps // 12, 1), eval_iters=8, sample_tokens=0, seed=seed)
        run = Path(args.out) / f"{order}-{seed}"
        t0 = time.perf_counter()
        pretrain(model, train_ids, val_ids, config, run_dir=run, batch_sampler=sampler, progress=False)
        final = evaluate(model, val_ids, 32, context)["loss"]          # every validation window
        records = [r for r in read_jsonl(run / "log.jsonl") if r["kind"] == "eval"]
        curves[f"{order} (seed {seed})"] = ([r["step"] for r in records], [r["val_loss"] for r in records])
        finals.setdefault(order, []).append(final)
        print(f"{order:10} seed {seed}: validation loss {final:.4f} ({time.perf_counter() - t0:.0f}s)")

print("\nfinal validation loss (all held-out windows), mean over seeds:")
for order, values in finals.items():
    print(f"  {order:10} {np.mean(values):.4f}  ({', '.join(f'{v:.4f}' for v in values)})")
svg = line_chart_svg(curves, title=f"validation loss: random order vs curricula, {args.steps} steps each",
                     ylabel="validation loss")
atomic_write(Path(args.out) / "curves.svg", svg)
print(f"curves: {Path(args.out) / 'curves.svg'}")
