"""``tinyllm finetune classify``, ``tinyllm finetune instruct`` and ``tinyllm evaluate``.

A finetune run directory holds what a pretraining run does (config.json, model.safetensors,
tokenizer.json, log.jsonl) with the task in config.json; a LoRA run also keeps the adapter alone
(adapter.safetensors, adapter_config.json, a few hundred KB) next to the merged weights, so both
``evaluate`` and later stages can load it without knowing it was LoRA.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import distributed
from .common import (add_config_flags, config_from_args, non_negative_float, non_negative_int,
                     positive_float, positive_int, probability, split_fractions,
                     stop_if_interrupted)
from .train import add_zero_flag



def add_commands(sub) -> None:
    p = sub.add_parser("finetune", help="finetune a pretrained GPT: text classification or "
                                        "instruction following",
                       description="Finetune a pretrained run. `tinyllm finetune classify --help` "
                                   "and `tinyllm finetune instruct --help` list the flags.")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    c = tasks.add_parser("classify", help="a classification head on the last token's hidden state "
                                          "([CLS] for an encoder)",
                         description="Train a classifier from a pretrained run on labelled texts "
                                     "(label<TAB>text, CSV or JSONL). Writes a run directory whose "
                                     'config.json has "task": "classify" and the label names.')
    _base_flags(c, out="runs/classify", epochs=5, batch_size=8, lr=5e-4, lora_lr=2e-3,
                prompt_lr=3e-2)
    g = c.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="labelled file: .tsv/.txt (label<TAB>text), .csv or .jsonl (default: the "
                        "built-in task, Python help-topic prose vs standard-library code lines)")
    g.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="downsample every class to the size of the smallest")
    g.add_argument("--split", default="0.7,0.1,0.2", type=split_fractions,
                   help="train,val,test fractions (shuffled with --seed)")
    g.add_argument("--per-class", type=positive_int, default=600,
                   help="examples per class of the built-in task")
    c.add_argument("--freeze-except", type=int, default=-1,
                   help="train only the last N blocks + final norm + head (-1 = train everything; "
                        "ignored with LoRA and prompt/prefix tuning)")
    c.set_defaults(func=run_classify)

    i = tasks.add_parser("instruct", help="instruction following in the Alpaca prompt template",
                         description="Instruction-tune a pretrained run on Alpaca records "
                                     '{"instruction", "input", "output"} (JSON list or JSONL); the '
                                     'loss covers only the responses. Writes a run directory whose '
                                     'config.json has "task": "instruct" and the Alpaca "template" '
                                     "that `tinyllm chat` uses; with --template chat, the base "
                                     "model's own chat template instead (an imported model's).")
    _base_flags(i, out="runs/instruct", epochs=3, batch_size=8, lr=1e-3, lora_lr=2e-3,
                prompt_lr=3e-2)
    g = i.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="Alpaca JSON/JSONL file (default: built-in generated tasks — arithmetic, "
                        "reversing/sorting/counting words, reading a field — with checkable "
                        "answers)")
    g.add_argument("--split", default="0.85,0.05,0.1", type=split_fractions,
                   help="train,val,test fractions of --data, in file order")
    g.add_argument("--train-size", type=positive_int, default=1500,
                   help="built-in tasks: training records")
    g.add_argument("--test-size", type=non_negative_int, default=120,
                   help="built-in tasks: held-out test records (60 more for validation)")
    g.add_argument("--refusals", action=argparse.BooleanOptionalAction, default=True,
                   help="built-in tasks: include requests to decline, answered \"I can't help with "
                        "that.\" (a seventh task, tinyllm.data.refusals), so the model learns to "
                        "refuse")
    g.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="longest generated response when scoring")
    g.add_argument("--template", choices=["alpaca", "chat"], default="alpaca",
                   help="prompt format: the Alpaca template, or the base run's own chat template "
                        "(an imported model's tokenizer_config.json, or built-in ChatML / Llama 3 "
                        "by its special tokens)")
    g.add_argument("--eval-limit", type=positive_int, default=None,
                   help="score generations on at most this many test records")
    g.add_argument("--compare-base", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the model before finetuning")
    i.set_defaults(func=run_instruct)

    e = sub.add_parser("evaluate",
                       help="task metrics of a finetuned run; red-teaming; a long-dialogue check",
                       description="classify: accuracy, precision, recall, F1 and the confusion "
                                   "matrix. instruct: response perplexity, and exact match, "
                                   "ROUGE-L and BLEU of greedy responses stopped at the end token. "
                                   "Without --data, the data the run was trained on (its test "
                                   "split). safety (any run that writes text): the red-team prompt "
                                   "set shipped with tinyllm — refusal rate, over-refusal, prompt "
                                   "injections followed, toxic-word hits, the bias probe's score "
                                   "gap (tinyllm.safety.redteam). dialogue: a scripted "
                                   "conversation through chat's history, checking what is kept and "
                                   "whether early facts survive (tinyllm.safety.dialogue).")
    e.add_argument("--ckpt", required=True, help="run directory")
    e.add_argument("--task", choices=["classify", "instruct", "safety", "dialogue"], default=None,
                   help="default: the run's own task")
    e.add_argument("--data", default=None,
                   help="data file (default: the run's training data; safety: a red-team "
                         "set shaped like tinyllm/safety/redteam.json)")
    e.add_argument("--split", choices=["test", "val", "train", "all"], default="test",
                   help="which part of the data to score (the run's split settings)")
    e.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="longest generated response")
    e.add_argument("--limit", type=positive_int, default=None,
                   help="score at most this many examples (safety: prompts)")
    e.add_argument("--show", type=non_negative_int, default=3,
                   help="instruct: print this many responses next to their references; safety: "
                        "this many per category")
    e.add_argument("--toxicity-words", default=None, metavar="FILE",
                   help="safety: the word list toxic words are counted with (default: a small "
                        "built-in one)")
    e.add_argument("--turns", type=positive_int, default=24,
                   help="dialogue: turns in the scripted conversation")
    e.add_argument("--adapter", action="store_true",
                   help="load the base run + adapter.safetensors instead of merged weights")
    e.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    e.set_defaults(func=run_evaluate)


def _base_flags(p, out, epochs, batch_size, lr, lora_lr, prompt_lr) -> None:
    from ..finetune.loop import FinetuneConfig
    d = FinetuneConfig()
    p.add_argument("--ckpt", default="runs/demo", help="pretrained run directory to start from")
    p.add_argument("--out", default=out, help="run directory to write")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-rank", type=non_negative_int, default=0,
                   help="LoRA rank (0 = no LoRA: finetune the weights themselves)")
    g.add_argument("--lora-alpha", type=positive_float, default=16.0,
                   help="LoRA scale numerator: updates are scaled by alpha/rank")
    g.add_argument("--lora-dropout", type=probability, default=0.0,
                   help="dropout on the adapters' input")
    g.add_argument("--lora-targets", default=None,
                   help="comma-separated suffixes of the Linear layers to adapt (default: every "
                        "attention and MLP Linear the model has, e.g. "
                        "attn.qkv,attn.proj,mlp.fc,mlp.proj for GPT-2)")
    g.add_argument("--save-merged", action=argparse.BooleanOptionalAction, default=True,
                   help="with LoRA: also write the merged full weights (model.safetensors)")
    g = p.add_argument_group("prompt and prefix tuning (the model frozen; learned vectors in front "
                             "of the text)")
    g.add_argument("--prompt-tuning", type=non_negative_int, default=0, metavar="N",
                   help="train only a soft prompt of N virtual tokens in front of every text (0 = "
                        "off); the run keeps the adapter alone, loaded on top of --ckpt")
    g.add_argument("--prefix-tuning", type=non_negative_int, default=0, metavar="N",
                   help="train only N learned keys and values in front of every attention layer's "
                        "(0 = off)")
    g = p.add_argument_group("training")
    add_config_flags(g, FinetuneConfig, defaults=dict(epochs=epochs, batch_size=batch_size))
    g.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak learning rate; None means {lr:g}, {lora_lr:g} with LoRA (adapters "
                        f"learn from zero) or {prompt_lr:g} with prompt/prefix tuning (a few "
                        "vectors carry the whole change)")
    g.add_argument("--min-lr", type=non_negative_float, default=None,
                   help="learning rate at the end of the cosine decay; None means lr/10")
    g.add_argument("--weight-decay", type=non_negative_float, default=None,
                   help="AdamW decay of matrices, not biases or norms (None means "
                        f"{d.weight_decay:g}, or 0 with prompt/prefix tuning: decay would pull the "
                        "virtual tokens towards zero)")
    g.add_argument("--dropout", type=probability, default=None,
                   help="model dropout while finetuning; None keeps the base run's")
    g.add_argument("--checkpoint-activations", action="store_true",
                   help="keep only each block's input and recompute the block in the backward: "
                        "less memory, about a third more compute (needs dropout 0)")
    add_zero_flag(g)
    p.set_defaults(default_lr=lr, default_lora_lr=lora_lr, default_prompt_lr=prompt_lr)


# ----------------------------------------------------------------------------------------- shared

def _finetune_config(args):
    from ..finetune.loop import FinetuneConfig
    prompt = _prompt_tuning(args)
    if args.lr is None:
        args.lr = (args.default_lora_lr if args.lora_rank
                   else args.default_prompt_lr if prompt else args.default_lr)
    if args.weight_decay is None:
        args.weight_decay = 0.0 if prompt else FinetuneConfig.weight_decay
    return config_from_args(FinetuneConfig, args,
                            min_lr=args.lr / 10 if args.min_lr is None else args.min_lr)


def _load_base(args, allow_encoder=False):
    from ..checkpoint import load_pretrained
    out = Path(args.out)
    if (out / "model.safetensors").exists() or (out / "adapter.safetensors").exists():
        raise ValueError(f"'{out}' already holds a run; choose another --out or delete it")
    distributed.check_divides(args.batch_size)       # under mpiexec: before any work
    model, tokenizer = load_pretrained(args.ckpt, allow_encoder=allow_encoder)
    if tokenizer is None:
        raise ValueError(f"'{args.ckpt}' has no tokenizer.json, so text cannot be encoded for it")
    return model, tokenizer


def _prompt_tuning(args):
    """("prompt" or "prefix", N) when the flags ask for prompt or prefix tuning, else None;
    ValueError when they ask for two ways to train at once."""
    chosen = [flag for flag, value in (("--lora-rank", args.lora_rank),
                                       ("--prompt-tuning", args.prompt_tuning),
                                       ("--prefix-tuning", args.prefix_tuning)) if value]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)} are different ways to finetune; choose one")
    if args.prompt_tuning:
        return "prompt", args.prompt_tuning
    return ("prefix", args.prefix_tuning) if args.prefix_tuning else None


def _prepare_training(model, args, also=()):
    """Freeze, LoRA-wrap or prompt-tune as the flags ask; returns the adapter's report or None."""
    from ..finetune.loop import freeze_except_last
    from ..lora import apply_lora, format_report, parameter_report
    prompt = _prompt_tuning(args)
    if getattr(args, "checkpoint_activations", False):
        from ..checkpointing import enable_checkpointing
        if args.dropout:
            raise ValueError("--checkpoint-activations needs --dropout 0: recomputed blocks would "
                             "draw new masks")
        enable_checkpointing(model)
    # LoRA and prompts leave the int8 base frozen
    if not args.lora_rank and not prompt:
        from ..quantize import check_trainable
        check_trainable(model, f"'{args.ckpt}'")
    if prompt:
        from ..prompt_tuning import apply_prompt_tuning
        report = apply_prompt_tuning(model, prompt[1], prompt[0], trainable=also, seed=args.seed)
        print(f"{prompt[0]} tuning, {prompt[1]} virtual tokens: {format_report(report)}")
        return report
    if args.lora_rank:
        targets = tuple(t.strip()
                        for t in args.lora_targets.split(",")
                        if t.strip()) if args.lora_targets else None
        report = apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, targets,
                            trainable=also, seed=args.seed)
        print(f"LoRA rank {args.lora_rank} (alpha {args.lora_alpha:g}) on {len(report['wrapped'])} "
              f"layers: {format_report(report)}")
        return report
    if getattr(args, "freeze_except", -1) >= 0:
        freeze_except_last(model, args.freeze_except, also)
    print(f"training {format_report(parameter_report(model))}")
    return None


