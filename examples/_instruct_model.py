"""The instruction-tuned model examples 07 and 09 start from: ``--ckpt``, else runs/instruct — the run that

    tinyllm finetune instruct --ckpt runs/demo          (built-in generated tasks; writes runs/instruct)

writes, and that ``tinyllm align`` starts from by default. When runs/instruct does not exist yet, it is made
here with that command's recipe (1,500 built-in records, 3 epochs, lr 1e-3, seed 123) from the base model of
``_base_model`` (runs/demo, or a tiny GPT trained first): about 1.5 minutes from runs/demo on 2 cores.

Alignment sharpens what a model can already do: DPO compares answers to instructions and GRPO samples answers
and checks them, so the model must already answer the built-in tasks in the Alpaca template and stop at the
end token. (The README's runs/alpaca, tuned on the instruction-data dataset, has never seen these
tasks: pass it with ``--ckpt`` only together with data of its own kind.)
"""

from __future__ import annotations

import time
from pathlib import Path

from _base_model import base_model

from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.data.instructions import END_OF_TEXT, builtin_instructions, chat_template
from tinyllm.finetune import FinetuneConfig, train_instructions

RUN = "runs/instruct"
TRAIN_SIZE, TEST_SIZE, SEED = 1500, 120, 123           # `tinyllm finetune instruct`'s defaults


def instruct_model(ckpt=None):
    """(model, tokenizer, path) of an instruction-tuned run: ``ckpt``, else runs/instruct (made if missing)."""
    path = Path(ckpt or RUN)
    if (path / "model.safetensors").exists():
        model, tokenizer = load_pretrained(path)
        print(f"instruction-tuned model: {path} ({model.num_parameters():,} parameters)")
        return model, tokenizer, path
    if ckpt:
        raise FileNotFoundError(f"no run at '{ckpt}'")
    model, tokenizer, base = base_model()
    print(f"no {RUN} yet: making it as `tinyllm finetune instruct --ckpt {base}` would (3 epochs of "
          f"{TRAIN_SIZE:,} built-in records)")
    train, val, _ = builtin_instructions(TRAIN_SIZE, 60, TEST_SIZE, SEED)
    t0 = time.perf_counter()
    train_instructions(model, tokenizer, train, val, FinetuneConfig(epochs=3, batch_size=8, lr=1e-3, min_lr=1e-4,
                                                                    warmup=10, seed=SEED))
    save_model(path, model, tokenizer, extra_config={
        "task": "instruct", "template": chat_template("alpaca"), "end_token": END_OF_TEXT, "base": str(base),
        "data": {"path": None, "split": [0.85, 0.05, 0.1], "seed": SEED, "train_size": TRAIN_SIZE,
                 "test_size": TEST_SIZE}})
    print(f"instruction-tuned in {time.perf_counter() - t0:.0f}s; saved in {path}/\n")
    return model, tokenizer, path
