"""Example 07: DPO — learn from "this answer is better than that one", with no reward model and no sampling.

    python examples/07_dpo.py                                            # built-in pairs (about 2.3 minutes)
    python examples/07_dpo.py --data preference-data                    # real pairs: polite vs impolite (~2 min)

Runs used and made: the instruction-tuned ``--ckpt``, else runs/instruct (what ``tinyllm finetune instruct
--ckpt runs/demo`` writes; made here first when missing, see ``_instruct_model.py``); the policy is saved in
runs/example-dpo. ``--data`` is optional: without it (or without a ../shared folder) the pairs are built in.

The built-in pairs (generated, offline): an instruction from the built-in tasks, the right answer as
"chosen", and as "rejected" either a wrong answer (off by a little, words in the wrong order, another
field's value) or the right answer buried in chatter ("I think the answer is 7, but I am not sure.").

DPO trains the policy π directly on the pairs, against a frozen copy π_ref of where it started:

    loss = −log σ(β [(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))])

Each bracket is the policy's *implicit reward* β·log π/π_ref of a response; at the start both are 0 and the
loss is log 2 = 0.693. What to look for on the held-out pairs: the preference accuracy (how often the
implicit reward ranks chosen above rejected; 50% at the start, ties counting half) rises well above 50%; the
likelihood accuracy (how often the policy itself finds chosen more likely than rejected) starts wherever the
instruction-tuned model happened to be and need not rise with it. Curves in runs/example-dpo/log.svg.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _instruct_model import instruct_model

from tinyllm.checkpoint import save_model
from tinyllm.data.datasets import resolve_data
from tinyllm.files import append_jsonl
from tinyllm.finetune import FinetuneConfig
from tinyllm.plot import plot_log
from tinyllm.rl import builtin_preferences, encode_preferences, frozen_copy, read_preferences, train_dpo
from tinyllm.rl.data import split_pairs
from tinyllm.rl.dpo import all_pair_log_probs, evaluate_dpo
from tinyllm.rl.logprobs import disable_dropout

parser = argparse.ArgumentParser(description="Direct Preference Optimization (example 07).")
parser.add_argument("--ckpt", default=None, help="instruction-tuned run (default: runs/instruct, made first if missing)")
parser.add_argument("--data", default=None, help="preference pairs, JSONL or JSON, or a dataset name (default: built-in generated pairs)")
parser.add_argument("--limit", type=int, default=600, help="train on at most this many pairs (default: 600)")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--beta", type=float, default=0.1)
parser.add_argument("--lr", type=float, default=1e-4)
parser.add_argument("--out", default="runs/example-dpo")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
if args.data is not None:
    try:
        args.data = str(resolve_data(args.data))           # a file, or a dataset name (downloaded once)
    except (ValueError, OSError) as e:
        parser.error(f"--data {args.data!r}: {e} (leave out --data to use the built-in pairs, or pass "
                     "preference-data)")

policy, tokenizer, path = instruct_model(args.ckpt)
if args.data is None:
    train, val, test = builtin_preferences(600, 40, 200, seed=123)
else:
    train, val, test = split_pairs(read_preferences(args.data))
train = train[:args.limit]
example = test[0]
print(f"{len(train)} training pairs, {len(test)} held-out; e.g.\n  prompt   …{example['prompt'][-70:]!r}\n"
      f"  chosen   {example['chosen'][:70]!r}\n  rejected {example['rejected'][:70]!r}\n")
block = policy.config.block_size
train_ids, val_ids, test_ids = (encode_preferences(split, tokenizer, block) for split in (train, val, test))

disable_dropout(policy)
reference = frozen_copy(policy)
reference_test = all_pair_log_probs(reference, test_ids)
before = evaluate_dpo(policy, test_ids, reference_test, args.beta)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "log.jsonl").unlink(missing_ok=True)
config = FinetuneConfig(epochs=args.epochs, batch_size=8, lr=args.lr, min_lr=args.lr / 10, warmup=10, weight_decay=0.0,
                        log_interval=10, seed=args.seed)
t0 = time.perf_counter()
train_dpo(policy, reference, train_ids, val_ids if len(val_ids) else None, config, args.beta,
          log=lambda record: append_jsonl(out / "log.jsonl", record))
seconds = time.perf_counter() - t0
after = evaluate_dpo(policy, test_ids, reference_test, args.beta)
save_model(out, policy, tokenizer, extra_config={"task": "instruct", "base": str(path),
                                                 "alignment": {"method": "dpo", "beta": args.beta, "data": args.data}})
plot = plot_log(out / "log.jsonl", out / "log.svg", keys=["loss", "margin", "accuracy", "val_accuracy"], title="DPO")

print(f"\nDPO, {len(train)} pairs × {args.epochs} epoch(s) in {seconds:.0f}s; held-out ({len(test)} pairs):")
print(f"  {'':<34} {'before':>8} {'after':>8}")
for key, name in [("accuracy", "preference accuracy (implicit r)"), ("likelihood_accuracy", "likelihood accuracy"),
                  ("margin", "implicit reward margin"), ("loss", "DPO loss")]:
    print(f"  {name:<34} {before[key]:>8.3f} {after[key]:>8.3f}")
if args.data is None:   # which flaw the policy learned to avoid
    chosen, rejected = all_pair_log_probs(policy, test_ids)
    margin = (chosen - reference_test[0]) - (rejected - reference_test[1])
    for flaw in ("wrong", "format"):
        rows = np.array([r["flaw"] == flaw for r in test])
        print(f"  preference accuracy on '{flaw}' pairs: {np.mean(margin[rows] > 0):.3f} ({rows.sum()} pairs)")
print(f"curves: {plot}; the policy is saved in {out}/")
