"""Example 06: teach a pretrained GPT to follow instructions — full finetuning vs LoRA.

    python examples/06_instruct.py                  # starts from runs/demo (`tinyllm demo`) if it exists
    python examples/06_instruct.py --ckpt RUN       # or from any pretrained run

The data (built in, generated, seeded): instructions with one checkable answer — add or subtract small
numbers, reverse / sort / count words, read a field of a record — written in the Alpaca template:

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    Sort the words in alphabetical order.

    ### Input:
    value,bytes,module

    ### Response:
    bytes,module,value<|endoftext|>

Training is next-token prediction on these texts with the prompt's targets masked out (-100): the model
learns to write the response and then the end-of-text token, which stops generation. The score is exact
match of the greedy response on held-out records (never seen in training), per task too.

Three models side by side: the untuned base, a full finetune (3 epochs) and LoRA (rank 16 on every Linear
layer, plus the layer norms: under 10% of the parameters; 12 epochs at 2x the learning rate and no weight
decay, since adapters start from zero and learn more slowly).

What to look for, measured from runs/demo (120 held-out records, 20 per task):

    variant    trainable        exact match   add  subtract  reverse  sort  count  field
    untuned            0              0.000  0.00      0.00     0.00  0.00   0.00   0.00
    full       3,087,360              0.525  0.00      0.00     1.00  0.70   1.00   0.45
    LoRA r=16    299,904 (8.87%)      0.525  0.05      0.10     0.95  0.55   1.00   0.50

(A percentage of parameters is always trainable / all the parameters the model has while it trains,
adapters included: 299,904 of 3,382,272, as ``apply_lora`` reports it and Hugging Face PEFT counts.)

The base model scores 0: it continues the text rather than answering. Both finetunes learn the format (a
short answer, then <|endoftext|>), counting, and to copy words from the input: reversing them, sorting
them, reading a field. The word lists are comma-joined so that each word is the same token wherever it
stands (see ``tinyllm.data.instructions``); with spaces, reverse and sort stay near 0 at this budget.
LoRA scores as well with a tenth of the parameters and of the optimizer memory (2.3 vs 23.6 MiB). Its score
moves by several points between runs that differ only in the order floating-point sums are added (how each
batch is split over the threads): 0.43 to 0.53 across such runs. Arithmetic stays at or near 0 (LoRA's one
or two right answers out of 20 are luck): the held-out sums and differences were never shown, and a few
hundred examples do not teach this model to add. About 6–6.5 minutes on 2 CPU cores from runs/demo
(full finetune about 80 s, LoRA about 270 s).
"""

from __future__ import annotations

import argparse
import time

from _base_model import base_model

from tinyllm.checkpoint import load_pretrained
from tinyllm.data.instructions import builtin_instructions, format_prompt
from tinyllm.finetune import FinetuneConfig, evaluate_instructions, train_instructions
from tinyllm.finetune.instruct import format_scores
from tinyllm.lora import apply_lora

parser = argparse.ArgumentParser(description="Instruction finetuning: untuned vs full vs LoRA (example 06).")
parser.add_argument("--ckpt", default=None, help="pretrained run (default: runs/demo, else a tiny one trained here)")
parser.add_argument("--train-size", type=int, default=1500, help="generated training records (default: 1500)")
parser.add_argument("--test-size", type=int, default=120, help="held-out records scored (default: 120)")
parser.add_argument("--epochs", type=int, default=3, help="epochs of the full finetune (default: 3)")
parser.add_argument("--lora-epochs", type=int, default=12, help="epochs of the LoRA finetune (default: 12)")
parser.add_argument("--seed", type=int, default=123)
args = parser.parse_args()

_, tokenizer, base_path = base_model(args.ckpt)
train, val, test = builtin_instructions(args.train_size, 30, args.test_size, args.seed)
print(f"data: {len(train)} train / {len(val)} val / {len(test)} test generated records; one of them:\n")
print(format_prompt(train[2]) + train[2]["output"] + "<|endoftext|>\n")

rows = []
for name in ("untuned", "full", "LoRA r=16"):
    print(f"--- {name}")
    model, _ = load_pretrained(base_path)
    trainable, total, optimizer_bytes, seconds = 0, model.num_parameters(), 0, 0.0
    if name != "untuned":
        lr, epochs, weight_decay = 1e-3, args.epochs, 0.1
        if name.startswith("LoRA"):
            # Adapters on every Linear layer, plus the layer norms' gains and biases (0.1% of the model).
            apply_lora(model, rank=16, alpha=32, trainable=("ln_1", "ln_2", "ln_f"), verbose=True)
            total = model.num_parameters()                  # now with the adapters: the report's total
            # They start from zero and learn more slowly: more epochs, no weight decay pulling them back.
            lr, epochs, weight_decay = 2e-3, args.lora_epochs, 0.0
        config = FinetuneConfig(epochs=epochs, batch_size=8, lr=lr, min_lr=lr / 10, warmup=20, dropout=0.0,
                                weight_decay=weight_decay, seed=args.seed)
        t0 = time.perf_counter()
        summary = train_instructions(model, tokenizer, train, val, config)
        seconds = time.perf_counter() - t0
        trainable, optimizer_bytes = summary["trainable"], summary["optimizer_bytes"]
    scores = evaluate_instructions(model, tokenizer, test, max_new_tokens=16)
    print(format_scores(scores))
    for record, response in list(zip(test, scores["responses"]))[:3]:
        print(f"  {record['instruction']} {record['input']!r} → {response[:40]!r} (reference {record['output']!r})")
    rows.append((name, trainable, total, optimizer_bytes, seconds, scores))

print(f"\nheld-out test set: {len(test)} generated records")
print(f"{'variant':<9} {'trainable':>10} {'of all':>9} {'AdamW memory':>13} {'time':>6} {'exact match':>12} "
      f"{'ROUGE-L':>8} {'resp. ppl':>10}")
for name, trainable, total, optimizer_bytes, seconds, s in rows:
    print(f"{name:<9} {trainable:>10,} {100 * trainable / total:>8.2f}% {optimizer_bytes / 2**20:>10.2f} MiB "
          f"{seconds:>5.0f}s {s['exact_match']:>12.3f} {s['rouge_l']:>8.3f} {s['response_ppl']:>10.2f}")
print("exact match by task: " + "; ".join(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in s["exact_match_by_task"].items())
                                           for name, *_, s in rows))
