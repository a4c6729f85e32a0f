"""Training runs that tests/test_distributed.py makes under ``mpiexec -n 2`` and again in one
process.

    mpiexec -n 2 python tests/mpi_worker.py OUT SCENARIO [SCENARIO ...]

runs each scenario in every process; rank 0 writes its results into OUT/SCENARIO/ (a pretraining run
directory, or the run's log records and final weights). The test runs the same functions in its own
process (a world of one) and compares. Small float64 models, so that each scenario takes a fraction
of a second.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tinyllm import backend, distributed
from tinyllm.checkpoint import save_model
from tinyllm.data.tokens import random_batch, split_train_val
from tinyllm.files import atomic_write_json
from tinyllm.finetune import FinetuneConfig
from tinyllm.model import GPT, GPTConfig
from tinyllm.train import TrainConfig, pretrain

VOCAB, END, TARGET = 12, 0, 3


def tiny_gpt(dropout=0.0, block_size=8):
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=block_size, n_layer=1, n_head=2, n_embd=16,
                         dropout=dropout), seed=0)


def token_ids(n=400):
    rng = np.random.default_rng(0)
    pattern = np.tile(np.arange(VOCAB), n // VOCAB + 1)[:n]
    return np.where(rng.random(n) < 0.2, rng.integers(0, VOCAB, n), pattern).astype(np.uint16)


def pretrain_run(out, steps=4, dtype="float64", zero=0, resume=False, fail_at_step=None):
    """4 steps of batches of 4 windows, dropout 0.1, checkpoints at steps 2 and 4. ``fail_at_step``:
    the process of rank 1 raises while drawing that step's batch."""
    train_ids, val_ids = split_train_val(token_ids(), 0.2)
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-2, min_lr=1e-3, warmup=2, eval_interval=2,
                         eval_iters=2, log_interval=100, sample_tokens=0, seed=0, zero=zero)

    def batches(step, rng):
        if step == fail_at_step and distributed.world().rank == 1:
            raise RuntimeError(f"injected failure in process 1 at step {step + 1}")
        return random_batch(train_ids, config.batch_size, 8, rng)

    with backend.default_dtype(dtype):
        return pretrain(tiny_gpt(dropout=0.1), train_ids, val_ids, config, run_dir=out,
                        resume=resume, progress=False, batch_sampler=batches)


def _save(out, model, records) -> None:
    """Rank 0 writes the run's records and weights into ``out``."""
    if distributed.is_main():
        Path(out).mkdir(parents=True, exist_ok=True)
        timeless = [{k: v for k, v in r.items() if k != "seconds"} for r in records]
        atomic_write_json(Path(out) / "records.json", timeless)
        save_model(out, model)


def classify_run(out, zero=0):
    """Finetuning (``fit``) of a classifier: 2 epochs of batches of 4 texts, dropout 0.1. The texts
    have one length: a row's dropout masks depend on its block's padded length, which a split can
    change."""
    from tinyllm.finetune.classify import GPTClassifier, train_classifier
    from tinyllm.tokenizer import CharTokenizer
    rng = np.random.default_rng(1)
    texts = ["".join(rng.choice(list("abcab" if k else "xyzxy"), 6)) for k in (0, 1) * 7]
    examples = [("ab" if "a" in t or "b" in t else "xy", t) for t in texts]
    tokenizer = CharTokenizer.from_text("".join(texts))
    records = []
    with backend.default_dtype("float64"):
        model = GPTClassifier.from_gpt(tiny_gpt(block_size=8), 2, ["ab", "xy"], seed=0)
        config = FinetuneConfig(epochs=2, batch_size=4, lr=1e-2, warmup=1, dropout=0.1, seed=0,
                                zero=zero)
        train_classifier(model, tokenizer, examples[:11], examples[11:], config, progress=False,
                         log=records.append)
    _save(out, model, records)


def dpo_run(out):
    """DPO on 10 pairs whose chosen response holds token 3 where the rejected one has 4; batches of
    4."""
    from tinyllm.rl.data import EncodedPairs
    from tinyllm.rl.dpo import train_dpo
    from tinyllm.rl.logprobs import frozen_copy
    rng = np.random.default_rng(2)
    pairs = EncodedPairs()
    for _ in range(10):
        good = [int(x) for x in rng.integers(1, 8, 3)]
        good[int(rng.integers(3))] = TARGET
        pairs.prompts.append([int(x) for x in rng.integers(1, 8, int(rng.integers(1, 4)))])
        pairs.chosen.append(good + [END])
        pairs.rejected.append([4 if x == TARGET else x for x in good] + [END])
    records = []
    with backend.default_dtype("float64"):
        policy = tiny_gpt(block_size=16)
        config = FinetuneConfig(epochs=1, batch_size=4, lr=1e-2, warmup=1, seed=0)
        train_dpo(policy, frozen_copy(policy), pairs, None, config, beta=0.5, progress=False,
                  log=records.append)
    _save(out, policy, records)


def share_of_target(index, prompt_ids, completions, finished):
    return np.array([np.mean([t == TARGET for t in c if t != END] or [0.0]) for c in completions])


PROMPTS = [[1, 2], [2, 1], [4, 5, 6], [7]]


def grpo_run(out):
    """Two GRPO steps: 4 prompts × 4 completions, two updates of minibatches of 8, chunks of 3."""
    from tinyllm.rl.grpo import GRPOConfig, train_grpo
    from tinyllm.rl.logprobs import frozen_copy
    with backend.default_dtype("float64"):
        policy = tiny_gpt(block_size=16)
        config = GRPOConfig(steps=2, prompts_per_step=4, group_size=4, updates=2, minibatch_size=8,
                            chunk_size=3, lr=1e-2, max_new_tokens=5, eval_interval=100)
        summary = train_grpo(policy, frozen_copy(policy), PROMPTS, share_of_target, config, END,
                             progress=False)
    _save(out, policy, summary["history"])


def ppo_run(out):
    """Two PPO steps: rollouts of 8, two epochs of minibatches of 4."""
    from tinyllm.rl.logprobs import frozen_copy
    from tinyllm.rl.ppo import PolicyWithValue, PPOConfig, train_ppo
    with backend.default_dtype("float64"):
        gpt = tiny_gpt(block_size=16)
        reference = frozen_copy(gpt)
        policy = PolicyWithValue.from_gpt(gpt)
        config = PPOConfig(steps=2, rollout_batch=8, minibatch_size=4, ppo_epochs=2, lr=1e-2,
                           max_new_tokens=5, eval_interval=100)
        summary = train_ppo(policy, reference, PROMPTS, share_of_target, config, END,
                            progress=False)
    _save(out, policy, summary["history"])


SCENARIOS = {
    "pretrain": lambda out: pretrain_run(out),
    "pretrain_float32": lambda out: pretrain_run(out, dtype="float32"),
    "pretrain_zero": lambda out: pretrain_run(out, zero=1),
    "resumed": lambda out: (pretrain_run(out, steps=2), pretrain_run(out, steps=4, resume=True)),
    "resumed_from_one": lambda out: pretrain_run(out, steps=4, resume=True),   # saved: step 2
    "classify": classify_run,
    "classify_zero": lambda out: classify_run(out, zero=1),
    "dpo": dpo_run,
    "grpo": grpo_run,
    "ppo": ppo_run,
    "failure": lambda out: pretrain_run(out, steps=8, fail_at_step=4),
}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name in sys.argv[2:]:
        SCENARIOS[name](root / name)