def _saved_files(args):
    """(adapter, full weights): what the run keeps. LoRA keeps its adapter and (unless
    --no-save-merged) the merged weights; prompt and prefix tuning, which do not fold into the
    weights, their adapter alone."""
    adapter = bool(args.lora_rank or _prompt_tuning(args))
    return adapter, not adapter or bool(args.lora_rank and args.save_merged)


def _save_run(args, model, tokenizer, extra, save_full):
    """Write the run: the adapter alone (LoRA, prompt/prefix tuning), and the full (merged) weights
    with ``save_full``."""
    from ..lora import merge_lora, save_adapter
    out = Path(args.out)
    adapter, full = _saved_files(args)
    if adapter:
        save_adapter(out, model, base=Path(args.ckpt).resolve(), extra_config=extra)
    if full and args.lora_rank:
        merge_lora(model)
    if full:
        save_full(out, model, tokenizer, extra)


def _record_results(out: Path, results: dict, args) -> None:
    """Add the held-out scores to config.json (and adapter_config.json) once the run is safely
    saved."""
    from ..files import atomic_write_json, read_json
    from ..lora import ADAPTER_CONFIG
    adapter, full = _saved_files(args)
    names = (["config.json"] if full else []) + ([ADAPTER_CONFIG] if adapter else [])
    for name in names:
        config = read_json(out / name)
        config["results"] = results
        atomic_write_json(out / name, config)


