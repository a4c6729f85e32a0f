"""What PPO's and GRPO's training loops share: the optimizer, the rollout's split over processes,
chunked backward passes, a prompt sampler and the logged evaluations.

Both loops alternate two phases, unlike pretraining's single one:

    rollout   no gradients: sample completions, score them, compute the old and reference log-probs
    update    several passes (epochs) over minibatches of that rollout, each a gradient step

so the data of a step is made by the model being trained, and the learning rate is constant (the
reward, not a schedule, decides when learning is done).

Under ``mpiexec`` (``tinyllm.distributed``) each process samples, scores and measures its share of
the rollout's rows (``sample_share``); the shares are gathered (``gather_rollout``), so that every
process holds the whole rollout and computes advantages over all of it (PPO whitens them over every
completion's tokens, GRPO compares each completion with its whole group); each minibatch is again
split over the processes, whose gradients are added before the update (``train.update_weights``).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import distributed
from ..train import param_groups
from ..zero import make_adamw
from .logprobs import check_same_vocab, disable_dropout, pack_completions
from .rollout import sample_completions


def make_optimizer(model, lr: float, weight_decay: float = 0.0, own_rate=None, zero: int = 0):
    """AdamW over the trainable parameters (decay on matrices only), β₂ = 0.99 as in pretraining.
    ``own_rate``: (module, learning rate) for a part that learns at its own rate, undecayed (PPO's
    value head)."""
    groups = param_groups(model, weight_decay)
    if own_rate is not None:
        module, rate = own_rate
        own = [p for p in module.parameters() if p.requires_grad]
        ids = {id(p) for p in own}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
        groups.append({"params": own, "weight_decay": 0.0, "lr_scale": rate / lr})
    if not any(g["params"] for g in groups):
        raise ValueError("no parameter of the policy requires grad: nothing would be trained")
    return make_adamw(groups, zero, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)


def backward_in_chunks(rows, chunk_size: int | None, chunk_loss, total: int | None = None) -> float:
    """The gradient of a mean over ``total`` rows (default: ``rows``) of per-row losses, over
    ``rows`` (this process's share of them), ``chunk_size`` rows at a time; returns its value.

    ``chunk_loss(chunk)`` is the mean loss (a scalar Tensor) of the rows ``chunk``; weighted by its
    share of the rows, each chunk's gradient adds into the parameters' ``.grad``, so the sum is the
    whole mean's. Only one chunk's activations are alive at a time: a group of 128 completions of 90
    tokens would otherwise keep every layer's activations for 11,520 positions until the backward
    pass."""
    rows = np.asarray(rows)
    total = len(rows) if total is None else total
    size = chunk_size or max(len(rows), 1)
    value = 0.0
    for first in range(0, len(rows), size):
        chunk = rows[first:first + size]
        loss = chunk_loss(chunk) * (len(chunk) / total)
        loss.backward()
        value += loss.item()
    return value


def check_rollout_rows(rows: int, what: str) -> None:
    """Every process needs at least one row of each rollout to sample."""
    processes = distributed.world().size
    if rows < processes:
        raise ValueError(f"{what} has {rows} completions, fewer than the {processes} processes: "
                         "each process samples a share of them")


def sample_share(policy, prompts, index, max_new_tokens: int, end_id: int, temperature: float,
                 seed: int):
    """This process's share of a rollout: (its rows of ``index``, the prompts as the model saw them,
    the completions, whether each finished). Row b samples with ``seed + b`` whichever process runs
    it, so the completions are those of a single process sampling every row."""
    rows = distributed.shard(len(index))
    used, completions, finished = sample_completions(policy, [prompts[i] for i in index[rows]],
                                                     max_new_tokens, end_id, temperature,
                                                     seed=seed + rows.start)
    return index[rows], used, completions, finished


def gather_rollout(used, completions, finished, per_row: dict, per_token: dict, end_id: int):
    """Every process's share of a rollout put together, in rank order, on every process.

    ``used``, ``completions``, ``finished``: this process's rows (``sample_share``); ``per_row``:
    lists of one value per row, or dicts of such lists (named reward parts); ``per_token``: Tensors
    (B, C_max) over the completion tokens of this process's packed rows (log-probs, values).
    Returns (the whole batch packed, the whole per-row lists, the whole per-token arrays (B, C_max)
    in float64, 0 past each completion's end)."""
    lengths = [len(c) for c in completions]
    share = {"used": used, "completions": completions, "finished": finished, **per_row,
             **{name: _token_rows(backend.to_numpy(v.data), lengths)
                for name, v in per_token.items()}}
    shares = distributed.all_gather_objects(share)
    whole = {}
    for key, value in share.items():
        if isinstance(value, dict):
            whole[key] = {name: [x for s in shares for x in s[key][name]] for name in value}
        else:
            whole[key] = [x for s in shares for x in s[key]]
    batch = pack_completions(whole["used"], whole["completions"], pad_id=end_id)
    width = batch.mask.shape[1]
    return batch, whole, {name: _padded(whole[name], width) for name in per_token}


def _token_rows(values, lengths) -> list:
    """Each row of ``values`` (B, C) cut to its completion's length."""
    values = np.asarray(values, dtype=np.float64)
    return [values[b, :n] for b, n in enumerate(lengths)]


def _padded(rows, width: int) -> np.ndarray:
    """Rows of different lengths in one (B, width) array, zero past each row's end."""
    out = np.zeros((len(rows), width))
    for b, row in enumerate(rows):
        out[b, :len(row)] = row
    return out


def sample_prompt_indices(rng: np.random.Generator, num_prompts: int, count: int) -> np.ndarray:
    """``count`` prompt indices: without repeats while there are enough prompts, with repeats
    otherwise."""
    if num_prompts < 1:
        raise ValueError("reinforcement learning needs at least one prompt")
    return rng.choice(num_prompts, size=count, replace=num_prompts < count)


def minibatches(rng: np.random.Generator, n: int, size: int | None):
    """Shuffled index arrays covering 0 … n−1 in chunks of ``size`` (None: one chunk of
    everything)."""
    order = rng.permutation(n)
    size = n if not size else size
    return [order[i:i + size] for i in range(0, n, size)]


def start_run(policy, reference, steps: int, log_interval: int, eval_fn, log, progress):
    """What PPO's and GRPO's loops set up alike: the policy and the reference checked and without
    dropout, the policy's weights made rank 0's, rank 0's logger and progress bar, and the
    evaluations (``eval_recorder``). Returns (log, bar, run_eval, evals)."""
    from ..train import Progress
    check_same_vocab(policy, reference)
    disable_dropout(policy)
    disable_dropout(reference)
    distributed.broadcast_parameters(policy.parameters())
    log = distributed.main_only(log)
    bar = Progress(steps, log_interval) if progress and distributed.is_main() else None
    return (log, bar, *eval_recorder(policy, eval_fn, log, bar))


def eval_recorder(policy, eval_fn, log, bar):
    """(run_eval, evals): ``run_eval(step)`` puts the policy in eval mode, logs ``eval_fn(policy)``
    as a kind "eval" record, shows its numbers on the progress bar and keeps it in ``evals``.
    Without an ``eval_fn`` it does nothing. Every process evaluates (the same numbers); rank 0's
    ``log`` writes."""
    evals = []

    def run_eval(step):
        if eval_fn is None:
            return
        policy.eval()
        record = {"kind": "eval", "step": step, **eval_fn(policy)}
        evals.append(record)
        log(record)
        if bar:
            bar.message(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                     if k not in ("kind", "step")
                                                     and isinstance(v, float)))
    return run_eval, evals
