"""Example 04: four ways to choose the next token, side by side — greedy, top-k, top-p (nucleus), beam search.

    python examples/04_generate.py                  # uses runs/demo (written by `tinyllm demo`) if it exists
    python examples/04_generate.py --ckpt RUN       # any run directory

If there is no checkpoint, the script first trains a tiny model itself: a 1024-token BPE tokenizer and a
2-layer, 64-dim GPT with a 64-token context, pretrained for about 30 seconds (``--train-seconds``) on the
built-in corpus (Python's own documentation text) with ``tinyllm.train.pretrain``, saved to runs/example04.
The whole script then takes about a minute on a laptop CPU; with a checkpoint, a few seconds.

What to look for:
- greedy always takes the most likely token: deterministic, and it soon repeats itself;
- top-k (sample among the k most likely) and top-p (among the smallest set with probability mass ≥ p) trade
  some likelihood for variety; the temperature sharpens (< 1) or flattens (> 1) the distribution first;
- beam search keeps the 4 most likely partial sequences: its text has the highest total probability found,
  which for a small model often means even more repetition than greedy — likely is not the same as good.
The last column counts distinct tokens among those generated: a crude measure of repetition.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tinyllm.checkpoint import load_pretrained
from tinyllm.generate import beam_search, generate

PROMPTS = ["The \"for\" statement", "A dictionary is", "def "]


def train_tiny_model(out: Path, seconds: float) -> None:
    """Tokenizer + GPT + ~``seconds`` of pretraining on the built-in corpus, saved to ``out``."""
    from tinyllm.data.text import builtin_corpus
    from tinyllm.data.tokens import random_batch, split_train_val, tokenize
    from tinyllm.model import GPT, preset
    from tinyllm.tokenizer import BPETokenizer
    from tinyllm.train import TrainConfig, pretrain
    import numpy as np

    print(f"no checkpoint found: training a tiny model for about {seconds:.0f}s first (saved to {out}/)")
    text = builtin_corpus()
    tokenizer = BPETokenizer.train(text, 1024, pattern="gpt4", special_tokens=("<|endoftext|>",))
    train_ids, val_ids = split_train_val(tokenize(text, tokenizer), 0.1)
    model = GPT(preset("nano", vocab_size=tokenizer.vocab_size, block_size=64), seed=0)
    # How many steps fit in the time budget: time two forward + backward passes (the weights do not change).
    rng, batch_size = np.random.default_rng(0), 8
    t0 = time.perf_counter()
    for _ in range(2):
        _, loss = model(*random_batch(train_ids, batch_size, 64, rng))
        loss.backward()
        model.zero_grad()
    steps = max(20, int(seconds / ((time.perf_counter() - t0) / 2 * 1.15)))   # +15% for the optimizer step
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-2, min_lr=1e-3, warmup=min(20, steps // 5),
                         eval_interval=steps, eval_iters=4, log_interval=max(steps // 5, 1), sample_tokens=0)
    summary = pretrain(model, train_ids, val_ids, config, run_dir=out, tokenizer=tokenizer)
    print(f"trained {steps} steps in {summary['seconds']:.0f}s: validation loss {summary['first_val']['loss']:.2f} "
          f"→ {summary['last_val']['loss']:.2f}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="run directory (default: runs/demo, else runs/example04)")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--train-seconds", type=float, default=30.0, help="training budget when there is no checkpoint")
    args = parser.parse_args()

    ckpt = Path(args.ckpt) if args.ckpt else next(
        (p for p in (Path("runs/demo"), Path("runs/example04")) if (p / "model.safetensors").exists()), None)
    if ckpt is None:
        ckpt = Path("runs/example04")
        train_tiny_model(ckpt, args.train_seconds)
    model, tokenizer = load_pretrained(ckpt)
    stop = [tokenizer.special_tokens["<|endoftext|>"]] if "<|endoftext|>" in tokenizer.special_tokens else []
    n = args.max_new_tokens
    print(f"model: {ckpt} ({model.num_parameters():,} parameters, context {model.config.block_size}); "
          f"{n} new tokens per prompt\n")

    decoders = {
        "greedy": lambda ids: generate(model, ids, n, temperature=0, stop_ids=stop),
        "top-k 40, T=0.8": lambda ids: generate(model, ids, n, temperature=0.8, top_k=40, stop_ids=stop, seed=0),
        "top-p 0.9, T=0.8": lambda ids: generate(model, ids, n, temperature=0.8, top_p=0.9, stop_ids=stop, seed=0),
        "beam search, 4 beams": lambda ids: beam_search(model, ids, 4, n, stop_ids=stop)[0][0],
    }
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        print(f"=== {prompt!r}")
        for name, decode in decoders.items():
            start = time.perf_counter()
            new = decode(ids)
            ms = (time.perf_counter() - start) * 1e3
            print(f"  {name:<21} {ms:6.0f} ms  {len(set(new)):>2}/{len(new):<2} distinct  {tokenizer.decode(new)!r}")
        print()


if __name__ == "__main__":
    main()