def _summary_line(summary, trainable, total):
    return (f"{summary['steps']} steps in {summary['seconds']:.0f}s; trained {trainable:,} of "
            f"{total:,} parameters ({100 * trainable / total:.2f}%); AdamW moments "
            f"{summary['optimizer_bytes'] / 2**20:.2f} MiB")


# ----------------------------------------------------------------------------------------- classify

def _classification_data(path, balance_classes, fractions, seed, per_class):
    from ..data.classification import balance, builtin_task, read_labeled, split_examples
    examples = builtin_task(per_class, seed) if path is None else read_labeled(path)
    if balance_classes:
        examples = balance(examples, seed)
    return split_examples(examples, fractions, seed)


def run_classify(args) -> int:
    from ..data.classification import class_counts, label_names
    from ..files import append_jsonl
    from ..finetune.classify import (GPTClassifier, classification_report, format_report,
                                     save_classifier, train_classifier)
    model, tokenizer = _load_base(args, allow_encoder=True)     # an encoder classifies from [CLS]
    fractions = args.split
    train, val, test = _classification_data(args.data, args.balance, fractions, args.seed,
                                            args.per_class)
    names = label_names(train + val + test)
    print(f"data: {args.data or 'built-in prose-vs-code lines'}; {len(train)} train / {len(val)} "
          f"val / {len(test)} test; classes {class_counts(train + val + test)}")
    if getattr(model, "architecture", None) == "encoder":
        from ..finetune.encoder_classify import EncoderClassifier
        model = EncoderClassifier.from_encoder(model, len(names), names, seed=args.seed)
    else:
        model = GPTClassifier.from_gpt(model, len(names), names, seed=args.seed)
    _prepare_training(model, args, also=("classifier",))
    out = Path(args.out)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").unlink(missing_ok=True)
    summary = train_classifier(model, tokenizer, train, val, _finetune_config(args),
                               log=lambda r: append_jsonl(out / "log.jsonl", r))
    if not distributed.is_main():          # under mpiexec: rank 0 alone saves and reports
        return 0
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    extra = {"task": "classify", "labels": names, "base": str(args.ckpt),
             "data": {"path": None if args.data is None else str(Path(args.data).resolve()),
                      "balance": args.balance,
                      "split": list(fractions), "seed": args.seed, "per_class": args.per_class},
             "finetune": {"lora_rank": args.lora_rank, "prompt_tuning": args.prompt_tuning,
                          "prefix_tuning": args.prefix_tuning, "freeze_except": args.freeze_except,
                          "epochs": args.epochs,
                          "lr": args.lr, "trainable": trainable,
                          "seconds": round(summary["seconds"], 1)}}
    _save_run(args, model, tokenizer, extra, lambda o, m, t, e: save_classifier(o, m, t, e))
    stop_if_interrupted(summary, out)
    report = classification_report(model, tokenizer, test) if test else None
    if report:
        _record_results(out, {k: report[k] for k in ("accuracy", "precision", "recall", "f1",
                                                     "majority_baseline")}, args)
    print(f"\ndone: {_summary_line(summary, trainable, total)}")
    if report:
        print("test set: " + format_report(report))
    print(f"run saved in {out}/ — next: tinyllm evaluate --ckpt {out}")
    return 0


