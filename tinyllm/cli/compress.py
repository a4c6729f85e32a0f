"""``tinyllm compress``: a smaller copy of a run, made in the ways that pay at run time, each one
measured.

    --prune-heads K, --prune-mlp F   structured pruning: whole heads / MLP channels go (tinyllm.pruning)
    --low-rank E                     each Linear of the blocks as two thinner ones, by SVD (tinyllm.low_rank)
    --finetune-steps N               after those two: N steps of pretraining on the training text
    --prune F                        unstructured magnitude pruning: zeros, stored dense (saves nothing)
    --int8 | --fp16                  int8 weights computed with as int8 / float16 storage (tinyllm.quantize)

The methods given are chained in that order into one run (``--out``); with ``--each`` every method
is applied to the original on its own, into ``--out/<method>``. Every run written is loaded back as
a user would load it and measured: file size, bytes in memory, validation perplexity, generation and
forward speed.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from .common import (energy_share, fraction, non_negative_int, positive_float, positive_int,
                     probability)


def add_commands(sub) -> None:
    p = sub.add_parser("compress",
                       help="pruned / factored / int8 / float16 copies of a run, with size, "
                            "perplexity and speed side by side",
                       description="Write a smaller copy of RUN into --out and print a table of "
                                   "file size, memory, validation perplexity and speed (greedy "
                                   "generation and a batched forward), measured on each run as "
                                   "loaded back from disk. Methods are chained (structured pruning "
                                   "→ low rank → finetune → --prune → int8/fp16) unless --each "
                                   "applies every one separately to RUN, into --out/<method>.")
    p.add_argument("run", help="run directory to compress (float weights)")
    p.add_argument("--out", required=True,
                   help="run directory to write (with --each: a folder of runs)")
    g = p.add_argument_group("methods")
    g.add_argument("--int8", action="store_true",
                   help="int8 weights with one float32 scale per output row, used as int8 by the "
                        "matmuls")
    g.add_argument("--fp16", action="store_true",
                   help="every tensor stored as float16 (float32 once loaded; "
                         "not with --int8 unless --each)")
    g.add_argument("--prune-heads", type=non_negative_int, default=0, metavar="K",
                   help="remove the K least important attention heads of every layer (key/value "
                        "groups with grouped-query attention)")
    g.add_argument("--prune-mlp", type=probability, default=0.0, metavar="FRACTION",
                   help="remove this fraction of every layer's MLP channels, the least important "
                        "first")
    g.add_argument("--low-rank", type=energy_share, default=None, metavar="ENERGY",
                   help="factor each Linear of the blocks by SVD, keeping the smallest rank that "
                        "holds this share of Σσ² (only where two factors are smaller than the "
                        "matrix)")
    g.add_argument("--prune", type=fraction, default=None, metavar="FRACTION",
                   help="zero this fraction of the smallest-magnitude Linear weights, ranked "
                        "globally (the file and the memory stay as large: a zero is stored like "
                        "any number)")
    g.add_argument("--each", action="store_true",
                   help="apply each method on its own to RUN, into --out/<method>")
    g = p.add_argument_group("after pruning or factoring")
    g.add_argument("--finetune-steps", type=non_negative_int, default=50,
                   help="pretraining steps on the training text after structured pruning or low "
                        "rank (0 = none)")
    g.add_argument("--finetune-lr", type=positive_float, default=3e-4,
                   help="their peak learning rate")
    g.add_argument("--calibration", type=positive_int, default=16, metavar="WINDOWS",
                   help="context windows of training text on which heads and channels are scored")
    g.add_argument("--seed", type=non_negative_int, default=1337,
                   help="seed of the finetuning batches")
    g = p.add_argument_group("measuring")
    g.add_argument("--data", default=None,
                   help="text whose tail is evaluated and whose rest is finetuned on and "
                        "scores heads (default: the built-in corpus, the demo's data)")
    g.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="the share of the text, at its end, evaluated")
    g.add_argument("--batch-size", type=positive_int, default=8,
                   help="windows per evaluation and finetuning batch")
    g.add_argument("--max-batches", type=positive_int, default=None,
                   help="evaluate on at most this many batches")
    g.add_argument("--gen-tokens", type=positive_int, default=64,
                   help="greedy tokens generated to time the speed")
    g.add_argument("--rounds", type=positive_int, default=3,
                   help="speed is the best of this many rounds, each timing every model in turn")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.set_defaults(func=run_compress)


def _methods(args) -> list[str]:
    """The methods asked for, in the order they are chained."""
    asked = {"heads": args.prune_heads > 0, "mlp": args.prune_mlp > 0,
             "low_rank": args.low_rank is not None,
             "prune": args.prune is not None, "int8": args.int8, "fp16": args.fp16}
    return [method for method, wanted in asked.items() if wanted]


def _describe(method: str, args) -> tuple[str, str]:
    """(its label in the table, its folder under --out with --each) of a method."""
    if method == "heads":
        return f"{args.prune_heads} heads/layer pruned", f"heads-{args.prune_heads}"
    if method == "mlp":
        return f"{args.prune_mlp:.0%} MLP pruned", f"mlp-{args.prune_mlp:g}"
    if method == "low_rank":
        return f"low rank {args.low_rank:g}", f"low-rank-{args.low_rank:g}"
    if method == "prune":
        return f"prune {args.prune:g}", f"prune-{args.prune:g}"
    return method, method                                              # int8, fp16


def _apply(model, methods: list[str], args, train_ids, val_ids):
    """``model`` compressed by ``methods`` in pipeline order: (the compressed model, details for
    config.json)."""
    from ..low_rank import factorize_model
    from ..pruning import prune_structured
    from ..quantize import prune_global, quantize_model
    details = {}
    heads = args.prune_heads if "heads" in methods else 0
    mlp = args.prune_mlp if "mlp" in methods else 0.0
    if heads or mlp:
        calibration = _calibration(train_ids, model.config.block_size, args.calibration)
        model, report = prune_structured(model, calibration, heads, mlp, args.batch_size)
        details["structured"] = {k: v for k, v in report.items() if k != "heads_kept"}
    if "low_rank" in methods:
        details["low_rank"] = {"energy": args.low_rank,
                               "layers": factorize_model(model, args.low_rank)}
    if (heads or mlp or "low_rank" in methods) and args.finetune_steps:
        details["finetune"] = _finetune(model, train_ids, val_ids, args)
    if "prune" in methods:
        details["unstructured"] = prune_global(model, args.prune)
    if "int8" in methods:
        quantize_model(model)
    return model, details


def _calibration(ids, context: int, windows: int):
    """``windows`` context windows spread evenly over ``ids``: (windows, context) token ids."""
    starts = np.linspace(0, max(len(ids) - context, 0), windows).astype(int)
    return np.stack([np.asarray(ids[s:s + context]) for s in starts])


def _finetune(model, train_ids, val_ids, args) -> dict:
    """A few steps of ordinary pretraining on the training text, to recover some of what pruning
    cost."""
    from ..train import TrainConfig, pretrain
    steps = args.finetune_steps
    print(f"finetuning the pruned/factored model for {steps} steps ...", flush=True)
    config = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.finetune_lr,
                         min_lr=args.finetune_lr / 10, warmup=min(10, steps // 5),
                         eval_interval=steps, eval_iters=4,
                         log_interval=max(steps // 5, 1), sample_tokens=0, seed=args.seed)
    summary = pretrain(model, train_ids, val_ids, config)
    model.eval()
    return {"steps": steps, "lr": args.finetune_lr, "seconds": round(summary["seconds"], 1),
            "val_loss_before": summary["first_val"]["loss"],
            "val_loss_after": summary["last_val"]["loss"]}


def _quality(model, val_ids, args) -> dict:
    """Validation loss and perplexity, and what the model occupies."""
    from ..quantize import model_bytes
    from ..train import evaluate
    result = evaluate(model, val_ids, args.batch_size, model.config.block_size, args.max_batches)
    return {**result, "memory": model_bytes(model), "parameters": model.num_parameters()}


def _speeds(models, val_ids, args, prompt) -> list[dict]:
    """Greedy generation and batched forward tokens/s of each model: the best of ``--rounds`` rounds
    that take the models in turn, each round starting one model later, so that other work on the
    machine slows them all alike rather than one of them."""
    from ..autograd import no_grad
    from ..generate import generate
    context = models[0].config.block_size
    # (B, T) windows of the validation text
    batch = _calibration(val_ids, context, args.batch_size)
    speeds = [{"tokens_per_s": 0.0, "forward_tokens_per_s": 0.0} for _ in models]
    for round_ in range(args.rounds):
        start = round_ % len(models)
        for model, speed in list(zip(models, speeds))[start:] + list(zip(models, speeds))[:start]:
            t0 = time.perf_counter()
            speed["generated"] = generate(model, prompt, args.gen_tokens, temperature=0)
            speed["tokens_per_s"] = max(speed["tokens_per_s"],
                                        args.gen_tokens / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            with no_grad():
                model(batch)
            forward_speed = batch.size / (time.perf_counter() - t0)
            speed["forward_tokens_per_s"] = max(speed["forward_tokens_per_s"], forward_speed)
    return speeds


def run_compress(args) -> int:
    from ..checkpoint import load_metadata, load_pretrained
    from ..data.tokens import split_train_val, tokenize
    from ..quantize import file_size, int8_layers, save_compressed
    from .interop import _check_out
    from .train import _load_text

    methods = _methods(args)
    if not methods:
        raise ValueError("say how to compress: --prune-heads, --prune-mlp, --low-rank, --prune "
                         "and/or --int8 or --fp16")
    if args.int8 and args.fp16 and not args.each:
        raise ValueError("--int8 and --fp16 are two ways to store the same weights: choose one (or "
                         "compare them with --each)")
    source, out = Path(args.run), Path(args.out)
    variants = [[m] for m in methods] if args.each else [methods]
    targets = [out / _describe(v[0], args)[1] for v in variants] if args.each else [out]
    for target in targets:
        _check_out(target, args.overwrite, source)
    model, tokenizer = load_pretrained(source)
    if tokenizer is None:
        raise ValueError(f"'{source}' has no tokenizer.json, so there is no text to measure "
                         "perplexity on")
    if int8_layers(model):
        raise ValueError(f"'{source}' is int8 already; compress the float run it was made from")
    ids = tokenize(_load_text(args.data), tokenizer)
    train_ids, val_ids = split_train_val(ids, args.val_fraction)
    step = int(load_metadata(source / "model.safetensors" if source.is_dir()
                             else source).get("step", 0))
    rows, notes = [("original", source, model.eval())], []
    for variant, target in zip(variants, targets):
        label = " + ".join(_describe(m, args)[0] for m in variant)
        print(f"{label} ...", flush=True)
        compressed, details = _apply(copy.deepcopy(model), variant, args, train_ids, val_ids)
        save_compressed(source, target, compressed, "fp16" if "fp16" in variant else "float32",
                        tokenizer, step, {"methods": variant, **details})
        # measure what a user will load
        rows.append((label, target, load_pretrained(target)[0].eval()))
        notes += _notes(label, details)
    print(f"measuring on {len(val_ids):,} validation tokens, speed as the best of {args.rounds} "
          "rounds ...",
          flush=True)
    measured = [{**_quality(m, val_ids, args), "file": file_size(path)} for _, path, m in rows]
    prompt = [int(i) for i in val_ids[:16]]
    for result, speed in zip(measured, _speeds([m for _, _, m in rows], val_ids, args, prompt)):
        result.update(speed)
    _print_table([label for label, _, _ in rows], measured)
    for note in notes:
        print(note)
    print(f"run{'s' if len(targets) > 1 else ''} saved in {', '.join(f'{t}/' for t in targets)}")
    return 0


def _notes(label: str, details: dict) -> list[str]:
    notes = []
    if "structured" in details:
        s = details["structured"]
        notes.append(f"{label}: {s['heads_removed_per_layer']} heads and "
                     f"{s['mlp_removed_per_layer']} MLP channels removed per layer: "
                     f"{s['parameters_before']:,} → {s['parameters_after']:,} parameters")
    if "low_rank" in details:
        layers = details["low_rank"]["layers"]
        ranks = [f"{name.removeprefix('blocks.')} {v['rank']}/{v['full_rank']}"
                 for name, v in layers.items()]
        shown = ", ".join(ranks[:4]) + (", …" if len(ranks) > 4 else "")
        notes.append(f"{label}: {len(layers)} layers factored ({shown})"
                     if layers else f"{label}: no layer factored (no rank holding that energy "
                                    "saves weights)")
    if "finetune" in details:
        f = details["finetune"]
        notes.append(f"{label}: finetuned {f['steps']} steps in {f['seconds']:.0f}s, val loss "
                     f"{f['val_loss_before']:.4f} → {f['val_loss_after']:.4f} (4 validation "
                     "batches)")
    if "unstructured" in details:
        u = details["unstructured"]
        notes.append(f"{label}: {u['pruned']:,} of {u['linear_weights']:,} Linear weights zeroed "
                     f"({u['sparsity']:.1%}); stored dense, so the file and the memory are as "
                     "large as before and nothing runs faster (that would take a sparse format and "
                     "sparse kernels)")
    return notes


HEADER = ("model", "file", "in memory", "parameters", "val loss", "val ppl", "generate tok/s",
          "forward tok/s", "same greedy")


def _row(label: str, m: dict, base: dict) -> tuple:
    """One line of the table; after the original's (``base``), sizes and speeds carry their ratio to
    it."""
    from ..quantize import human_bytes

    def versus(key, text):
        return text if m is base else f"{text} ({m[key] / base[key]:.2f}×)"

    same = _same_prefix(base["generated"], m["generated"])
    return (label, versus("file", human_bytes(m["file"])),
            versus("memory", human_bytes(m["memory"])),
            f"{m['parameters']:,}", f"{m['loss']:.4f}", f"{m['ppl']:.2f}",
            versus("tokens_per_s", f"{m['tokens_per_s']:.0f}"),
            versus("forward_tokens_per_s", f"{m['forward_tokens_per_s']:,.0f}"),
            f"{same}/{len(base['generated'])}")


def _print_table(labels, measured) -> None:
    """Sizes, scores and speeds, one line per model, the original first; "same greedy": how many of
    the original's greedy tokens the model reproduces."""
    table = [HEADER] + [_row(label, m, measured[0]) for label, m in zip(labels, measured)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    print()
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))


def _same_prefix(a, b) -> int:
    """How many first tokens two generations share."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
