"""Example 11: teach a small model to call a calculator, and measure what the tool is worth.

    python examples/13_tools.py                  # finetunes runs/demo (`tinyllm demo`) into runs/tools
    tinyllm serve --ckpt runs/tools              # then ask it a word problem on the chat page

The data (``tinyllm.data.tool_problems``, generated and seeded): arithmetic word problems with 2-digit
numbers, each answered by a calculator call, its result and the number, in the Alpaca sections without the
Alpaca preamble (the "short" template: the demo model's 128-token context has no room for its 35 tokens):

    ### Instruction:
    Sam has 28 coins and gets 39 more. How many coins now?
    Tools: calculator

    ### Response:
    <tool_call>{"name":"calculator","arguments":{"expression":"28+39"}}</tool_call><tool_result>67</tool_result>67

On held-out problems the finetuned model is scored twice from the same greedy reply: with the tool (the
call cut at </tool_call>, parsed strictly, run by ``tinyllm.serve.tools.calculate``, and the real result fed
back for the model to copy) and without it (the answer after the result the model wrote itself). See README
"Serving" for the measured table. The run it writes has "tools": ["calculator"] in config.json, so
``tinyllm chat`` runs the calculator for it too.
"""

from __future__ import annotations

import argparse
import time

from _base_model import base_model

from tinyllm.checkpoint import save_model
from tinyllm.data.instructions import END_OF_TEXT, chat_template, format_prompt
from tinyllm.data.tool_problems import tool_problems
from tinyllm.finetune import FinetuneConfig, train_instructions
from tinyllm.files import atomic_write_json
from tinyllm.finetune.tools import evaluate_tool_use

parser = argparse.ArgumentParser(description="Tool use: a calculator taught by finetuning, scored with and without it.")
parser.add_argument("--ckpt", default=None, help="pretrained run (default: runs/demo, else a tiny one trained here)")
parser.add_argument("--out", default="runs/tools", help="where to save the finetuned run")
parser.add_argument("--train-size", type=int, default=2000, help="generated training problems")
parser.add_argument("--test-size", type=int, default=100, help="held-out problems, each scored both ways")
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--seed", type=int, default=123)
args = parser.parse_args()

model, tokenizer, base_path = base_model(args.ckpt)
train, test = tool_problems(args.train_size, args.test_size, args.seed)
print(f"data: {len(train)} training records, {len(test)} held-out problems; one of the records:\n")
for record in train[:1]:
    print(format_prompt(record, "short") + record["output"] + END_OF_TEXT + "\n")

config = FinetuneConfig(epochs=args.epochs, batch_size=8, lr=1e-3, min_lr=1e-4, warmup=20, dropout=0.0,
                        seed=args.seed)
t0 = time.perf_counter()
train_instructions(model, tokenizer, train, config=config, template="short")
seconds = time.perf_counter() - t0
save_model(args.out, model, tokenizer, extra_config={
    "task": "instruct", "template": chat_template("short"), "end_token": END_OF_TEXT, "tools": ["calculator"],
    "base": str(base_path), "finetune": {"epochs": args.epochs, "train_size": len(train), "seconds": round(seconds)}})

scores = evaluate_tool_use(model, tokenizer, test, template="short")
print(f"\nheld-out: {scores['examples']} problems; well-formed calls: {scores['valid_calls']:.2f}")
print(f"{'operation':<10} {'problems':>8} {'with the tool':>14} {'without':>8}")
for op, s in scores["by_operation"].items():
    print(f"{op:<10} {s['examples']:>8} {s['with_tool']:>14.2f} {s['without_tool']:>8.2f}")
print(f"{'all':<10} {scores['examples']:>8} {scores['with_tool']:>14.2f} {scores['without_tool']:>8.2f}")
for problem, a, b in list(zip(test, scores["answers_with_tool"], scores["answers_without_tool"]))[:4]:
    print(f"  {problem['question']} → with tool {a!r}, without {b!r} (answer {problem['answer']})")
print(f"finetuning took {seconds:.0f}s; run saved in {args.out}/ (try: tinyllm serve --ckpt {args.out})")
atomic_write_json(f"{args.out}/tool_scores.json", {k: v for k, v in scores.items() if not k.startswith("answers")})
