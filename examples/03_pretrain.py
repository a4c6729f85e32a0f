"""Example 03: pretrain a small GPT from scratch, one visible step at a time.

    python examples/03_pretrain.py              # about 1 minute on 2 CPU cores
    python examples/03_pretrain.py --steps 50   # a quick look

(On a machine that is busy with other work, OPENBLAS_NUM_THREADS=1 can make it several times faster: BLAS
threads that wait for a free core waste more time than they save.)

This is what ``tinyllm demo`` (and ``tinyllm pretrain``) does, with the training loop written out instead of
hidden inside ``tinyllm.train.pretrain``:

1. text      Python's own help pages (they ship with every Python, ~465 KB of English and code)
2. tokenizer a byte-level BPE tokenizer trained on that text: text → token ids
3. data      one long array of ids, split into a training head and a validation tail
4. model     a GPT from a preset; before training it guesses uniformly, so its loss is ln(vocabulary size)
5. training  sample a batch → forward → loss → backward → clip → AdamW step, a few hundred times
6. checking  the validation loss after training, then save → reload → the very same predictions
7. sampling  continue a few prompts with the trained model

Pretraining is only ever this: show the model a window of text and ask it, at every position, for the next
token. Everything it learns — spelling, grammar, which words follow "def" — comes from that one objective.
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np

from tinyllm.autograd import no_grad
from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.data.text import builtin_corpus
from tinyllm.data.tokens import random_batch, split_train_val, tokenize
from tinyllm.generate import generate
from tinyllm.model import GPT, preset
from tinyllm.optim import AdamW, clip_grad_norm, warmup_cosine_lr
from tinyllm.tokenizer import BPETokenizer
from tinyllm.train import evaluate, param_groups

parser = argparse.ArgumentParser(description="Pretrain a small GPT step by step (example 03).")
parser.add_argument("--steps", type=int, default=500, help="optimizer steps (default: 500)")
parser.add_argument("--out", default="runs/example03", help="run directory to save into (default: runs/example03)")
parser.add_argument("--seed", type=int, default=1337, help="seed of the weights, the batches and the samples")
args = parser.parse_args()

VOCAB_SIZE = 1024          # BPE tokens: 256 bytes + 767 merges + 1 special token
CONTEXT = 64               # tokens the model sees at once (its block_size)
BATCH_SIZE = 16            # windows per step: 16 × 64 = 1,024 next-token predictions per step
PEAK_LR, MIN_LR, WARMUP = 2e-3, 2e-4, 30
GRAD_CLIP = 1.0
started = time.perf_counter()

# ---------------------------------------------------------------------------------------------- 1. text
text = builtin_corpus()
print(f"1. text: {len(text):,} characters of Python documentation, e.g. {text[20_000:20_070]!r}")

# ---------------------------------------------------------------------------------------------- 2. tokenizer
t0 = time.perf_counter()
tokenizer = BPETokenizer.train(text, VOCAB_SIZE, pattern="gpt4", special_tokens=("<|endoftext|>",))
print(f"2. tokenizer: byte-level BPE, {tokenizer.vocab_size} tokens, trained in {time.perf_counter() - t0:.1f}s; "
      f"'The for statement' → {tokenizer.encode('The for statement')}")

# ---------------------------------------------------------------------------------------------- 3. data
# Encode everything once into a compact uint16 array. Held-out text is the *tail* of the corpus: text is
# sequential, and a random split would put near-copies of validation sentences into the training set.
ids = tokenize(text, tokenizer)                                    # (N,) uint16
train_ids, val_ids = split_train_val(ids, val_fraction=0.1)
print(f"3. data: {len(ids):,} tokens ({len(text) / len(ids):.1f} characters per token): "
      f"{len(train_ids):,} for training, {len(val_ids):,} for validation")

# ---------------------------------------------------------------------------------------------- 4. model
# "micro": 4 layers, 4 heads, 128 dimensions. No dropout: a few hundred steps see each token about
# twice, far from the point where the model could memorise the training text.
config = preset("micro", vocab_size=tokenizer.vocab_size, block_size=CONTEXT, dropout=0.0)
model = GPT(config, seed=args.seed)
print(f"4. model: GPT with {model.num_parameters():,} parameters "
      f"({config.n_layer} layers, {config.n_head} heads, {config.n_embd} dims, context {config.block_size})")

# Before training, every weight is N(0, 0.02²), so every logit is ≈ 0 and the softmax gives each of the V
# tokens probability ≈ 1/V. The cross-entropy is then -ln(1/V) = ln(V) whatever the text, and the
# perplexity e^loss ≈ V: the model is as unsure as a uniform guess among all V tokens. Training has to
# beat this number; a first loss far above it means the initialisation is broken.
before = evaluate(model, val_ids, BATCH_SIZE, CONTEXT, max_batches=10)
print(f"   untrained validation loss {before['loss']:.3f} (ln {tokenizer.vocab_size} = "
      f"{math.log(tokenizer.vocab_size):.3f}), perplexity {before['ppl']:.0f}")

# ---------------------------------------------------------------------------------------------- 5. training
# AdamW decays the matrices only: shrinking a LayerNorm gain or a bias towards 0 is not regularisation,
# just damage. The learning rate rises linearly for WARMUP steps (Adam's moment estimates are noisy at
# first), then follows a cosine down to MIN_LR, so the last steps make small, careful updates.
optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=PEAK_LR, betas=(0.9, 0.99), weight_decay=0.1)
data_rng = np.random.default_rng([args.seed, 1])   # a stream of its own: not the bits the weights came from
print(f"5. training for {args.steps} steps of {BATCH_SIZE}×{CONTEXT} tokens")
model.train()
t0 = time.perf_counter()
for step in range(args.steps):
    optimizer.lr = warmup_cosine_lr(step, PEAK_LR, MIN_LR, WARMUP, args.steps)

    # A batch: BATCH_SIZE windows at random places in the training ids. The targets are the inputs shifted
    # by one token, so every position is a question "what comes next?" with its answer.
    x, y = random_batch(train_ids, BATCH_SIZE, CONTEXT, data_rng)    # (B, T) each

    _, loss = model(x, y)      # forward: logits (B, T, V) and their mean cross-entropy against y
    loss.backward()            # backward: d loss / d parameter, into every parameter's .grad
    # (`tinyllm pretrain` does these two lines with tinyllm.train.forward_backward, which splits the batch
    # into one block per CPU core and runs the blocks' forward and backward passes side by side.)

    # One unlucky batch can produce a huge gradient; scaling all gradients together so that their joint
    # norm is at most GRAD_CLIP keeps the update's direction and bounds its size.
    grad_norm = clip_grad_norm(optimizer.parameters(), GRAD_CLIP)
    if not math.isfinite(loss.item()):
        raise SystemExit(f"the loss became {loss.item()} at step {step + 1}: try a lower learning rate")
    optimizer.step()           # parameters move against their gradients
    model.zero_grad()          # gradients accumulate by design (see grad_accum), so clear them

    if step % 25 == 0 or step + 1 == args.steps:
        tokens_per_s = (step + 1) * BATCH_SIZE * CONTEXT / (time.perf_counter() - t0)
        print(f"   step {step + 1:4d} | loss {loss.item():.3f} | lr {optimizer.lr:.2e} | "
              f"grad norm {grad_norm:.2f} | {tokens_per_s:,.0f} tokens/s")
train_seconds = time.perf_counter() - t0

# ---------------------------------------------------------------------------------------------- 6. checking
# The training loss above is measured on the batch just learned from; the honest number is the loss on
# text the model never trained on. (evaluate switches dropout off and builds no graph.)
after = evaluate(model, val_ids, BATCH_SIZE, CONTEXT, max_batches=10)
print(f"6. validation loss {before['loss']:.3f} → {after['loss']:.3f}, perplexity {before['ppl']:.0f} → "
      f"{after['ppl']:.1f} after {train_seconds:.0f}s of training")

# A run directory holds plain files: config.json, model.safetensors (weights, no pickle) and tokenizer.json.
out = Path(args.out)
save_model(out, model, tokenizer, step=args.steps)
reloaded, reloaded_tokenizer = load_pretrained(out)
reloaded.eval()
model.eval()
x, _ = random_batch(val_ids, 2, CONTEXT, np.random.default_rng(0))
with no_grad():
    difference = np.abs(reloaded(x)[0].numpy() - model(x)[0].numpy()).max()
print(f"   saved to {out}/ and reloaded: largest logit difference {difference} (the same model)")

# ---------------------------------------------------------------------------------------------- 7. sampling
# Generation feeds the model its own predictions: pick a next token from the softmax of the last logits
# (temperature 0.8 sharpens it, top-k 40 drops the long tail of unlikely tokens), append it, repeat.
print("7. samples (temperature 0.8, top-k 40):")
for i, prompt in enumerate(["The \"if\" statement", "A list is", "def "]):
    prompt_ids = reloaded_tokenizer.encode(prompt)
    new_ids = generate(reloaded, prompt_ids, 40, temperature=0.8, top_k=40, seed=args.seed + i)
    print(f"   {reloaded_tokenizer.decode(prompt_ids + list(new_ids))!r}")

print(f"\ndone in {time.perf_counter() - started:.0f}s. Next: tinyllm eval --ckpt {out}, "
      f"or tinyllm pretrain --help for the same loop with logging, checkpoints and --resume.")
