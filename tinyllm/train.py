"""Pretraining: next-token prediction on unlabeled text, with evaluation, logging and resumable checkpoints.

One step:   x, y = random windows of the training ids      (B, T) each, y = x shifted by one
            loss = cross_entropy(model(x), y)                mean over B·T positions
            loss.backward()                                   (× grad_accum micro-batches, each scaled 1/grad_accum;
                                                              each split over the CPU cores: forward_backward)
            global gradient norm, scheduled learning rate, AdamW step on the gradients clipped to grad_clip
            (the clip factor is folded into the update: optim.clip_factor)

Every ``eval_interval`` steps the mean loss on a fixed set of validation windows (and perplexity = e^loss)
is logged, a short sample is printed and the run is saved; so is the current step when Ctrl-C stops the
run. ``resume=True`` restores weights, AdamW moments and the random generators' states, so a resumed run
reproduces the uninterrupted one exactly on the CPU (with the same number of threads: ``forward_backward``
splits each batch into one block per thread).
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
from . import parallel
from .autograd import no_grad
from .checkpoint import (check_resumable, config_differences, load_config, load_train_state, load_weights, save_model,
                         save_train_state)
from .data.tokens import TokenWindows, check_length, random_batch
from .files import append_jsonl, atomic_write, read_jsonl
from .interrupt import StopRequests, TrainingInterrupted
from .optim import AdamW, clip_factor, grad_norm as global_grad_norm, warmup_cosine_lr


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 12
    grad_accum: int = 1            # micro-batches per optimizer step
    lr: float = 1e-3               # peak learning rate, reached after warmup
    min_lr: float = 1e-4           # floor of the cosine decay, reached at the last step
    warmup: int = 100
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1      # on matrices only; biases and norm weights are not decayed
    grad_clip: float = 1.0         # max global gradient norm (0 = no clipping)
    eval_interval: int = 250
    eval_iters: int = 20           # validation batches per evaluation
    log_interval: int = 10
    sample_tokens: int = 40        # length of the sample printed at each evaluation (0 = none)
    seed: int = 1337


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/Inf; the run directory keeps the last good checkpoint."""


def param_groups(model, weight_decay):
    """Decay matrices (weights of linear layers and embeddings); leave vectors (biases, norm gains) alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def forward_backward(model, x, y, scale: float = 1.0, weight=None, loss=None) -> float:
    """The model's mean loss on inputs x and targets y (B, T); adds scale × its gradient to the parameters'
    ``.grad``. Every position has a target in next-token pretraining, so a block of rows weighs rows / B
    (``data_parallel_backward``); ``weight(x, y)`` counts a block's targets otherwise (masked LM).
    ``loss(x, y)``: a scalar Tensor to use instead of the model's own loss (distillation)."""
    loss = loss or (lambda x, y: model(x, y)[1])
    return data_parallel_backward(model, loss, x, y, weight=weight, scale=scale)


def data_parallel_backward(model, block_loss, *arrays, weight=None, scale: float = 1.0) -> float:
    """Forward and backward of a batch's mean loss, split over the CPU cores; returns the loss's value.

    ``block_loss(*blocks)`` is the mean loss (a scalar Tensor) over the items of some rows of ``arrays``
    (the items: the rows themselves, or their unmasked targets); ``weight(*blocks)`` counts those items (by
    default the rows). The rows are split into one block per core, and threads run a whole forward and
    backward pass on each block side by side (``parallel.data_parallel``). Block k's mean enters with weight
    w_k / Σ w, so the sum is the whole batch's mean and its gradient, scaled by ``scale``, is added to the
    parameters' ``.grad``. Each thread collects its own parameter gradients and they are added here in block
    order: the result equals the whole batch's up to float rounding, and is the same on every run. Each block
    draws dropout masks from its own generator, seeded from the global one. Mixture-of-experts models run the
    batch whole (``_split_over_cores``).
    """
    weight = weight or (lambda *rows: len(rows[0]))
    total = weight(*arrays)
    seeds = backend.seed_stream().integers(2**31, size=len(arrays[0]))  # a block seeds its dropout with its
                                                                        # first row's: the same for any split
    def run_block(seeds_block, *block):
        share = weight(*block) / total if total else 0.0
        grads = {}                                    # this block's parameter gradients, added below in order
        with backend.thread_rng(backend.rng(int(seeds_block[0]))):
            loss = block_loss(*block)
            loss.backward(backend.xp.asarray(scale * share, dtype=loss.dtype), leaf_grads=grads)
        return loss.item() * share, grads

    blocks = _split_over_cores(model, run_block, seeds, *arrays)
    parallel.add_leaf_grads(*(grads for _, grads in blocks))
    return sum(loss for loss, _ in blocks)


