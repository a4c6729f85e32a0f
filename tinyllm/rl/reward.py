"""The reward model: a GPT that reads a prompt + response and outputs one number, "how good is
this".

    prompt + response + end (B, T), right-padded ──GPT──► hidden (B, T, C) ──last real token──► (B, C)
                                                                          ──score_head──► r (B,)

It is ``GPTClassifier``'s idea (``tinyllm.finetune.classify``) with one output instead of K: the
last real token is the only position that has seen the whole text. It learns from pairs, never from
absolute scores (people agree more on "A is better than B" than on "A is a 7"): the Bradley-Terry
model says

    P(chosen ≻ rejected) = σ(r_c − r_r),      loss = −log σ(r_c − r_r)   (mean over pairs)

and   d loss / d r_c = −σ(−(r_c − r_r)) = −(1 − P),   d loss / d r_r = +(1 − P):
a pair the model already orders confidently (P → 1) teaches almost nothing, a misordered one a lot.
Only differences matter, so a constant added to every score changes nothing (rewards have no natural
zero; PPO's advantages subtract a baseline anyway).

Pairwise accuracy: the fraction of held-out pairs with r_c > r_r (a tie counts ½, so an untrained
model that scores everything alike sits at 50%).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import distributed
from ..autograd import Tensor, array_of, no_grad
from ..finetune.classify import last_token_states, pad_batch
from ..model import GPT, GPTConfig
from ..nn import Linear, init_rng
from .logprobs import log_sigmoid


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """mean over pairs of −log σ(r_chosen − r_rejected). Shapes (B,) and (B,) → scalar."""
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"bradley_terry_loss: chosen scores {chosen_scores.shape} and rejected "
                         f"scores {rejected_scores.shape} must have the same shape (one of each "
                         "per pair)")
    return -log_sigmoid(chosen_scores - rejected_scores).mean()


def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    """Fraction of pairs with chosen > rejected; a tie counts ½."""
    c, r = np.asarray(chosen_scores, dtype=np.float64), np.asarray(rejected_scores,
                                                                   dtype=np.float64)
    return float(np.mean((c > r) + 0.5 * (c == r))) if c.size else float("nan")


class StepMetrics:
    """A training step's metrics over its pairs, put together from the blocks of pairs it was split
    into.

    ``fit`` splits each step's pairs over the processes and the CPU cores, so a loss function runs
    once per block, on several threads at once. Each call adds its block's means (``add``); ``pop``
    returns their means over all the step's pairs, summed in a fixed order (the same bits on every
    run) and over the processes (so every process must call it, and know the metrics' ``names``: one
    may have no block), and starts the next step.
    """

    def __init__(self, names=None):
        self.names = tuple(names) if names is not None else None
        self.blocks = []

    def add(self, index, metrics: dict) -> None:
        # one append: safe from several threads
        self.blocks.append((int(index[0]), len(index), metrics))

    def pop(self) -> dict:
        blocks, self.blocks = sorted(self.blocks, key=lambda block: block[0]), []
        names = self.names if self.names is not None else tuple(blocks[0][2]) if blocks else ()
        if self.names is None and distributed.active():
            raise ValueError("StepMetrics needs the metrics' names when several processes train "
                             "together")
        sums = [sum(n * m[k] for _, n, m in blocks) for k in names] + [sum(n for _, n, _ in blocks)]
        *sums, pairs = distributed.sum_over_ranks(sums).tolist()
        return {k: total / pairs for k, total in zip(names, sums)} if pairs else {}


class RewardModel(GPT):
    """A GPT with ``score_head`` = Linear(C, 1) on the last real token: ``model(ids, lengths)`` →
    scores (B,)."""

    def __init__(self, config: GPTConfig, seed: int = 0):
        super().__init__(config, seed)
        self._add_head(seed)

    @classmethod
    def from_gpt(cls, gpt: GPT, seed: int = 0) -> "RewardModel":
        """A reward model sharing ``gpt``'s parameters (no copy) with a fresh scalar head."""
        model = cls.__new__(cls)
        model.__dict__.update({k: v for k, v in vars(gpt).items() if k not in ("value_head",
                                                                               "classifier")})
        model._add_head(seed)
        return model

    def _add_head(self, seed):
        # Small weights: scores start near 0 for every text, so the first pairs are near P = ½.
        self.score_head = Linear(self.config.n_embd, 1, True, 0.02, init_rng(seed + 1))

    def forward(self, idx, lengths=None):
        """idx (B, T) right-padded ids, lengths (B,) real tokens per row (default: all T) → scores
        (B,)."""
        return self.scores(idx, lengths)[0]

    def scores(self, idx, lengths=None):
        """``forward``'s scores (B,) and the forward's ``MoEBalance`` (for a training loss to
        add)."""
        xp = backend.xp
        idx = xp.asarray(array_of(idx))
        if lengths is None:
            lengths = xp.full(idx.shape[0], idx.shape[1])
        hidden, balance = self.trunk(idx)                     # (B, T, C)
        # (B,)
        scores = self.score_head(last_token_states(hidden, xp.asarray(lengths))).reshape(-1)
        return scores, balance

    def score_ids(self, sequences, batch_size: int = 32) -> np.ndarray:
        """Scores (N,) of token-id lists (each a whole prompt + response), batched, in eval mode, no
        gradients."""
        scores = np.empty(len(sequences))
        # similar lengths share a batch
        order = np.argsort([len(s) for s in sequences], kind="stable")
        was_training = self.training
        # no dropout: a score is a deterministic judgement
        self.eval()
        try:
            with no_grad():
                for first in range(0, len(order), batch_size):
                    rows = order[first:first + batch_size]
                    ids, lengths = pad_batch([sequences[i] for i in rows])
                    scores[rows] = backend.to_numpy(self(ids, lengths).data)
        finally:
            self.train(was_training)
        return scores


