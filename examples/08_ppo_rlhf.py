"""Example 08: RLHF, TRL's classic — PPO teaches a language model to write *positive* film reviews.

    python examples/08_ppo_rlhf.py                 # seed 0
    python examples/08_ppo_rlhf.py --seed 1        # another seed: the same story

Runs used and made: the pretrained base ``--ckpt``, else runs/demo (``tinyllm demo``), else runs/example-base
(made by ``_base_model``, about a minute); the review model runs/example-reviews (finetuned from the base the
first time, reused after); the PPO policy runs/example-ppo. No data files: the reviews are generated.

Stage 0, supervised finetuning: the base learns to write the generated reviews of ``tinyllm.data.reviews``
("The acting was wonderful. I hated the ending. What a charming soundtrack!"), three sentences each, every
sentence positive or negative with equal odds. Like GPT-2 finetuned on IMDB in TRL's example, it now writes
reviews of either mood.

Stage 1, the reward model: the review model with a new Linear(C, 1) head on the last token, trained with
the Bradley-Terry loss −log σ(r_chosen − r_rejected) on 600 pairs from a rater who likes enthusiastic
reviews (of two reviews with the same opening, the one with more positive sentences is chosen). Its
pairwise accuracy on 200 held-out pairs says how well it judges.

Stage 2, PPO: the policy (the review model plus a value head) continues openings ("The acting was",
"I found the plot", "I"); the reward model scores each finished review at its last token; every token also
pays −β·(log π − log π_ref), the KL leash to the review model, with β adapting towards --target-kl. GAE
turns rewards and values into advantages; the clipped surrogate and the clipped value loss are minimised
for 4 epochs of minibatches per rollout batch of 32 reviews.

What to look for: the same 64 sampled reviews (same openings, same random seed) before and after PPO. The
reward model's mean score rises by 2.3 to 3.4 (seeds 0, 1, 2), and the positive share of the mood words
(the sentiment words, counted from the word lists: the truth that the reward model only learned) from 0.45
to about 0.86, while the KL per review stays at a few nats. Read the samples too: some words come out
garbled ("I found the acting gllightful."), text the reward model never saw and still scores as positive.
That is the policy exploiting the proxy, which the KL leash only limits. The score rises in the first ten
steps and then stops; more steps mostly add KL (``--steps 20``: scores 3.23, 1.97 and 3.22 for seeds 0, 1,
2, KL over the last 5 steps 4.6, 3.9 and 8.1 nats, β having grown too slowly to hold it).

Measured from runs/demo with the defaults (10 steps; the 64 reviews before → after PPO; the KL per review
over the last 2 steps, then β):

    seed 0: reward model 0.940 held-out; score  0.07 → 2.96; positive share 0.45 → 0.87; KL 5.58, β 0.499
    seed 1: reward model 0.990 held-out; score −0.93 → 2.46; positive share 0.45 → 0.86; KL 3.57, β 0.439
    seed 2: reward model 0.960 held-out; score  0.35 → 2.66; positive share 0.45 → 0.85; KL 4.95, β 0.358
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _base_model import base_model

from tinyllm.checkpoint import load_config, load_pretrained, save_model
from tinyllm.data.instructions import collate_instructions, end_token
from tinyllm.data.reviews import builtin_reviews, review_openings, review_preferences, sentiment_counts
from tinyllm.files import append_jsonl
from tinyllm.finetune import FinetuneConfig
from tinyllm.finetune.instruct import instruction_loss
from tinyllm.finetune.loop import fit
from tinyllm.plot import plot_log
from tinyllm.rl import (PolicyWithValue, PPOConfig, RewardModel, encode_preferences, frozen_copy, reward_model_scorer,
                        sample_completions, train_ppo, train_reward_model)
from tinyllm.rl.data import encode_text
from tinyllm.rl.reward import evaluate_reward_model

parser = argparse.ArgumentParser(description="RLHF on film reviews: SFT, reward model, PPO (example 08).")
parser.add_argument("--ckpt", default=None, help="pretrained base run (default: runs/demo, else runs/example-base)")
parser.add_argument("--reviews", default="runs/example-reviews", help="the review model's run (made if missing)")
parser.add_argument("--steps", type=int, default=10, help="PPO rollout batches (default: 10)")
parser.add_argument("--lr", type=float, default=1e-4, help="PPO learning rate (default: 1e-4)")
parser.add_argument("--kl-coef", type=float, default=0.5, help="initial β of the KL penalty (default: 0.5)")
parser.add_argument("--target-kl", type=float, default=3.0, help="β adapts to keep the KL per review near this "
                                                                 "(nats; default: 3)")
parser.add_argument("--out", default="runs/example-ppo")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
started = time.perf_counter()


def review_model(base_ckpt, run):
    """(model, tokenizer) of the review model in ``run``, finetuned here from the base first if needed."""
    _, _, base = base_model(base_ckpt)
    run = Path(run)
    if (run / "model.safetensors").exists() and load_config(run).get("base") == str(base):
        print(f"review model: {run} (finetuned from {base} earlier; delete it to finetune again)")
        return load_pretrained(run)
    print(f"--- stage 0: finetuning {base} on 2,000 generated reviews into {run}/")
    model, tokenizer = load_pretrained(base)
    end = end_token(tokenizer).id
    sequences = [[end] + encode_text(tokenizer, r["text"]) + [end] for r in builtin_reviews(2000, seed=0)]
    t0 = time.perf_counter()
    fit(model, len(sequences), lambda rows: instruction_loss(model, *collate_instructions(
        [sequences[i] for i in rows], [1] * len(rows), end)), FinetuneConfig(epochs=1, batch_size=16, lr=1e-3,
                                                                            min_lr=1e-4, log_interval=25, seed=0))
    save_model(run, model, tokenizer, extra_config={"task": "reviews", "base": str(base)})
    print(f"finetuned in {time.perf_counter() - t0:.0f}s\n")
    return model, tokenizer


gpt, tokenizer = review_model(args.ckpt, args.reviews)
end = end_token(tokenizer).id
block = gpt.config.block_size

# ---- stage 1: the reward model
print("--- stage 1: reward model (Bradley-Terry on 'more positive ≻ less positive' pairs)")
reward_model = RewardModel.from_gpt(load_pretrained(args.reviews)[0], seed=args.seed)   # its own copy
pairs = review_preferences(800, seed=100 + args.seed)
train, test = (encode_preferences(split, tokenizer, block) for split in (pairs[:600], pairs[600:]))
t0 = time.perf_counter()
train_reward_model(reward_model, train, None, FinetuneConfig(epochs=1, batch_size=16, lr=3e-4, min_lr=3e-5, warmup=5,
                                                             weight_decay=0.0, log_interval=25, seed=args.seed))
rm_test = evaluate_reward_model(reward_model, test)
print(f"reward model: pairwise accuracy {rm_test['accuracy']:.3f} on {len(test)} held-out pairs "
      f"({time.perf_counter() - t0:.0f}s)\n")

# ---- stage 2: PPO against it
print("--- stage 2: PPO against the reward model")
openings = review_openings()
prompts = [[end] + encode_text(tokenizer, opening) for opening in openings]
score = reward_model_scorer(reward_model)
config = PPOConfig(steps=args.steps, rollout_batch=32, minibatch_size=8, ppo_epochs=4, lr=args.lr, kl_coef=args.kl_coef,
                   target_kl=args.target_kl, kl_horizon=100, max_new_tokens=32, eval_interval=10, log_interval=5,
                   seed=args.seed)


def sample_reviews(model, seed=12345):
    """The same 64 sampled reviews each time (two per opening, fixed seed): texts, reward-model scores,
    share of positive sentiment words."""
    batch = prompts * 2
    used, completions, finished = sample_completions(model, batch, config.max_new_tokens, end, seed=seed)
    texts = [opening + tokenizer.decode([t for t in c if t != end]) for opening, c in zip(openings * 2, completions)]
    scores = score(None, used, completions, finished) - config.missing_end_penalty * ~np.asarray(finished)
    positive, negative = np.sum([sentiment_counts(t) for t in texts], axis=0)
    return texts, float(np.mean(scores)), float(positive / max(positive + negative, 1))


texts_before, score_before, positive_before = sample_reviews(gpt)
reference = frozen_copy(gpt)
policy = PolicyWithValue.from_gpt(gpt, seed=args.seed)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "log.jsonl").unlink(missing_ok=True)
t0 = time.perf_counter()
summary = train_ppo(policy, reference, prompts, score, config, end,
                    log=lambda record: append_jsonl(out / "log.jsonl", record))
seconds = time.perf_counter() - t0
save_model(out, policy.as_gpt(), tokenizer, extra_config={"task": "reviews", "base": str(args.reviews),
                                                          "alignment": {"method": "ppo", "kl_coef": args.kl_coef,
                                                                        "target_kl": args.target_kl}})
plot = plot_log(out / "log.jsonl", out / "log.svg", title="PPO",
                keys=["score", "kl", "kl_coef", "clip_frac", "value_loss", "explained_variance"])
texts_after, score_after, positive_after = sample_reviews(policy)

history = summary["history"]
quarter = max(len(history) // 4, 1)
first, last = history[:quarter], history[-quarter:]
print(f"\nPPO, {args.steps} steps × {config.rollout_batch} reviews × {config.ppo_epochs} epochs in {seconds:.0f}s")
print(f"  rollout score, first {quarter} steps {np.mean([h['score'] for h in first]):.2f} → last {quarter} steps "
      f"{np.mean([h['score'] for h in last]):.2f}; KL per review (k1) in the last {quarter} steps "
      f"{np.mean([h['kl'] for h in last]):.2f} nats, β {history[-1]['kl_coef']:.3f}")
print("  64 reviews sampled with the same seed, before → after PPO:")
print(f"    reward-model score            {score_before:6.2f} → {score_after:6.2f}")
print(f"    positive share of mood words  {positive_before:6.2f} → {positive_after:6.2f}")
for before, after in list(zip(texts_before, texts_after))[:3]:
    print(f"  before: {before!r}\n  after:  {after!r}")
print(f"curves: {plot}; the policy is saved in {out}/ ({time.perf_counter() - started:.0f}s in all)")
