"""Example 14: steer a frozen GPT from in front of the text — prompt tuning and prefix tuning vs LoRA vs full.

    python examples/14_prompt_tuning.py                       # SMS spam (downloaded once), from runs/demo if it exists
    python examples/14_prompt_tuning.py --data FILE           # your own label<TAB>text file
    python examples/14_prompt_tuning.py --ckpt RUN --epochs 5 # any pretrained run, longer

The task: is an SMS message spam? (the SMS Spam Collection, balanced to 747 messages of each class, split
70/10/20). A new Linear layer reads the hidden state of the message's last token and gives 2 scores, as in
example 05. What differs is what learns:

- full:            every weight (AdamW keeps 2 moments for each)
- LoRA r=8:        rank-8 matrices A, B beside each Linear of attention and the MLP, and the head
- prompt tuning:   20 virtual tokens (20 × C numbers) in front of every message, and the head; the model frozen
- prefix tuning:   10 learned keys and values in front of every attention layer's, and the head
- norm + head only: the final norm and the head: what the frozen model's features give without steering

What to look for: prompt tuning trains about 0.1% of the parameters (its AdamW moments and its adapter file
are tens of KB); how close it comes to LoRA and to the full finetune on a 3M-parameter model is the
question Lester et al. answered for T5 (the gap closes as the model grows), and the "norm + head only" row
says how much of it is the soft prompt's doing. Every variant's backward but the last still runs through the
whole model (the gradient has to reach the virtual tokens at the bottom), and the virtual tokens lengthen
every message, so prompt tuning saves memory, not time. About 3.5–5 minutes on 2 CPU cores from runs/demo.
"""

from __future__ import annotations

import argparse
import time

from _base_model import base_model

from tinyllm.checkpoint import load_pretrained
from tinyllm.data.classification import balance, class_counts, label_names, read_labeled, split_examples
from tinyllm.data.datasets import resolve_data
from tinyllm.finetune import FinetuneConfig, GPTClassifier, classification_report, freeze_except_last, train_classifier
from tinyllm.lora import apply_lora
from tinyllm.prompt_tuning import apply_prompt_tuning

parser = argparse.ArgumentParser(description="Prompt tuning vs prefix tuning vs LoRA vs full finetuning (example 14).")
parser.add_argument("--ckpt", default=None, help="pretrained run (default: runs/demo, else a tiny one trained here)")
parser.add_argument("--data", default="sms-spam", help="label<TAB>text / CSV / JSONL file or dataset name (default: sms-spam)")
parser.add_argument("--epochs", type=int, default=3, help="epochs per variant (default: 3)")
parser.add_argument("--virtual-tokens", type=int, default=20, help="soft prompt length (default: 20)")
parser.add_argument("--seed", type=int, default=123)
args = parser.parse_args()

try:
    examples = balance(read_labeled(resolve_data(args.data)), args.seed)
except (ValueError, OSError, RuntimeError) as e:       # no such file, offline, a bad checksum
    parser.error(f"--data {args.data!r}: {e}")
_, tokenizer, base_path = base_model(args.ckpt)
train, val, test = split_examples(examples, (0.7, 0.1, 0.2), args.seed)
names = label_names(train + val + test)
print(f"data: {len(train)} train / {len(val)} val / {len(test)} test, classes {class_counts(train + val + test)}\n")

variants = {
    "full": dict(lr=5e-4),
    "LoRA r=8": dict(lr=2e-3, lora=8),
    f"prompt tuning, {args.virtual_tokens}": dict(lr=3e-2, prompt=("prompt", args.virtual_tokens)),
    f"prefix tuning, {args.virtual_tokens // 2}": dict(lr=3e-2, prompt=("prefix", args.virtual_tokens // 2)),
    "norm + head only": dict(lr=3e-2, freeze=0),
}
rows = []
for name, settings in variants.items():
    print(f"--- {name}")
    gpt, _ = load_pretrained(base_path)                      # every variant starts from the same weights
    model = GPTClassifier.from_gpt(gpt, len(names), names, seed=args.seed)
    if "lora" in settings:
        apply_lora(model, rank=settings["lora"], alpha=2 * settings["lora"], trainable=("classifier",))
    elif "prompt" in settings:
        kind, n_virtual = settings["prompt"]
        apply_prompt_tuning(model, n_virtual, kind, trainable=("classifier",), seed=args.seed)
    elif "freeze" in settings:
        freeze_except_last(model, settings["freeze"], also=("classifier",))
    decay = 0.0 if "lora" not in settings and name != "full" else 0.1   # decay would shrink the virtual tokens
    config = FinetuneConfig(epochs=args.epochs, batch_size=8, lr=settings["lr"], min_lr=settings["lr"] / 10,
                            warmup=10, weight_decay=decay, seed=args.seed)
    t0 = time.perf_counter()
    summary = train_classifier(model, tokenizer, train, val, config)
    seconds = time.perf_counter() - t0
    report = classification_report(model, tokenizer, test)
    rows.append((name, summary["trainable"], model.num_parameters(), summary["optimizer_bytes"], seconds, report))

print(f"\nheld-out test set ({len(test)} examples); majority-class baseline {rows[0][5]['majority_baseline']:.3f}")
print(f"{'variant':<18} {'trainable':>10} {'of total':>9} {'AdamW memory':>13} {'time':>7} {'accuracy':>9} {'F1':>6}")
for name, trainable, total, optimizer_bytes, seconds, report in rows:
    memory = f"{optimizer_bytes / 2**20:.2f} MiB" if optimizer_bytes >= 2**20 else f"{optimizer_bytes / 2**10:.1f} KiB"
    print(f"{name:<18} {trainable:>10,} {100 * trainable / total:>8.2f}% {memory:>13} "
          f"{seconds:>6.0f}s {report['accuracy']:>9.3f} {report['f1']:>6.3f}")
