"""Example 10: a Llama-style mixture-of-experts model against a GPT-2 model of the same compute per token.

    python examples/10_llama_moe.py               # about 2–2.5 minutes on a 2-core CPU
    python examples/10_llama_moe.py --steps 100   # a quick look
    python examples/10_llama_moe.py --dense       # also a dense Llama-style model (one more row, ~1.5 min)

(On a machine that is busy with other work, OPENBLAS_NUM_THREADS=1 can make it several times faster.)

Both models read Python's help pages one character at a time (CharTokenizer), with the same width, depth,
context, batches, learning-rate schedule and number of steps. What differs is the block:

    GPT-2            LayerNorm → multi-head attention, learned position table (wpe) added to the input
                     LayerNorm → MLP: Linear(C→4C) → GELU → Linear(4C→C), biases everywhere
    Llama + MoE      RMSNorm → grouped-query attention (2 query heads share each key/value head), with
                     rotary position embeddings (queries and keys rotated by their position; no wpe)
                     RMSNorm → mixture of 4 SwiGLU experts, each token routed to its top 2, no biases

The experts are half the width of a dense SwiGLU MLP, so a token's two experts cost about what GPT-2's one
MLP costs: the MoE model does the same work per token (its "active" parameters) while holding about twice the
feed-forward parameters. A load-balancing loss (0.01 × Σ_layers n_expert · Σ_e f_e P_e) keeps the router
from sending everything to one expert; the table shows how evenly the validation tokens were spread.
"""

import argparse
import time

import numpy as np

from tinyllm.data.text import builtin_corpus
from tinyllm.data.tokens import random_batch, split_train_val, tokenize
from tinyllm.generate import generate
from tinyllm.model import GPT, GPTConfig, swiglu_hidden
from tinyllm.tokenizer import CharTokenizer
from tinyllm.train import TrainConfig, evaluate, pretrain

parser = argparse.ArgumentParser(description="Llama-style MoE vs GPT-2 on characters (example 10).")
parser.add_argument("--steps", type=int, default=600, help="optimizer steps per model (default: 600)")
parser.add_argument("--dense", action="store_true", help="also train a dense Llama-style model (SwiGLU, no experts)")
parser.add_argument("--seed", type=int, default=1337, help="seed of the weights and the batches (the same for every model)")
args = parser.parse_args()

CONTEXT, BATCH_SIZE = 64, 16
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=CONTEXT)
started = time.perf_counter()

text = builtin_corpus()
tokenizer = CharTokenizer.from_text(text)
ids = tokenize(text, tokenizer)
train_ids, val_ids = split_train_val(ids, val_fraction=0.1)
print(f"data: {len(text):,} characters, a vocabulary of {tokenizer.vocab_size}; "
      f"{len(train_ids):,} for training, {len(val_ids):,} for validation")

llama = dict(norm="rmsnorm", pos="rope", bias=False, n_kv_head=2)
models = {
    "GPT-2": GPTConfig(vocab_size=tokenizer.vocab_size, **SHAPE),
    "Llama + MoE": GPTConfig(vocab_size=tokenizer.vocab_size, **SHAPE, **llama, mlp="moe", n_expert=4,
                             expert_top_k=2, mlp_hidden=swiglu_hidden(SHAPE["n_embd"]) // 2),
}
if args.dense:
    models["Llama (dense)"] = GPTConfig(vocab_size=tokenizer.vocab_size, **SHAPE, **llama, mlp="swiglu")

train_config = TrainConfig(steps=args.steps, batch_size=BATCH_SIZE, lr=2e-3, min_lr=2e-4, warmup=30,
                           eval_interval=args.steps, eval_iters=10, log_interval=100, sample_tokens=0, seed=args.seed)
rows = []
for name, config in models.items():
    model = GPT(config, seed=args.seed)
    print(f"\n{name}: {model.num_parameters():,} parameters, {model.active_parameters():,} active per token "
          f"(norm={config.norm}, pos={config.pos}, mlp={config.mlp}, kv heads {config.kv_heads}/{config.n_head})")
    summary = pretrain(model, train_ids, val_ids, train_config, progress=True)
    val = evaluate(model, val_ids, BATCH_SIZE, CONTEXT)               # every validation window, not a sample

    load = "-"
    if model.moe_layers():
        # Route a few validation batches and report each layer's share of (token, expert) assignments.
        shares = [model.expert_load(random_batch(val_ids, BATCH_SIZE, CONTEXT, np.random.default_rng(i))[0])
                  for i in range(4)]
        per_layer = np.mean(shares, axis=0)                           # (n_layer, n_expert)
        load = " | ".join("/".join(f"{100 * f:.0f}" for f in layer) for layer in per_layer)
    prompt = tokenizer.encode("The for statement")
    sample = tokenizer.decode(prompt + generate(model, prompt, 60, temperature=0))
    rows.append((name, model.num_parameters(), model.active_parameters(), val["loss"], summary["seconds"], load, sample))

print(f"\n{'model':14} {'params':>9} {'active/token':>13} {'val loss':>9} {'train time':>11}   expert load % (per layer)")
for name, params, active, loss, seconds, load, _ in rows:
    print(f"{name:14} {params:>9,} {active:>13,} {loss:>9.4f} {seconds:>10.0f}s   {load}")
print("\ngreedy continuations of 'The for statement':")
for name, *_, sample in rows:
    print(f"  {name:14} {sample!r}")
print(f"\n({args.steps} steps of {BATCH_SIZE}×{CONTEXT} characters per model; total {time.perf_counter() - started:.0f}s. "
      "Perfect balance is 25/25/25/25.)")
