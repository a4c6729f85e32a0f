"""Example 09: GRPO — reinforcement learning from a checker, no reward model, no value model.

    python examples/09_grpo.py                      # counting words (the default task)
    python examples/09_grpo.py --task arithmetic    # another built-in task: add, subtract, count, field, words, all
    python examples/09_grpo.py --steps 20           # a quicker look

Runs used and made: the instruction-tuned ``--ckpt``, else runs/instruct (what ``tinyllm finetune instruct
--ckpt runs/demo`` writes; made here first when missing, see ``_instruct_model.py``); the policy is saved in
runs/example-grpo. The problems are generated: no data files needed.

The task: built-in generated problems with one checkable answer, in the Alpaca template the model was
instruction-tuned on — by default "How many words are in the input?". For each of 16 prompts per step the
policy samples a group of 8 answers; each answer gets reward 1 if it is right (the integer in it equals the
count) plus 0.2 if its format is right (only an integer, then the end token). Its advantage is its reward
minus its group's mean, over the group's std: better-than-its-siblings answers are made more likely, worse
ones less, and the k3 KL penalty keeps the policy near the instruction-tuned start.

What to look for: the held-out greedy accuracy (100 problems never sampled in training) rises from the
instruction-tuned model's; the sampled accuracy ("correct") and the reward rise over the steps while the KL
stays small; groups where every answer scored alike (zero_std_groups) teach nothing. Curves in
runs/example-grpo/log.svg. About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _instruct_model import instruct_model

from tinyllm.checkpoint import save_model
from tinyllm.data.instructions import end_token, format_prompt
from tinyllm.files import append_jsonl
from tinyllm.finetune import generate_responses
from tinyllm.plot import plot_log
from tinyllm.rl import GRPOConfig, RewardFunctions, correctness_reward, format_reward, frozen_copy, train_grpo
from tinyllm.rl.data import encode_text
from tinyllm.rl.tasks import task_accuracy, verifiable_problems

parser = argparse.ArgumentParser(description="GRPO on a verifiable task (example 09).")
parser.add_argument("--ckpt", default=None, help="instruction-tuned run (default: runs/instruct, made first if missing)")
parser.add_argument("--task", default="count", help="built-in task set (default: count)")
parser.add_argument("--steps", type=int, default=40, help="rollout batches (default: 40)")
parser.add_argument("--lr", type=float, default=2e-4, help="learning rate (default: 2e-4)")
parser.add_argument("--out", default="runs/example-grpo")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

model, tokenizer, path = instruct_model(args.ckpt)
train, test = verifiable_problems(args.task, 300, 100, seed=7)
for record in train + test:
    record["prompt"] = format_prompt(record)
print(f"task {args.task!r}: {len(train)} training problems, {len(test)} held-out; e.g. "
      f"{train[0]['instruction']} {train[0]['input']!r} → {train[0]['output']!r}")

end = end_token(tokenizer).id
rewards = RewardFunctions([("correct", correctness_reward, 1.0), ("format", format_reward, 0.2)], tokenizer, train, end)
config = GRPOConfig(steps=args.steps, prompts_per_step=16, group_size=8, lr=args.lr, beta=0.04, max_new_tokens=12,
                    eval_interval=10, log_interval=5, seed=args.seed)
prompts = [encode_text(tokenizer, r["prompt"]) for r in train]
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "log.jsonl").unlink(missing_ok=True)

t0 = time.perf_counter()
summary = train_grpo(model, frozen_copy(model), prompts, rewards, config, end,
                     eval_fn=lambda m: {f"test_{k}": v for k, v in task_accuracy(m, tokenizer, test).items()},
                     log=lambda record: append_jsonl(out / "log.jsonl", record))
seconds = time.perf_counter() - t0
save_model(out, model, tokenizer, extra_config={"task": "instruct", "base": str(path),
                                                     "alignment": {"method": "grpo", "task": args.task}})
plot = plot_log(out / "log.jsonl", out / "log.svg",
                keys=["reward", "correct", "format", "kl", "completion_length", "test_accuracy"], title="GRPO")

history, evals = summary["history"], summary["evals"]
span = min(5, len(history))
first5 = sum(h["correct"] for h in history[:span]) / span
last5 = sum(h["correct"] for h in history[-span:]) / span
print(f"\nGRPO, {args.steps} steps × {config.prompts_per_step} prompts × {config.group_size} answers in {seconds:.0f}s")
curve = ", ".join(f"{e['test_accuracy']:.2f}" for e in evals)
print(f"  held-out greedy accuracy: {evals[0]['test_accuracy']:.2f} → {evals[-1]['test_accuracy']:.2f} "
      f"(every {config.eval_interval} steps: {curve})")
print(f"  sampled accuracy, first {span} steps {first5:.2f} → last {span} steps {last5:.2f}; "
      f"KL (k3/token) at the end {history[-1]['kl']:.4f}")
answers = generate_responses(model, tokenizer, test[:4], 12)
for record, answer in zip(test[:4], answers):
    print(f"  {record['instruction']} {record['input']!r} → {answer!r} (reference {record['output']!r})")
print(f"curves: {plot}; the policy is saved in {out}/")