def pair_scores(model: RewardModel, pairs, index) -> tuple:
    """Scores (B,) of the chosen and rejected sequences of pairs ``index``, in one forward pass of
    2B rows, and that forward's ``MoEBalance``."""
    chosen = [pairs.prompts[i] + pairs.chosen[i] for i in index]
    rejected = [pairs.prompts[i] + pairs.rejected[i] for i in index]
    ids, lengths = pad_batch(chosen + rejected)
    scores, balance = model.scores(ids, lengths)              # (2B,)
    n = len(index)
    return scores[:n], scores[n:], balance


def evaluate_reward_model(model: RewardModel, pairs, batch_size: int = 32) -> dict:
    """Pairwise accuracy, mean loss and mean margin r_c − r_r on ``pairs`` (an ``EncodedPairs``)."""
    chosen = model.score_ids([p + c for p, c in zip(pairs.prompts, pairs.chosen)], batch_size)
    rejected = model.score_ids([p + r for p, r in zip(pairs.prompts, pairs.rejected)], batch_size)
    margin = chosen - rejected
    loss = float(np.mean(np.logaddexp(0.0, -margin)))         # −log σ(m) = log(1 + e^(−m))
    return {"accuracy": pairwise_accuracy(chosen, rejected), "loss": loss,
            "margin": float(margin.mean()), "chosen_scores": chosen, "rejected_scores": rejected}


def train_reward_model(model: RewardModel, train_pairs, val_pairs=None, config=None, progress=True,
                       log=None) -> dict:
    """Bradley-Terry training on ``EncodedPairs``, epochs of shuffled pairs (the finetuning loop,
    ``fit``). Each step logs loss, accuracy and margin of its batch; each epoch the held-out
    accuracy, loss, margin."""
    from ..finetune.loop import FinetuneConfig, fit
    from .logprobs import disable_dropout
    config = config or FinetuneConfig()
    disable_dropout(model)
    step_metrics = StepMetrics(("accuracy", "margin"))

    def loss_fn(index):
        chosen, rejected, balance = pair_scores(model, train_pairs, index)
        loss = balance.added_to(bradley_terry_loss(chosen, rejected))
        c, r = backend.to_numpy(chosen.data), backend.to_numpy(rejected.data)
        step_metrics.add(index, {"accuracy": pairwise_accuracy(c, r),
                                 "margin": float((c - r).mean())})
        return loss

    def evaluate_fn():
        if not val_pairs:
            return {}
        result = evaluate_reward_model(model, val_pairs, config.batch_size * 2)
        return {"val_accuracy": result["accuracy"], "val_loss": result["loss"],
                "val_margin": result["margin"]}

    return fit(model, len(train_pairs), loss_fn, config, evaluate_fn, progress, log,
               step_metrics=step_metrics)


def save_reward_model(run_dir, model: RewardModel, tokenizer=None,
                      extra_config: dict | None = None) -> None:
    """A run directory with the GPT + score head and ``"task": "reward"`` in config.json."""
    from ..checkpoint import save_model
    save_model(run_dir, model, tokenizer, extra_config={**(extra_config or {}), "task": "reward"})


def load_reward_model(path):
    """(reward model, tokenizer) from a run directory written by ``save_reward_model``."""
    from ..checkpoint import TOKENIZER, _run_dir, load_config, load_tokenizer_of, load_weights
    from ..safetensors import read_header
    run_dir = _run_dir(path)
    config = load_config(run_dir)
    if config.get("task") != "reward":
        raise ValueError(f"'{run_dir}' is not a reward-model run (its config.json has task "
                         f"{config.get('task')!r}); train one with `tinyllm align reward`")
    saved = {info.dtype for info in read_header(run_dir / "model.safetensors").tensors.values()}
    with backend.default_dtype("float64" if saved == {"F64"} else "float32"):
        model = RewardModel(GPTConfig.from_dict(config["model"]))
    load_weights(model, run_dir)
    model.eval()
    tokenizer = load_tokenizer_of(run_dir) if (run_dir / config.get("tokenizer",
                                                                    TOKENIZER)).exists() else None
    return model, tokenizer


__all__ = ["RewardModel", "bradley_terry_loss", "pairwise_accuracy", "pair_scores",
           "evaluate_reward_model", "train_reward_model", "save_reward_model", "load_reward_model"]