# ----------------------------------------------------------------------------------------- instruct

def _instruction_data(path, fractions, seed, train_size, test_size, refusals=False):
    from ..data.instructions import (REFUSE, TASKS, builtin_instructions, read_instructions,
                                     split_records)
    if path is None:
        return builtin_instructions(train_size, 60, test_size, seed,
                                    TASKS + (REFUSE,) if refusals else TASKS)
    return split_records(read_instructions(path), fractions)


def _instruct_template(args, tokenizer):
    """"alpaca", or the base run's chat template for ``--template chat`` (ValueError when it has
    none)."""
    if args.template == "alpaca":
        return "alpaca"
    from ..chat_template import load_chat_template
    base = Path(args.ckpt) if Path(args.ckpt).is_dir() else Path(args.ckpt).parent
    template = load_chat_template(base, tokenizer)
    if template is None:
        raise ValueError(f"--template chat: '{args.ckpt}' has no chat template (no "
                         "tokenizer_config.json chat_template, and no ChatML or Llama 3 special "
                         "tokens in its tokenizer)")
    return template


def _instruct_run_config(args, end, trainable: int, seconds: float) -> dict:
    """What an instruction-tuned run's config.json records beside the model: its prompt template
    (a chat run's is the base's tokenizer_config.json: ``_copy_chat_config``), end token, base,
    data and finetuning settings."""
    from ..data.instructions import END_OF_TEXT, chat_template
    own = {} if args.template == "chat" else {"template": chat_template("alpaca")}
    data = {"path": None if args.data is None else str(Path(args.data).resolve()),
            "split": list(args.split), "seed": args.seed, "train_size": args.train_size,
            "test_size": args.test_size, "refusals": args.refusals and args.data is None}
    finetune = {"lora_rank": args.lora_rank, "prompt_tuning": args.prompt_tuning,
                "prefix_tuning": args.prefix_tuning, "epochs": args.epochs, "lr": args.lr,
                "trainable": trainable, "seconds": round(seconds, 1)}
    return {"task": "instruct", **own,
            "end_token": END_OF_TEXT if end.text == END_OF_TEXT else end.text,
            "base": str(args.ckpt), "data": data, "finetune": finetune}