def _split_over_cores(model, fn, *arrays) -> list:
    """``parallel.data_parallel(fn, *arrays)``, or ``[fn(*arrays)]`` for a mixture-of-experts model (its
    layers keep per-batch state on the module, which threads would overwrite for each other)."""
    if getattr(model.config, "mlp", None) == "moe":
        return [fn(*arrays)]
    return parallel.data_parallel(fn, *arrays)


def evaluate(model, ids, batch_size: int, context: int, max_batches: int | None = None) -> dict:
    """Mean next-token loss over non-overlapping windows of ``ids`` (the first ``max_batches`` batches of
    windows spread evenly across the data), and its perplexity e^loss."""
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
            for block_total, block_count in _split_over_cores(model, summed_loss, x, y):
                total += block_total
                count += block_count
    model.train(was_training)
    mean = total / count
    return {"loss": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": count}


class Progress:
    """One live status line on a terminal (rewritten in place); plain lines every ``every`` steps otherwise."""

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
             resume: bool = False, progress=True, extra_config=None, batch_sampler=None, objective=None) -> dict:
    """Train ``model`` on ``train_ids`` and return a summary (first/last validation loss, time, tokens/s).

    With ``run_dir``, writes ``log.jsonl``, checkpoints at every evaluation and at the end, and ``loss.svg``;
    ``resume=True`` continues the run saved there. Ctrl-C finishes the current step, saves it and raises
    ``TrainingInterrupted`` (a KeyboardInterrupt naming the checkpoint; ``tinyllm.interrupt``).
    ``batch_sampler(step, generator) -> (x, y)`` replaces the random windows (e.g. a curriculum:
    ``tinyllm.data.curriculum``); it must draw only from ``generator``. ``objective`` replaces next-token
    prediction altogether (``tinyllm.mlm.MaskedLM``): it is the batch sampler, ``objective.evaluate(model,
    ids, max_batches)`` the evaluation, ``objective.targets(x, y)`` a block's weight; no samples are printed.
    An objective with a ``loss(model, x, y)`` method also replaces the loss (``tinyllm.distill.Distillation``).
    """
    if objective is not None:
        batch_sampler = objective
    context = model.config.block_size
    check_length(train_ids, context, "the training split")
    check_length(val_ids, context, "the validation split")
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)   # the log is written (step 0's eval) before the first save
        if not resume:                                # a new run starts a new log (not one after a crashed run's)
            (run_dir / "log.jsonl").unlink(missing_ok=True)
    optimizer = AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                      betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)
    # The batches' generator is seeded with (seed, 1): a stream independent of the weights' (GPT(config, seed)
    # draws them from default_rng(seed)). With one seed for both, the k-th batch offset would come from the same
    # random bits as the k-th initial weight.
    data_rng = np.random.default_rng([config.seed, 1])
    backend.manual_seed(config.seed)
    start, thread_note, first_val = 0, None, None
    train_settings = dataclasses.asdict(config)
    if resume:
        if run_dir is None:
            raise ValueError("resume needs a run directory")
        check_resumable(run_dir)
        saved = load_config(run_dir)
        saved_model = saved.get("model", {})
        try:   # fill the keys an older config.json lacks with their defaults (= what that run used)
            saved_model = type(model.config).from_dict(saved_model).to_dict()
        except (TypeError, ValueError):
            pass
        differences = config_differences(saved_model, model.config.to_dict())
        if differences:
            raise ValueError(f"cannot resume '{run_dir}' with a different model config: {'; '.join(differences)}")
        load_weights(model, run_dir)
        state = load_train_state(run_dir, optimizer)
        differences = config_differences({k: v for k, v in state["train_config"].items() if k != "steps"},
                                         {k: v for k, v in train_settings.items() if k != "steps"})
        if differences:
            raise ValueError(f"cannot resume '{run_dir}' with different training settings: {'; '.join(differences)}")
        start = state["step"]
        data_rng.bit_generator.state = state["data_rng"]
        if state.get("dropout_rng") is not None:
            backend.seed_stream().bit_generator.state = state["dropout_rng"]
        if start >= config.steps:
            raise ValueError(f"the run in '{run_dir}' already finished {start} steps; ask for more with --steps")
        first_val = _drop_log_after(run_dir / "log.jsonl", start)
        saved_threads = state.get("threads")
        if saved_threads is not None and saved_threads != parallel.num_threads:
            thread_note = (f"note: this run was saved with {saved_threads} threads and resumes with "
                           f"{parallel.num_threads}: forward_backward splits each batch into one block per thread, so "
                           "the losses can differ from an uninterrupted run's in the last digits "
                           "(set TINYLLM_NUM_THREADS to match)")

    stop = StopRequests()                  # Ctrl-C: finish the step, save, stop (tinyllm.interrupt)
    saved_step = start if resume else None

    def save(step):
        nonlocal saved_step
        if run_dir is None:
            return
        with stop.deferred():              # the weights and the optimizer state of one step, or neither
            _save_checkpoint(step)
        saved_step = step

    def _save_checkpoint(step):
        save_train_state(run_dir, optimizer, {
            "step": step, "train_config": train_settings, "data_rng": data_rng.bit_generator.state,
            "threads": parallel.num_threads,          # the batch split: bit-exact resuming needs the same count
            "dropout_rng": backend.seed_stream().bit_generator.state,   # dropout's seeds, on any device
        })
        save_model(run_dir, model, tokenizer, step, extra_config)

    def log(record):
        if run_dir is not None:
            append_jsonl(run_dir / "log.jsonl", record)

    bar = Progress(config.steps, config.log_interval) if progress else None
    say = bar.message if bar else (lambda text: None)
    tokens_per_step = config.batch_size * config.grad_accum * context
    model.train()
    summary = {"start_step": start, **({"first_val": first_val} if first_val else {})}
    if resume:
        say(f"resuming from step {start} of {config.steps} (the checkpoint in {run_dir})")
    if thread_note:
        say(thread_note)
        summary["note"] = thread_note

    def run_eval(step):
        measure = objective.evaluate if objective is not None else \
            (lambda model, ids, limit: evaluate(model, ids, config.batch_size, context, limit))
        val, train = measure(model, val_ids, config.eval_iters), measure(model, train_ids, config.eval_iters)
        log({"kind": "eval", "step": step, "val_loss": val["loss"], "val_ppl": val["ppl"], "train_loss": train["loss"]})
        say(f"step {step}: train loss {train['loss']:.4f}, val loss {val['loss']:.4f}, val perplexity {val['ppl']:.2f}")
        summary.setdefault("first_val", val)
        summary["last_val"] = val
        if tokenizer is not None and config.sample_tokens and objective is None:
            say("  sample: " + repr(_sample(model, tokenizer, val_ids[:8], config.sample_tokens, config.seed + step)))

    def objective_loss(x, y):
        return objective.loss(model, x, y)

    def train_step(step):
        t0 = time.perf_counter()
        lr = warmup_cosine_lr(step, config.lr, config.min_lr, config.warmup, config.steps)
        optimizer.lr = lr
        loss_sum = 0.0
        for _ in range(config.grad_accum):
            x, y = (batch_sampler(step, data_rng) if batch_sampler else
                    random_batch(train_ids, config.batch_size, context, data_rng))
            loss_sum += forward_backward(model, x, y, 1.0 / config.grad_accum,
                                         objective.targets if objective is not None else None,
                                         objective_loss if hasattr(objective, "loss") else None)
        loss_value = loss_sum / config.grad_accum
        grad_norm = global_grad_norm(optimizer.parameters())
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            model.zero_grad()
            kept = f"; the last good checkpoint in '{run_dir}' is kept" if run_dir is not None else ""
            raise TrainingDiverged(f"training diverged at step {step + 1}: loss {loss_value}, gradient norm {grad_norm}{kept}. "
                                   "Try a lower --lr or stronger --grad-clip")
        optimizer.step(grad_scale=clip_factor(grad_norm, config.grad_clip or None))   # clipping folded in
        model.zero_grad()
        step_time = time.perf_counter() - t0
        tokens_per_s = tokens_per_step / step_time
        record = {"kind": "train", "step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": tokens_per_s}
        load = model.expert_load() if hasattr(model, "expert_load") else None
        if load is not None:   # mixture of experts: each layer's share of assignments per expert (last micro-batch)
            record["expert_load"] = [[round(float(f), 4) for f in layer] for layer in load]
        log(record)
        if bar:
            bar.update(step, f"loss {loss_value:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s")

    def stop_if_requested(step):
        """After Ctrl-C (``stop``): save this step's state unless that is done, then stop."""
        if not stop.requested or step == config.steps:
            return
        if run_dir is None:
            raise TrainingInterrupted(f"interrupted after step {step} of {config.steps} (no run directory: "
                                      "nothing saved)", step)
        if saved_step != step:
            save(step)
        from .plot import plot_run
        plot_run(run_dir)
        raise TrainingInterrupted(f"interrupted after step {step} of {config.steps}: checkpoint saved in "
                                  f"{run_dir}/ (continue the run with --resume)", step)

    with stop:
        if start == 0 and not resume:      # a run resumed at step 0 (stopped during this eval) logged it already
            run_eval(0)
            stop_if_requested(0)
        started = time.perf_counter()
        for step in range(start, config.steps):
            train_step(step)
            if (step + 1) % config.eval_interval == 0 or step + 1 == config.steps:
                run_eval(step + 1)
                save(step + 1)
            stop_if_requested(step + 1)
    elapsed = time.perf_counter() - started
    steps_done = config.steps - start
    summary.update(steps=steps_done, seconds=elapsed, tokens_per_s=steps_done * tokens_per_step / max(elapsed, 1e-9))
    if run_dir is not None:
        from .plot import plot_run
        summary["plot"] = plot_run(run_dir)
    return summary


def _drop_log_after(path: Path, step: int) -> dict | None:
    """Forget what a stopped run logged after its last checkpoint: the resumed run redoes those steps.
    Returns the run's first validation result as ``evaluate`` gives it (for the before → after summary)."""
    if not path.exists():
        return None
    kept = [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("step", 0) <= step]
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    first = next((r for r in kept if r.get("kind") == "eval" and "val_loss" in r), None)
    return {"loss": first["val_loss"], "ppl": math.exp(min(first["val_loss"], 700.0))} if first else None


def _sample(model, tokenizer, prompt_ids, max_new_tokens, seed) -> str:
    from .generate import generate
    prompt = [int(i) for i in prompt_ids]
    new = generate(model, prompt, max_new_tokens, temperature=0.8, top_k=40, seed=seed)
    return tokenizer.decode(prompt + list(new))
