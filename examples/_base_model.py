"""The pretrained model examples 05 and 06 start from: ``--ckpt``, else runs/demo, else a tiny one trained here.

Finetuning needs a model that already knows something about text. ``tinyllm demo`` writes a 3M-parameter GPT
pretrained on Python's help pages to runs/demo (about 4 minutes). Without it, ``base_model`` pretrains a
2-layer, 64-dim GPT with a 128-token context for about a minute and keeps it in runs/example-base.
"""

from __future__ import annotations

import time
from pathlib import Path

from tinyllm.checkpoint import load_pretrained


def base_model(ckpt=None, seconds: float = 60.0, out="runs/example-base"):
    """(model, tokenizer, path) of the base run."""
    for candidate in ([ckpt] if ckpt else ["runs/demo", out]):
        if (Path(candidate) / "model.safetensors").exists():
            model, tokenizer = load_pretrained(candidate)
            print(f"base model: {candidate} ({model.num_parameters():,} parameters, context {model.config.block_size})")
            return model, tokenizer, Path(candidate)
    if ckpt:
        raise FileNotFoundError(f"no run at '{ckpt}'")
    _pretrain_tiny(Path(out), seconds)
    model, tokenizer = load_pretrained(out)
    return model, tokenizer, Path(out)


def _pretrain_tiny(out: Path, seconds: float) -> None:
    import numpy as np

    from tinyllm.data.text import builtin_corpus
    from tinyllm.data.tokens import random_batch, split_train_val, tokenize
    from tinyllm.model import GPT, preset
    from tinyllm.tokenizer import BPETokenizer
    from tinyllm.train import TrainConfig, pretrain

    print(f"no runs/demo (run `tinyllm demo` for a better base): pretraining a tiny GPT for ~{seconds:.0f}s into {out}/")
    text = builtin_corpus()
    tokenizer = BPETokenizer.train(text, 1024, pattern="gpt4", special_tokens=("<|endoftext|>",))
    train_ids, val_ids = split_train_val(tokenize(text, tokenizer), 0.1)
    model = GPT(preset("nano", vocab_size=tokenizer.vocab_size, block_size=128), seed=0)
    rng, batch_size = np.random.default_rng(0), 8
    t0 = time.perf_counter()
    for _ in range(2):                                        # time a step to fit the budget
        _, loss = model(*random_batch(train_ids, batch_size, 128, rng))
        loss.backward()
        model.zero_grad()
    steps = max(20, int(seconds / ((time.perf_counter() - t0) / 2 * 1.15)))
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-2, min_lr=1e-3, warmup=min(20, steps // 5),
                         eval_interval=steps, eval_iters=4, log_interval=max(steps // 5, 1), sample_tokens=0)
    summary = pretrain(model, train_ids, val_ids, config, run_dir=out, tokenizer=tokenizer)
    print(f"pretrained {steps} steps in {summary['seconds']:.0f}s: validation loss "
          f"{summary['first_val']['loss']:.2f} → {summary['last_val']['loss']:.2f}\n")