def _copy_chat_config(args, out: Path) -> None:
    """A chat-template run keeps its base's tokenizer_config.json (the template lives there)."""
    base = Path(args.ckpt) if Path(args.ckpt).is_dir() else Path(args.ckpt).parent
    if args.template == "chat" and (base / "tokenizer_config.json").exists():
        from ..files import atomic_write
        atomic_write(out / "tokenizer_config.json", (base / "tokenizer_config.json").read_bytes())


def run_instruct(args) -> int:
    from ..checkpoint import save_model
    from ..data.instructions import end_token
    from ..files import append_jsonl
    from ..finetune.instruct import evaluate_instructions, format_scores, train_instructions
    model, tokenizer = _load_base(args)
    fractions = args.split
    train, val, test = _instruction_data(args.data, fractions, args.seed, args.train_size,
                                         args.test_size, args.refusals)
    template = _instruct_template(args, tokenizer)
    end = end_token(tokenizer, template)
    builtin = f"built-in generated tasks{' with refusals' if args.refusals else ''}"
    print(f"data: {args.data or builtin}; {len(train)} train / {len(val)} val / {len(test)} test "
          f"records; responses end with {end.text!r} (id "
          f"{end.id}){'; ' + end.note if end.note else ''}")
    scored = test[:args.eval_limit] if args.eval_limit else test
    # The adapter flags are checked before the minutes of scoring below; new LoRA adapters add
    # exactly zero, so the model still computes what the base does.
    _prepare_training(model, args)
    before = None
    if args.compare_base and scored:
        from ..prompt_tuning import without_prompt
        t0 = time.perf_counter()
        # a new soft prompt or prefix does change the output: set it aside
        with without_prompt(model):
            before = evaluate_instructions(model, tokenizer, scored, args.max_new_tokens, template)
        print(f"before finetuning ({time.perf_counter() - t0:.0f}s): {format_scores(before)}")
    out = Path(args.out)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").unlink(missing_ok=True)
    summary = train_instructions(model, tokenizer, train, val, _finetune_config(args), template,
                                 log=lambda r: append_jsonl(out / "log.jsonl", r))
    if not distributed.is_main():          # under mpiexec: rank 0 alone saves and reports
        return 0
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    keys = ("exact_match", "rouge_l", "bleu", "response_ppl")
    extra = _instruct_run_config(args, end, trainable, summary["seconds"])
    _save_run(args, model, tokenizer, extra, lambda o, m, t, e: save_model(o, m, t, extra_config=e))
    _copy_chat_config(args, out)
    stop_if_interrupted(summary, out)
    after = evaluate_instructions(model, tokenizer, scored, args.max_new_tokens,
                                  template) if scored else None
    if after:
        _record_results(out, {"before": {k: before[k] for k in keys} if before else None,
                              "after": {k: after[k] for k in keys}}, args)
    print(f"\ndone: {_summary_line(summary, trainable, total)}")
    if after:
        if before:
            print(f"before: {format_scores(before)}")
        print(f"after:  {format_scores(after)}")
        for record, response in list(zip(scored, after["responses"]))[:3]:
            print(f"  {record['instruction']} {record['input']!r} → {response!r} (reference "
                  f"{record['output']!r})")
    print(f"run saved in {out}/ — next: tinyllm evaluate --ckpt {out}")
    return 0


