"""The training loop that classification and instruction finetuning share.

Finetuning is pretraining's loop on a labelled dataset: epochs over shuffled examples instead of
random windows, a smaller learning rate, and only the parameters with ``requires_grad`` in the
optimizer (frozen blocks and LoRA's frozen base weights get no AdamW moments, which is where LoRA
saves its memory).

    for each epoch:  shuffle → batches of example indices → loss_fn(indices) → backward → clip →
    AdamW
                     (each batch split over the processes and the CPU cores, as in pretraining)
    after each epoch: evaluate_fn() → a dict of metrics, logged and printed
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np

from .. import backend
from .. import distributed
from ..flags import option
from ..interrupt import StopRequests
from ..optim import optimizer_bytes, warmup_cosine_lr
from ..train import Progress, data_parallel_backward, param_groups, update_weights
from ..zero import describe as describe_zero, make_adamw


@dataclasses.dataclass
class FinetuneConfig:
    """The finetuning loop's settings. The ``option`` fields are ``tinyllm finetune``'s flags of
    the same names (``cli.common.add_config_flags``); the others have flags whose default depends
    on the mode (LoRA, prompt tuning), written by hand in ``cli/finetune.py``."""
    epochs: int = option(3, "passes over the training examples")
    batch_size: int = option(8, "examples per step (padded to the longest)")
    # peak learning rate (after warmup); cosine decay to min_lr at the end
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = option(10, "linear warmup steps", "non_negative")
    weight_decay: float = 0.1      # on matrices only
    grad_clip: float = option(1.0, "max gradient norm (0 = off)")
    log_interval: int = option(10, "steps between progress lines (when not on a terminal)")
    bucket: int = option(32, "batch texts of similar length: sort windows of this many batches by "
                             "length (0 = off)", "non_negative")
    # set every Dropout layer to this while finetuning (None = keep the model's)
    dropout: float | None = None
    seed: int = option(123, "data shuffling, splits and the head's initialisation",
                       "non_negative")
    zero: int = 0                  # 1: AdamW's moments sharded over the processes (tinyllm.zero)

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"FinetuneConfig.lr must be positive, got {self.lr}")


def epoch_batches(rng, num_examples: int, batch_size: int, lengths=None, bucket: int = 32) -> list:
    """One epoch's batches of example indices: a random permutation cut into batches.

    With ``lengths`` and ``bucket`` > 0, each window of ``bucket`` batches is sorted by length
    before it is cut, and the batches are then shuffled: a batch holds texts of similar length, so
    padding to the longest one in it wastes little (on SMS spam: 98 → ~60 padded tokens per text on
    average), while the order of batches and which texts meet stays random from epoch to epoch.
    """
    order = rng.permutation(num_examples)
    if lengths is None or bucket <= 0:
        return [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
    lengths = np.asarray(lengths)
    window = batch_size * bucket
    batches = []
    for start in range(0, num_examples, window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def fit(model, num_examples: int, loss_fn, config: FinetuneConfig, evaluate_fn=None, progress=True,
        log=None, lengths=None, weight_fn=None, step_metrics=None) -> dict:
    """Train ``model`` for ``config.epochs`` epochs over ``num_examples`` examples.

    ``loss_fn(indices)``: the mean loss (a scalar Tensor) of the examples at ``indices`` (an int
    array); for a mixture-of-experts model it includes the balancing loss of the forward it ran
    (``GPT.trunk``; ``GPT.forward`` and the heads in this package do so). Each batch's examples are
    split over the processes and CPU cores (``train.data_parallel_backward``):
    ``weight_fn(indices)`` counts what ``loss_fn``'s mean is over (default: the examples; for a loss
    over tokens, their number), so that the blocks' means add up to the batch's. ``loss_fn`` runs on
    several threads at once: whatever it records on the side must be per call, as ``step_metrics``
    does (``rl.reward.StepMetrics``: its means over each step's examples are added to the step's
    record). ``evaluate_fn()``: metrics after each epoch (a dict of numbers), printed and added to
    the history. ``log(record)``: called with every step's and every epoch's record (e.g.
    ``append_jsonl`` to a file); under ``mpiexec``, by rank 0 only. ``lengths``: each example's
    length in tokens, to batch similar lengths together (see ``epoch_batches``). Ctrl-C stops
    training after the step it comes in (``tinyllm.interrupt``), with ``"interrupted": True``.
    Returns ``{"history": [epoch dicts], "seconds", "steps", "total_steps", "interrupted",
    "trainable", "optimizer_bytes"}``.
    """
    optimizer = _optimizer(model, num_examples, config)
    distributed.broadcast_parameters(model.parameters())
    total_steps = math.ceil(num_examples / config.batch_size) * config.epochs
    order_rng = np.random.default_rng(config.seed)
    backend.manual_seed(config.seed)                          # dropout
    if config.dropout is not None:
        set_dropout(model, config.dropout)
    shown = progress and distributed.is_main()
    bar = Progress(total_steps, config.log_interval) if shown else None
    say, log = (bar.message if bar else (lambda text: None)), distributed.main_only(log)
    if describe_zero(optimizer):
        say(describe_zero(optimizer))
    history, step, stopped = [], 0, False

    train_step = functools.partial(_train_step, model, optimizer, loss_fn, config, total_steps,
                                   weight_fn, step_metrics)
    model.train()
    started = time.perf_counter()
    with StopRequests() as stop:       # Ctrl-C: finish the step, then return what is trained so far
        for epoch in range(config.epochs):
            batches = epoch_batches(order_rng, num_examples, config.batch_size, lengths,
                                    config.bucket)
            where = (step, epoch, config.epochs)
            loss_sum, step, stopped = _train_epoch(train_step, batches, where, stop, log, bar)
            if stopped:
                break
            record = _end_epoch(model, evaluate_fn, epoch, step, loss_sum / num_examples, started)
            history.append(record)
            log(record)
            say(f"epoch {epoch + 1}/{config.epochs}: " + ", ".join(
                _fmt(k, v) for k, v in record.items() if k not in ("kind", "step", "epoch")))
    return {"history": history, "seconds": time.perf_counter() - started, "steps": step,
            "total_steps": total_steps, "interrupted": stopped,
            "trainable": model.num_parameters(trainable_only=True),
            "optimizer_bytes": optimizer_bytes(optimizer)}


def _optimizer(model, num_examples: int, config: FinetuneConfig):
    """AdamW over the trainable parameters (``config.zero``: sharded), after checking that there is
    work to do."""
    if num_examples < 1:
        raise ValueError("finetuning needs at least one training example")
    distributed.check_divides(config.batch_size)
    groups = param_groups(model, config.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no parameter of the model requires grad: nothing would be trained")
    return make_adamw(groups, config.zero, lr=config.lr, betas=(0.9, 0.999),
                      weight_decay=config.weight_decay)


def _train_epoch(train_step, batches, where, stop, log, bar) -> tuple:
    """The steps of one epoch (``where``: the step it starts at, the epoch, of how many); returns
    (the sum of their losses × batch sizes, the step reached, whether Ctrl-C stopped it: in any
    process, and then in all at the same step)."""
    step, epoch, epochs = where
    loss_sum = 0.0
    for indices in batches:
        if distributed.any_rank(stop.requested):
            return loss_sum, step, True
        record = train_step(indices, step, epoch)
        loss_sum += record["loss"] * len(indices)
        log(record)
        if bar:
            bar.update(step, f"epoch {epoch + 1}/{epochs} | loss {record['loss']:.4f} | "
                             f"lr {record['lr']:.2e}")
        step += 1
    return loss_sum, step, False


def _train_step(model, optimizer, block_loss, config, total_steps, weight_fn, step_metrics,
                indices, step: int, epoch: int) -> dict:
    """One step on the examples ``indices`` (this process's share of them, over its cores); its
    record."""
    optimizer.lr = lr = warmup_cosine_lr(step, config.lr, config.min_lr, config.warmup, total_steps)
    loss = data_parallel_backward(block_loss, indices, weight=weight_fn)
    loss, grad_norm, _ = update_weights(optimizer, loss, config.grad_clip,
                                        f"step {step + 1} (epoch {epoch + 1})", what="finetuning")
    record = {"kind": "train", "step": step + 1, "epoch": epoch + 1, "loss": loss, "lr": lr,
              "grad_norm": grad_norm}
    if step_metrics is not None:
        record.update(step_metrics.pop())
    return record


def _end_epoch(model, evaluate_fn, epoch: int, step: int, train_loss: float,
               started: float) -> dict:
    """The record of an epoch: its mean training loss and ``evaluate_fn()``'s metrics (in every
    process)."""
    record = {"kind": "eval", "step": step, "epoch": epoch + 1, "train_loss": train_loss}
    if evaluate_fn is not None:
        record.update(evaluate_fn())
        model.train()
    record["seconds"] = time.perf_counter() - started
    return record


def _fmt(key, value) -> str:
    if key == "seconds":
        return f"{value:.0f}s elapsed"
    return f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"


def set_dropout(model, p: float) -> None:
    """Set the probability of every ``Dropout`` layer of ``model`` (and ``config.dropout``, so a
    saved run records it)."""
    from ..nn import Dropout
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    for _, module in model.named_modules():
        if isinstance(module, Dropout):
            module.p = p
    if hasattr(model, "config"):
        model.config.dropout = p


def freeze_except_last(model, num_blocks: int, also=()) -> None:
    """Freeze every parameter except those of the last ``num_blocks`` transformer blocks, the final
    layer norm (``ln_f``) and the modules named in ``also`` (e.g. ``("classifier",)``).
    ``num_blocks`` < 0 leaves everything trainable; 0 trains only ``ln_f`` and ``also``.

    Freezing is ``requires_grad = False``: the backward pass then skips those weights' gradients
    (each fused op checks ``requires_grad``) and the optimizer never sees them.
    """
    if num_blocks < 0:
        for p in model.parameters():
            p.requires_grad = True
        return
    n_layer = len(model.blocks)
    if num_blocks > n_layer:
        raise ValueError(f"cannot keep the last {num_blocks} blocks trainable: the model has "
                         f"{n_layer}")
    keep = [f"blocks.{i}" for i in range(n_layer - num_blocks, n_layer)] + ["ln_f", *also]
    for name, p in model.named_parameters():
        p.requires_grad = any(name.startswith(prefix + ".") for prefix in keep)
