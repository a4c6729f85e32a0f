"""Example 15: knowledge distillation — a student a quarter of its teacher's size, taught vs trained alone.

    python examples/15_distill.py                  # the teacher is runs/demo (`tinyllm demo`) if it exists
    python examples/15_distill.py --teacher RUN    # or any pretrained run
    python examples/15_distill.py --steps 600      # longer

The student has the teacher's shape at half its width (n_embd and heads halved): the blocks' weights shrink
4×, so the whole model is about a quarter of the teacher. Two copies start from the same random weights and
train for the same steps on the same windows of the teacher's training text:

- alone:      next-token cross-entropy, the one right answer per position (plain pretraining)
- distilled:  T²·KL(teacher ‖ student) of the distributions softened by T, plus α × that cross-entropy
              (Hinton et al. 2015): at every position the teacher says how likely each of the V tokens is

What to look for: the validation loss and perplexity of the student on the next-token task itself (the
distilled student is not scored on the teacher's distributions), with the teacher's as the ceiling. The
distilled student gets a richer signal per step, so it should be ahead at equal steps; each of its steps costs
a forward pass of the teacher too, so the table shows the time as well. About 2.5–3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

from _base_model import base_model

from tinyllm.data.text import builtin_corpus
from tinyllm.data.tokens import split_train_val, tokenize
from tinyllm.distill import distill
from tinyllm.model import GPT
from tinyllm.train import TrainConfig, evaluate, pretrain

parser = argparse.ArgumentParser(description="Knowledge distillation vs training alone (example 15).")
parser.add_argument("--teacher", default=None, help="pretrained run (default: runs/demo, else a tiny one trained here)")
parser.add_argument("--steps", type=int, default=300, help="training steps of each student (default: 300)")
parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature T (default: 2)")
parser.add_argument("--alpha", type=float, default=0.5, help="weight of the hard-label loss (default: 0.5)")
parser.add_argument("--kl", choices=["forward", "reverse"], default="forward", help="KL direction (default: forward)")
parser.add_argument("--seed", type=int, default=1337)
args = parser.parse_args()

teacher, tokenizer, teacher_path = base_model(args.teacher)
ids = tokenize(builtin_corpus(), tokenizer)            # the demo's corpus and split: the teacher's own
train_ids, val_ids = split_train_val(ids, 0.1)
c = teacher.config
student_config = dataclasses.replace(c, n_embd=c.n_embd // 2, n_head=max(c.n_head // 2, 1), dropout=0.0,
                                     n_kv_head=None if c.n_kv_head is None else max(c.n_kv_head // 2, 1))
alone = GPT(student_config, seed=args.seed)
taught = copy.deepcopy(alone)                         # the same starting weights
config = TrainConfig(steps=args.steps, batch_size=16, lr=2e-3, min_lr=2e-4, warmup=30, eval_interval=args.steps,
                     eval_iters=10, log_interval=50, sample_tokens=0, seed=args.seed)
print(f"teacher {teacher.num_parameters():,} parameters; student {alone.num_parameters():,} "
      f"({alone.num_parameters() / teacher.num_parameters():.2f}×); {args.steps} steps of "
      f"{config.batch_size}×{c.block_size} tokens each\n")

print("--- student alone")
alone_summary = pretrain(alone, train_ids, val_ids, config)
print(f"--- student distilled (T = {args.temperature:g}, α = {args.alpha:g}, {args.kl} KL)")
taught_summary = distill(teacher, taught, train_ids, val_ids, config, args.temperature, args.alpha, args.kl)
teacher_val = evaluate(teacher, val_ids, config.batch_size, c.block_size, config.eval_iters)

print(f"\nvalidation, next-token loss ({teacher_val['tokens']:,} tokens)")
print(f"{'model':<20} {'parameters':>11} {'val loss':>9} {'perplexity':>11} {'time':>7}")
for name, model, result, seconds in [("teacher", teacher, teacher_val, None),
                                     ("student alone", alone, alone_summary["last_val"], alone_summary["seconds"]),
                                     ("student distilled", taught, taught_summary["last_val"], taught_summary["seconds"])]:
    took = "" if seconds is None else f"{seconds:.0f}s"
    print(f"{name:<20} {model.num_parameters():>11,} {result['loss']:>9.3f} {result['ppl']:>11.1f} {took:>7}")