# ----------------------------------------------------------------------------------------- evaluate

def _pick_split(splits, which):
    train, val, test = splits
    return {"train": train, "val": val, "test": test, "all": train + val + test}[which]


def run_evaluate(args) -> int:
    from ..finetune import load_finetuned
    model, tokenizer, config = load_finetuned(args.ckpt, prefer_adapter=args.adapter)
    task = args.task or config.get("task")
    if tokenizer is None:
        raise ValueError(f"'{args.ckpt}' has no tokenizer.json")
    if task in ("safety", "dialogue"):
        from .safety import evaluate_dialogue, evaluate_safety
        return (evaluate_safety if task == "safety" else evaluate_dialogue)(args, model, tokenizer,
                                                                            config)
    if task not in ("classify", "instruct"):
        raise ValueError(f"'{args.ckpt}' records no finetuning task; pass --task classify or "
                         "instruct (or safety or dialogue, which any run that writes text can "
                         "take)")
    if task == "classify" and not hasattr(model, "label_names"):
        raise ValueError(f"'{args.ckpt}' is not a classifier run, so it cannot be evaluated with "
                         "--task classify")
    data = config.get("data", {})
    path = args.data if args.data is not None else data.get("path")
    seed = data.get("seed", 123)
    t0 = time.perf_counter()
    if task == "classify":
        from ..finetune.classify import classification_report, format_report
        splits = _classification_data(path, data.get("balance", True),
                                      tuple(data.get("split", (0.7, 0.1, 0.2))),
                                      seed, data.get("per_class", 600))
        examples = _pick_split(splits, args.split)[:args.limit]
        report = classification_report(model, tokenizer, examples)
        print(json.dumps(report) if args.json else format_report(report))
    else:
        from ..finetune.instruct import evaluate_instructions, format_scores
        splits = _instruction_data(path, tuple(data.get("split", (0.85, 0.05, 0.1))), seed,
                                   data.get("train_size", 1500), data.get("test_size", 120),
                                   data.get("refusals", False))
        records = _pick_split(splits, args.split)[:args.limit]
        scores = evaluate_instructions(model, tokenizer, records, args.max_new_tokens)
        if args.json:
            print(json.dumps({k: v for k, v in scores.items() if k != "responses"}))
        else:
            print(format_scores(scores))
            for record, response in list(zip(records, scores["responses"]))[:args.show]:
                print(f"  {record['instruction']} {record['input']!r}\n"
                      f"    → {response!r}\n"
                      f"    reference {record['output']!r}")
    if not args.json:
        print(f"({args.split} split of {path or 'the built-in task'}, "
              f"{time.perf_counter() - t0:.0f}s)")
    return 0
