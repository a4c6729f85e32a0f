"""The instruction-tuned model examples 07-09 start from: ``--ckpt``, else runs/instruct, else
runs/example-instruct, else one instruction-tuned here from the base model of ``_base_model`` (runs/demo, or
a tiny GPT trained first).

Alignment sharpens what a model can already do: reward models and DPO compare answers to instructions, PPO
and GRPO sample answers and score them, so the model must already answer in the Alpaca template and stop at
the end token. The finetune here is ``tinyllm finetune instruct``'s recipe on the built-in generated tasks
(1,200 records, 3 epochs, lr 1e-3; about 1 minute from runs/demo on 2 cores):

    tinyllm finetune instruct --ckpt runs/demo --out runs/example-instruct --train-size 1200 --epochs 3 --lr 1e-3
"""

from __future__ import annotations

import time
from pathlib import Path

from _base_model import base_model

from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.data.instructions import END_OF_TEXT, builtin_instructions, chat_template
from tinyllm.finetune import FinetuneConfig, train_instructions

CANDIDATES = ("runs/instruct", "runs/example-instruct")


def instruct_model(ckpt=None, out="runs/example-instruct"):
    """(model, tokenizer, path) of an instruction-tuned run."""
    for candidate in ([ckpt] if ckpt else CANDIDATES):
        if (Path(candidate) / "model.safetensors").exists():
            model, tokenizer = load_pretrained(candidate)
            print(f"instruction-tuned model: {candidate} ({model.num_parameters():,} parameters)")
            return model, tokenizer, Path(candidate)
    if ckpt:
        raise FileNotFoundError(f"no run at '{ckpt}'")
    model, tokenizer, base = base_model()
    print(f"no instruction-tuned run yet: finetuning {base} on the built-in instruction tasks into {out}/ "
          "(3 epochs of 1,200 records)")
    train, val, _ = builtin_instructions(1200, 60, 120, 123)
    t0 = time.perf_counter()
    train_instructions(model, tokenizer, train, val, FinetuneConfig(epochs=3, batch_size=8, lr=1e-3, min_lr=1e-4,
                                                                    warmup=10, seed=123))
    save_model(out, model, tokenizer, extra_config={"task": "instruct", "template": chat_template("alpaca"),
                                                    "end_token": END_OF_TEXT, "base": str(base)})
    print(f"instruction-tuned in {time.perf_counter() - t0:.0f}s\n")
    return model, tokenizer, Path(out)
