"""Pretraining: next-token prediction on unlabeled text, with evaluation, logging and resumable
checkpoints.

One step:   x, y = random windows of the training ids      (B, T) each, y = x shifted by one
            loss = cross_entropy(model(x), y)                mean over B·T positions
            loss.backward()                                   (× grad_accum micro-batches, each scaled 1/grad_accum;
                                                              each split over the CPU cores:
                                                              forward_backward)
            global gradient norm, scheduled learning rate, AdamW step on the gradients clipped to
            grad_clip (the clip factor is folded into the update: optim.clip_factor)

Every ``eval_interval`` steps the mean loss on a fixed set of validation windows (and perplexity =
e^loss) is logged, a short sample is printed and the run is saved; so is the current step when
Ctrl-C stops the run. ``resume=True`` restores weights, AdamW moments and the random generators'
states, so a resumed run reproduces the uninterrupted one exactly on the CPU (with the same number
of threads: ``forward_backward`` splits each batch into one block per thread).

Under ``mpiexec -n N`` the same loop runs in N processes (``tinyllm.distributed``): each draws the
same global batch, trains on its share of the rows, and the processes add their gradients before the
update (``update_weights``); rank 0 alone logs, samples and saves. ``--batch-size`` stays the global
batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import backend
from . import distributed
from . import parallel
from .autograd import no_grad
from .checkpoint import (check_resumable, config_differences, load_config, load_train_state,
                         load_weights, save_model, save_train_state)
from .data.tokens import TokenWindows, check_length, random_batch
from .flags import option
from .files import append_jsonl, atomic_write, read_jsonl, written_together
from .interrupt import StopRequests, TrainingInterrupted
from .optim import clip_factor, grad_norm as global_grad_norm, warmup_cosine_lr
from .zero import describe as describe_zero, make_adamw


@dataclasses.dataclass
class TrainConfig:
    """Pretraining's settings; each ``option`` is also a flag of ``tinyllm pretrain``
    (``tinyllm.flags``)."""
    steps: int = option(1000, "optimizer steps (the total, also when resuming)")
    batch_size: int = option(12, "windows of --context tokens per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(1e-3, "peak learning rate, reached after warmup", "positive")
    min_lr: float = option(1e-4, "learning rate at the end of the cosine decay (the last step)")
    warmup: int = option(100, "linear warmup steps", "non_negative")
    beta1: float = option(0.9, "AdamW decay rate of the gradient average", "probability")
    beta2: float = option(0.99, "AdamW decay rate of the squared-gradient average", "probability")
    weight_decay: float = option(0.1, "AdamW weight decay, on matrices only (biases and norm "
                                      "weights are not decayed)")
    grad_clip: float = option(1.0, "max global gradient norm (0 = off)")
    eval_interval: int = option(250, "evaluate, sample and save every this many steps")
    eval_iters: int = option(20, "validation batches per evaluation")
    log_interval: int = option(10, "steps between progress lines when not on a terminal")
    sample_tokens: int = option(40, "tokens sampled at each evaluation (0 = none)", "non_negative")
    seed: int = option(1337, "seed of the initial weights, the data order and dropout",
                       "non_negative")
    zero: int = 0                  # 1: AdamW's moments sharded over the processes (tinyllm.zero)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/Inf; the run directory keeps the last good checkpoint."""


def param_groups(model, weight_decay):
    """Decay matrices (weights of linear layers and embeddings); leave vectors (biases, norm gains)
    alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def forward_backward(model, x, y, scale: float = 1.0, weight=None, loss=None) -> float:
    """The model's mean loss on inputs x and targets y (B, T); adds scale × its gradient to the
    parameters' ``.grad``. Every position has a target in next-token pretraining, so a block of rows
    weighs rows / B (``data_parallel_backward``); ``weight(x, y)`` counts a block's targets
    otherwise (masked LM). ``loss(x, y)``: a scalar Tensor to use instead of the model's own loss
    (distillation)."""
    loss = loss or (lambda x, y: model(x, y)[1])
    return data_parallel_backward(loss, x, y, weight=weight, scale=scale)


def data_parallel_backward(block_loss, *arrays, weight=None, scale: float = 1.0) -> float:
    """Forward and backward of a batch's mean loss, split over the processes and the CPU cores;
    returns this process's part of the loss's value (the whole value in a world of one).

    ``block_loss(*blocks)`` is the mean loss (a scalar Tensor) over the items of some rows of
    ``arrays`` (the items: the rows themselves, or their unmasked targets); ``weight(*blocks)``
    counts those items (by default the rows). The rows are split into one block per core, and
    threads run a whole forward and backward pass on each block side by side
    (``parallel.data_parallel``). Block k's mean enters with weight w_k / Σ w, so the sum is the
    whole batch's mean and its gradient, scaled by ``scale``, is added to the parameters' ``.grad``.
    Each thread collects its own parameter gradients and they are added here in block order: the
    result equals the whole batch's up to float rounding, and is the same on every run. Each row
    draws its dropout masks from its own generator (``backend.RowGenerators``), seeded from the
    global stream, so the masks do not depend on the split. A mixture of experts' balancing loss is
    the one exception: ``block_loss`` includes it for its own rows (``GPT.trunk``), as every data-
    parallel MoE computes it per device, so that term (not the cross-entropy) depends on the split.

    With several processes (``tinyllm.distributed``) ``arrays`` is the global batch, the same in
    each; a process runs its own rows (``distributed.shard``) and the weights are shares of the
    global total, so the processes' parts add up (``update_weights``) to what one process computes
    on the whole batch.
    """
    weight = weight or (lambda *rows: len(rows[0]))
    total = weight(*arrays)
    seeds = backend.seed_stream().integers(2**31, size=len(arrays[0]))  # rows' dropout generators
    mine = distributed.shard(len(arrays[0]))
    arrays, seeds = [a[mine] for a in arrays], seeds[mine]
    if not len(seeds):                         # fewer rows than processes: nothing here this time
        return 0.0

    def run_block(seeds_block, *block):
        share = weight(*block) / total if total else 0.0
        # this block's parameter gradients, added below in order
        grads = {}
        with backend.thread_rng(backend.RowGenerators(seeds_block)):
            loss = block_loss(*block)
            loss.backward(backend.xp.asarray(scale * share, dtype=loss.dtype), leaf_grads=grads)
        return loss.item() * share, grads

    blocks = parallel.data_parallel(run_block, seeds, *arrays)
    parallel.add_leaf_grads(*(grads for _, grads in blocks))
    return sum(loss for loss, _ in blocks)


def update_weights(optimizer, loss: float, grad_clip: float, where: str, *sums,
                   what: str = "training", advice: str = ". Try a lower --lr") -> tuple:
    """The update after this process's backward passes: gradients, ``loss`` and ``sums`` added over
    the processes (``distributed.all_reduce_gradients``; ZeRO's ``reduce_gradients``), the global
    gradient norm, the AdamW step with the gradients clipped to ``grad_clip`` (the factor folded
    into the update), cleared gradients. Returns (loss, gradient norm, [sums]) as added over the
    processes. Raises ``TrainingDiverged`` ("{what} diverged at {where}: ...{advice}") on a
    non-finite loss or norm, before any update."""
    if hasattr(optimizer, "reduce_gradients"):          # ZeRO-1: each process keeps its shard's sum
        loss, *sums = optimizer.reduce_gradients(loss, *sums)
        norm = optimizer.grad_norm()
    else:
        loss, *sums = distributed.all_reduce_gradients(optimizer.parameters(), loss, *sums)
        norm = global_grad_norm(optimizer.parameters())
    if not (math.isfinite(loss) and math.isfinite(norm)):
        optimizer.zero_grad()
        raise TrainingDiverged(f"{what} diverged at {where}: loss {loss}, gradient norm {norm}"
                               f"{advice}")
    optimizer.step(grad_scale=clip_factor(norm, grad_clip or None))
    optimizer.zero_grad()
    return loss, norm, sums


def evaluate(model, ids, batch_size: int, context: int, max_batches: int | None = None) -> dict:
    """Mean next-token loss over non-overlapping windows of ``ids`` (the first ``max_batches``
    batches of windows spread evenly across the data), and its perplexity e^loss. With several
    processes each runs its share of every batch and the sums are added: call it in every
    process."""
    windows = TokenWindows(ids, context)
    if max_batches is not None and len(windows) > max_batches * batch_size:
        keep = np.linspace(0, len(windows) - 1, max_batches * batch_size).astype(int)
        windows.starts = windows.starts[keep]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0

    def summed_loss(x, y):
        _, loss = model(x, y)
        return loss.item() * y.size, y.size

    with no_grad():
        for x, y in windows.batches(batch_size):
            mine = distributed.shard(len(x))
            if mine.start < mine.stop:
                for block in parallel.data_parallel(summed_loss, x[mine], y[mine]):
                    total += block[0]
                    count += block[1]
    model.train(was_training)
    total, count = (float(v) for v in distributed.sum_over_ranks([total, count]))
    mean = total / count
    return {"loss": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": int(count)}


class Progress:
    """One live status line on a terminal (rewritten in place); plain lines every ``every`` steps
    otherwise."""

    def __init__(self, total: int, every: int, stream=None):
        self.total, self.every = total, max(1, every)
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.perf_counter()
        self.start_step = None

    def update(self, step: int, text: str) -> None:
        if self.start_step is None:
            self.start_step = step
        done = step - self.start_step + 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total - step - 1)
        line = f"step {step + 1}/{self.total} | {text} | ETA {_duration(eta)}"
        if self.live:
            self.stream.write("\r" + line.ljust(100)[:120])
            self.stream.flush()
        elif (step + 1) % self.every == 0 or step + 1 == self.total:
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.live:
            self.stream.write("\r" + " " * 120 + "\r")
        print(text, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def pretrain(model, train_ids, val_ids, config: TrainConfig, run_dir=None, tokenizer=None,
             resume: bool = False, progress=True, extra_config=None, batch_sampler=None,
             objective=None) -> dict:
    """Train ``model`` on ``train_ids`` and return a summary (first/last validation loss, time,
    tokens/s).

    With ``run_dir``, writes ``log.jsonl``, checkpoints at every evaluation and at the end, and
    ``loss.svg``; ``resume=True`` continues the run saved there. Ctrl-C finishes the current step,
    saves it and raises ``TrainingInterrupted`` (a KeyboardInterrupt naming the checkpoint;
    ``tinyllm.interrupt``). ``batch_sampler(step, generator) -> (x, y)`` replaces the random windows
    (e.g. a curriculum: ``tinyllm.data.curriculum``); it must draw only from ``generator``.
    ``objective`` replaces next-token prediction altogether (``tinyllm.mlm.MaskedLM``): it is the
    batch sampler, ``objective.evaluate(model, ids, max_batches)`` the evaluation,
    ``objective.targets(x, y)`` a block's weight; no samples are printed. Under ``mpiexec`` call it
    in every process (module docstring). An objective with a ``loss(model, x, y)`` method
    also replaces the loss (``tinyllm.distill.Distillation``).
    """
    run = Pretraining(model, train_ids, val_ids, config, run_dir, tokenizer, extra_config,
                      objective if objective is not None else batch_sampler, objective, resume)
    if resume:
        run.restore()
    return run.train(progress)


class Pretraining:
    """One pretraining run: its model, optimizer, random generators and run directory, and its
    phases (``restore``, ``train``, ``train_step``, ``evaluate``, ``save``,
    ``stop_if_requested``)."""

    def __init__(self, model, train_ids, val_ids, config: TrainConfig, run_dir, tokenizer,
                 extra_config, batch_sampler, objective, resume: bool):
        self.context = model.config.block_size
        check_length(train_ids, self.context, "the training split")
        check_length(val_ids, self.context, "the validation split")
        distributed.check_divides(config.batch_size)
        self.model, self.train_ids, self.val_ids, self.config = model, train_ids, val_ids, config
        self.tokenizer, self.extra_config = tokenizer, extra_config
        self.batch_sampler, self.objective = batch_sampler, objective
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writes = self.run_dir is not None and distributed.is_main()   # rank 0 alone writes
        if self.writes:   # the log is written (step 0's eval) before the first save
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:            # a new run starts a new log (not one after a crashed run's)
                (self.run_dir / "log.jsonl").unlink(missing_ok=True)
        self.optimizer = make_adamw(param_groups(model, config.weight_decay), config.zero,
                                    lr=config.lr, betas=(config.beta1, config.beta2),
                                    weight_decay=config.weight_decay)
        distributed.broadcast_parameters(model.parameters())
        # The batches' generator is seeded with (seed, 1): a stream independent of the weights'
        # (GPT(config, seed) draws them from default_rng(seed)). With one seed for both, the k-th
        # batch offset would come from the same random bits as the k-th initial weight.
        self.data_rng = np.random.default_rng([config.seed, 1])
        backend.manual_seed(config.seed)
        self.settings = dataclasses.asdict(config)
        self.start, self.resumed, self.notes = 0, resume, [describe_zero(self.optimizer)]
        self.summary = {"start_step": 0}
        self.stop = StopRequests()       # Ctrl-C: finish the step, save, stop (tinyllm.interrupt)
        self.saved_step = None
        self.bar = self.say = None

    def restore(self) -> None:
        """Continue the run saved in the run directory: weights, AdamW's moments, the generators'
        states, and the log cut back to the checkpoint. Refuses another model shape or other
        training settings."""
        run_dir = self.run_dir
        if run_dir is None:
            raise ValueError("resume needs a run directory")
        check_resumable(run_dir)
        saved_model = load_config(run_dir).get("model", {})
        try:   # fill the keys an older config.json lacks with their defaults (= what that run used)
            saved_model = type(self.model.config).from_dict(saved_model).to_dict()
        except (TypeError, ValueError):
            pass
        differences = config_differences(saved_model, self.model.config.to_dict())
        if differences:
            raise ValueError(f"cannot resume '{run_dir}' with a different model config: "
                             f"{'; '.join(differences)}")
        load_weights(self.model, run_dir)
        state = load_train_state(run_dir, self.optimizer)
        differences = config_differences(_same_run_settings(state["train_config"]),
                                         _same_run_settings(self.settings))
        if differences:
            raise ValueError(f"cannot resume '{run_dir}' with different training settings: "
                             f"{'; '.join(differences)}")
        self.start = self.saved_step = state["step"]
        self.data_rng.bit_generator.state = state["data_rng"]
        if state.get("dropout_rng") is not None:
            backend.seed_stream().bit_generator.state = state["dropout_rng"]
        if self.start >= self.config.steps:
            raise ValueError(f"the run in '{run_dir}' already finished {self.start} steps; ask for "
                             "more with --steps")
        if self.writes:
            first_val = _drop_log_after(run_dir / "log.jsonl", self.start)
            self.summary.update({"first_val": first_val} if first_val else {})
        self.summary["start_step"] = self.start
        self.notes.append(f"resuming from step {self.start} of {self.config.steps} (the checkpoint "
                          f"in {run_dir})")
        note = _split_note(state.get("threads"), state.get("processes", 1))
        if note:
            self.notes.append(note)
            self.summary["note"] = note

    def train(self, progress) -> dict:
        """Train from the start (or the restored step) to ``config.steps``, evaluating and saving on
        the way."""
        config = self.config
        shown = progress and distributed.is_main()
        self.bar = Progress(config.steps, config.log_interval) if shown else None
        self.say = self.bar.message if self.bar else (lambda text: None)
        for note in filter(None, self.notes):
            self.say(note)
        self.model.train()
        with self.stop:
            if not self.resumed:     # a run resumed at step 0 (stopped in this eval) logged it
                self.evaluate(0)
                self.stop_if_requested(0)
            started = time.perf_counter()
            for step in range(self.start, config.steps):
                self.train_step(step)
                if (step + 1) % config.eval_interval == 0 or step + 1 == config.steps:
                    self.evaluate(step + 1)
                    self.save(step + 1)
                self.stop_if_requested(step + 1)
        elapsed = time.perf_counter() - started
        steps_done = config.steps - self.start
        self.summary.update(steps=steps_done, seconds=elapsed,
                            tokens_per_s=steps_done * self.tokens_per_step / max(elapsed, 1e-9))
        if self.run_dir is not None:
            from .plot import plot_run
            self.summary["plot"] = plot_run(self.run_dir) if self.writes else None
        return self.summary

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.context

    def train_step(self, step: int) -> None:
        """One optimizer step over ``grad_accum`` micro-batches, logged."""
        config, t0 = self.config, time.perf_counter()
        lr = warmup_cosine_lr(step, config.lr, config.min_lr, config.warmup, config.steps)
        self.optimizer.lr = lr
        loss_sum = 0.0
        for _ in range(config.grad_accum):
            x, y = (self.batch_sampler(step, self.data_rng) if self.batch_sampler else
                    random_batch(self.train_ids, config.batch_size, self.context, self.data_rng))
            targets = self.objective.targets if self.objective is not None else None
            loss = ((lambda x, y: self.objective.loss(self.model, x, y))
                    if hasattr(self.objective, "loss") else None)            # distillation's loss
            loss_sum += forward_backward(self.model, x, y, 1.0 / config.grad_accum, targets, loss)
        kept = f"; the last good checkpoint in '{self.run_dir}' is kept" if self.run_dir else ""
        loss_sum, grad_norm, _ = update_weights(
            self.optimizer, loss_sum, config.grad_clip, f"step {step + 1}",
            advice=f"{kept}. Try a lower --lr or stronger --grad-clip")
        loss_value = loss_sum / config.grad_accum
        tokens_per_s = self.tokens_per_step / (time.perf_counter() - t0)
        record = {"kind": "train", "step": step + 1, "loss": loss_value, "lr": lr,
                  "grad_norm": grad_norm, "tokens_per_s": tokens_per_s}
        self.log(record)
        if self.bar:
            self.bar.update(step, f"loss {loss_value:.4f} | lr {lr:.2e} | "
                                  f"{tokens_per_s:,.0f} tok/s")

    def evaluate(self, step: int) -> None:
        """Validation and training loss (every process its share), logged; a sample printed by rank
        0."""
        config, objective = self.config, self.objective
        measure = objective.evaluate if objective is not None else \
            (lambda model, ids, limit: evaluate(model, ids, config.batch_size, self.context, limit))
        val = measure(self.model, self.val_ids, config.eval_iters)
        train = measure(self.model, self.train_ids, config.eval_iters)
        record = {"kind": "eval", "step": step, "val_loss": val["loss"], "val_ppl": val["ppl"],
                  "train_loss": train["loss"]}
        load = self._expert_load(step)
        if load is not None:   # mixture of experts: each layer's share of assignments per expert
            record["expert_load"] = [[round(float(f), 4) for f in layer] for layer in load]
        self.log(record)
        self.say(f"step {step}: train loss {train['loss']:.4f}, val loss {val['loss']:.4f}, "
                 f"val perplexity {val['ppl']:.2f}")
        self.summary.setdefault("first_val", val)
        self.summary["last_val"] = val
        if self.tokenizer is not None and config.sample_tokens and objective is None and self.bar:
            sample = _sample(self.model, self.tokenizer, self.val_ids[:8], config.sample_tokens,
                             config.seed + step)
            self.say("  sample: " + repr(sample))

    def _expert_load(self, step: int):
        """(n_layer, n_expert) shares of assignments per expert on one batch of validation windows,
        for a mixture-of-experts model (None otherwise)."""
        if not getattr(self.model, "moe_layers", list)():
            return None
        x, _ = random_batch(self.val_ids, self.config.batch_size, self.context,
                            np.random.default_rng(step))
        return self.model.expert_load(x)

    def log(self, record: dict) -> None:
        if self.writes:
            append_jsonl(self.run_dir / "log.jsonl", record)

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step``: the optimizer state and the weights, replaced together
        (``files.written_together``) and never half-done by Ctrl-C. Every process calls this (ZeRO
        gathers the moments from all of them); rank 0 writes."""
        if self.run_dir is None:
            return
        optimizer_state = self.optimizer.state_dict()
        if self.writes:
            with self.stop.deferred(), written_together():
                save_train_state(self.run_dir, optimizer_state, {
                    "step": step, "train_config": self.settings,
                    "data_rng": self.data_rng.bit_generator.state,
                    "threads": parallel.num_threads,         # the batch split: bit-exact resuming
                    "processes": distributed.world().size,   # needs the same counts
                    "dropout_rng": backend.seed_stream().bit_generator.state,   # on any device
                })
                save_model(self.run_dir, self.model, self.tokenizer, step, self.extra_config)
        self.saved_step = step

    def stop_if_requested(self, step: int) -> None:
        """After Ctrl-C (in any process: they agree, ``distributed.any_rank``): save this step's
        state unless that is done, then stop."""
        if not distributed.any_rank(self.stop.requested) or step == self.config.steps:
            return
        total = self.config.steps
        if self.run_dir is None:
            raise TrainingInterrupted(f"interrupted after step {step} of {total} (no run "
                                      "directory: nothing saved)", step)
        if self.saved_step != step:
            self.save(step)
        if self.writes:
            from .plot import plot_run
            plot_run(self.run_dir)
        raise TrainingInterrupted(f"interrupted after step {step} of {total}: checkpoint saved in "
                                  f"{self.run_dir}/ (continue the run with --resume)", step)


def _split_note(saved_threads, saved_processes) -> str | None:
    """The note for a run resumed with another split of each batch (threads per process,
    processes)."""
    now = (parallel.num_threads, distributed.world().size)
    if saved_threads is None or (saved_threads, saved_processes) == now:
        return None
    counts = lambda threads, processes: (f"{threads} threads" if processes == 1 else   # noqa: E731
                                         f"{processes} processes of {threads} threads")
    return (f"note: this run was saved with {counts(saved_threads, saved_processes)} and resumes "
            f"with {counts(*now)}: each batch is split into one block per thread, so the losses "
            "can differ from an uninterrupted run's in the last digits (set TINYLLM_NUM_THREADS, "
            "and mpiexec -n, to match)")


def _same_run_settings(settings: dict) -> dict:
    """The training settings a resumed run must share with the saved one (not its length, nor
    whether AdamW is sharded, which changes no result)."""
    return {k: v for k, v in settings.items() if k not in ("steps", "zero")}


def _drop_log_after(path: Path, step: int) -> dict | None:
    """Forget what a stopped run logged after its last checkpoint: the resumed run redoes those
    steps. Returns the run's first validation result as ``evaluate`` gives it (for the before →
    after summary)."""
    if not path.exists():
        return None
    kept = [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("step", 0) <= step]
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    first = next((r for r in kept if r.get("kind") == "eval" and "val_loss" in r), None)
    return {"loss": first["val_loss"], "ppl": math.exp(min(first["val_loss"],
                                                           700.0))} if first else None


def _sample(model, tokenizer, prompt_ids, max_new_tokens, seed) -> str:
    from .generate import generate
    prompt = [int(i) for i in prompt_ids]
    new = generate(model, prompt, max_new_tokens, temperature=0.8, top_k=40, seed=seed)
    return tokenizer.decode(prompt + list(new))
