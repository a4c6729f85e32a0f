"""``tinyllm align reward|dpo|ppo|grpo``: the alignment stage, after instruction finetuning.

    reward   train a reward model (GPT + scalar head) on preference pairs            → a "task": "reward" run
    dpo      Direct Preference Optimization of a policy on preference pairs           → a plain GPT run
    ppo      RLHF: PPO against a reward model, with a KL leash to the start          → a plain GPT run
    grpo     GRPO on verifiable problems (correctness + format rewards)              → a plain GPT run

Every command starts from ``--ckpt`` (default: runs/instruct if it exists, else runs/demo), writes
``--out`` with config.json (the base run's template and end token kept, plus an "alignment" section
with the settings and the before/after results), model.safetensors, tokenizer.json, log.jsonl and
log.svg (its curves).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .. import distributed
from .common import (add_config_flags, config_from_args, non_negative_float, non_negative_int,
                     positive_float, positive_int, split_fractions, stop_if_interrupted)
from .train import add_zero_flag

DEFAULT_BASES = ("runs/instruct", "runs/demo")


def add_commands(sub) -> None:
    p = sub.add_parser("align", help="align a model: reward model, DPO, PPO (RLHF) or GRPO",
                       description="Alignment after instruction finetuning. `tinyllm align METHOD "
                                   "--help` lists the flags of each method.")
    methods = p.add_subparsers(dest="method", metavar="METHOD")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    r = methods.add_parser("reward",
                           help="a reward model trained on preference pairs (Bradley-Terry)",
                           description="Train a reward model — the GPT of --ckpt with a scalar "
                                       "head on the last token — on preference pairs with the loss "
                                       "−log σ(r_chosen − r_rejected); reports the pairwise "
                                       "accuracy on held-out pairs before and after.")
    _common(r, out="runs/reward", lr=3e-4)
    _preference_flags(r)
    r.set_defaults(func=run_reward)

    d = methods.add_parser("dpo", help="Direct Preference Optimization on preference pairs",
                           description="DPO: −log σ(β[(log π(c) − log π_ref(c)) − (log π(r) − log "
                                       "π_ref(r))]) with π_ref a frozen copy of --ckpt. Reports "
                                       "the implicit-reward preference accuracy (and the policy's "
                                       "likelihood accuracy) on held-out pairs before and after.")
    _common(d, out="runs/dpo", lr=5e-5)
    _preference_flags(d)
    d.add_argument("--beta", type=positive_float, default=0.1,
                   help="β: strength of the implicit KL leash (smaller = further from the "
                        "reference)")
    _lora_flags(d)
    d.set_defaults(func=run_dpo)

    from ..rl.grpo import GRPOConfig
    from ..rl.ppo import PPOConfig
    o = methods.add_parser(
        "ppo", help="RLHF with PPO against a reward model",
        description="PPO: sample completions, score them with --reward-model, subtract β·KL to the "
                    "starting policy per token, GAE advantages with a value head, clipped policy and "
                    "value losses over several minibatch epochs per rollout.")
    _common(o, out="runs/ppo", lr=PPOConfig.lr)
    o.add_argument("--reward-model", default="runs/reward",
                   help="reward-model run (from `tinyllm align reward`)")
    o.add_argument("--data", default=None,
                   help="prompts: a preference or Alpaca file (JSON/JSONL); default: the built-in "
                        "instruction tasks")
    o.add_argument("--train-size", type=positive_int, default=400,
                   help="built-in prompts to sample from")
    o.add_argument("--test-size", type=non_negative_int, default=60,
                   help="held-out prompts scored (greedy) at each evaluation")
    add_config_flags(o, PPOConfig)
    _lora_flags(o)
    o.set_defaults(func=run_ppo)

    q = methods.add_parser(
        "grpo", help="GRPO on verifiable problems (counting words, arithmetic, ...)",
        description="GRPO: for each prompt a group of completions, rewards from checking the answer "
                    "(correctness) and its form (format), advantages relative to the group, a "
                    "clipped ratio loss with a k3 KL penalty to the starting policy. Reports the "
                    "held-out greedy accuracy before and after.")
    _common(q, out="runs/grpo", lr=GRPOConfig.lr)
    q.add_argument("--task", default="count",
                   help="built-in problems: count (how many words), arithmetic, add, subtract, "
                        "words, field or all; or gsm8k (grade-school math with worked steps: --data "
                        "a GSM8K JSONL, else the official train/test files, downloaded)")
    q.add_argument("--data", default=None,
                   help="Alpaca JSON/JSONL whose 'output' is the one right answer (overrides "
                        "--task); split --split")
    q.add_argument("--split", default="0.85,0.05,0.1", type=split_fractions,
                   help="train,val,test fractions of --data, in file order")
    q.add_argument("--train-size", type=positive_int, default=300, help="built-in training problems")
    q.add_argument("--test-size", type=non_negative_int, default=100,
                   help="built-in held-out problems")
    add_config_flags(q, GRPOConfig, skip=("max_new_tokens",))
    q.add_argument("--format-weight", type=non_negative_float, default=0.2,
                   help="weight of the format reward (correctness has 1)")
    q.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"longest completion (default: {GRPOConfig.max_new_tokens}; gsm8k: half "
                        "the model's context, at most 256)")
    _lora_flags(q)
    q.set_defaults(func=run_grpo)


def _common(p, out, lr) -> None:
    p.add_argument("--ckpt", default=None,
                   help=f"run to start from (default: the first of {', '.join(DEFAULT_BASES)} that "
                        "exists)")
    p.add_argument("--out", default=out, help="run directory to write")
    p.add_argument("--lr", type=positive_float, default=lr, help="learning rate (AdamW)")
    p.add_argument("--log-interval", type=positive_int, default=5,
                   help="steps between progress lines (when not on a terminal)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="sampling, shuffling and new heads' initialisation")
    add_zero_flag(p)


def _lora_flags(p) -> None:
    p.add_argument("--lora-rank", type=non_negative_int, default=0,
                   help="train LoRA adapters of this rank instead of every weight (0 = off); they "
                        "are merged into the saved weights")
    p.add_argument("--lora-alpha", type=positive_float, default=16.0,
                   help="LoRA scale numerator: updates are scaled by alpha/rank")
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute each block in the backward instead of keeping its activations "
                        "(less memory)")


def _maybe_lora(model, args, trainable=()) -> None:
    """Wrap the policy's Linear layers in LoRA adapters when --lora-rank is set (after the reference
    was copied), and turn on activation checkpointing when asked."""
    if getattr(args, "checkpoint_activations", False):
        from ..checkpointing import enable_checkpointing
        enable_checkpointing(model)
    if args.lora_rank:
        from ..lora import apply_lora
        apply_lora(model, args.lora_rank, args.lora_alpha, 0.0, None, trainable=trainable,
                   seed=args.seed, verbose=True)


def _merge_lora(model, args) -> None:
    if args.lora_rank:
        from ..lora import merge_lora
        merge_lora(model)


def _preference_flags(p) -> None:
    p.add_argument("--data", default=None,
                   help="preference pairs: JSONL {prompt, chosen, rejected} or a JSON list "
                        "(also Alpaca-style instruction/input/chosen/rejected); default: built-in "
                        "generated pairs (right vs wrong or badly formatted answers)")
    p.add_argument("--split", default="0.85,0.05,0.1", type=split_fractions,
                   help="train,val,test fractions of --data, in file order")
    p.add_argument("--train-size", type=positive_int, default=600, help="built-in training pairs")
    p.add_argument("--test-size", type=non_negative_int, default=200,
                   help="built-in held-out pairs")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on at most this many pairs")
    p.add_argument("--epochs", type=positive_int, default=2, help="passes over the training pairs")
    p.add_argument("--batch-size", type=positive_int, default=8, help="pairs per step")


# ------------------------------------------------------------------------------------------- shared

def base_checkpoint(ckpt) -> Path:
    """--ckpt, or the first default base that exists."""
    if ckpt:
        return Path(ckpt)
    for candidate in DEFAULT_BASES:
        if (Path(candidate) / "model.safetensors").exists():
            return Path(candidate)
    raise FileNotFoundError(f"no --ckpt given and none of {', '.join(DEFAULT_BASES)} exists; "
                            "create one with `tinyllm demo` (about 4 minutes) and optionally "
                            "`tinyllm finetune instruct`")


def _start(args):
    from ..checkpoint import load_pretrained
    out = Path(args.out)
    if (out / "model.safetensors").exists():
        raise ValueError(f"'{out}' already holds a run; choose another --out or delete it")
    if hasattr(args, "batch_size"):                  # reward, dpo: pairs split over the processes
        distributed.check_divides(args.batch_size)
    ckpt = base_checkpoint(args.ckpt)
    model, tokenizer = load_pretrained(ckpt)
    if tokenizer is None:
        raise ValueError(f"'{ckpt}' has no tokenizer.json, so text cannot be encoded for it")
    if not getattr(args, "lora_rank", 0):
        from ..quantize import check_trainable
        check_trainable(model, f"'{ckpt}'")
    print(f"start: {ckpt} ({model.num_parameters():,} parameters, context "
          f"{model.config.block_size})")
    return ckpt, model, tokenizer, out


def _logger(out: Path):
    """Appends records to out/log.jsonl. The folder is made (and an earlier log dropped) at the
    first record, so a run refused before it trains leaves no --out folder behind."""
    from ..files import append_jsonl
    started = False

    def log(record):
        nonlocal started
        if not started:
            out.mkdir(parents=True, exist_ok=True)
            (out / "log.jsonl").unlink(missing_ok=True)
            started = True
        append_jsonl(out / "log.jsonl", record)
    return log


def _plot(out: Path, keys) -> str:
    from ..plot import plot_log
    return plot_log(out / "log.jsonl", out / "log.svg", keys=keys, title=out.name)


def _base_extras(ckpt: Path) -> dict:
    """What a policy run inherits from its base run's config.json (template, end token, task)."""
    from ..checkpoint import load_config
    config = load_config(ckpt)
    return {k: v for k, v in config.items() if k in ("task", "template", "end_token")}


def _save_policy(out: Path, gpt, tokenizer, ckpt: Path, alignment: dict) -> None:
    from ..checkpoint import save_model
    save_model(out, gpt, tokenizer, extra_config={**_base_extras(ckpt), "base": str(ckpt),
                                                  "alignment": alignment})


def _pairs_config(args):
    """The finetuning loop's settings for training on preference pairs (reward model, DPO)."""
    from ..finetune.loop import FinetuneConfig
    return FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          min_lr=args.lr / 10, warmup=10, weight_decay=0.0,
                          log_interval=args.log_interval, seed=args.seed, zero=args.zero)


def _preference_splits(args, tokenizer, block_size):
    from ..rl.data import builtin_preferences, encode_preferences, read_preferences, split_pairs
    if args.data is None:
        train, val, test = builtin_preferences(args.train_size, 40, args.test_size, args.seed + 123)
        source = "built-in generated pairs"
    else:
        train, val, test = split_pairs(read_preferences(args.data), args.split)
        source = args.data
    if args.limit:
        train = train[:args.limit]
    encoded = [encode_preferences(split, tokenizer, block_size) for split in (train, val, test)]
    cut = sum(e.truncated for e in encoded)
    print(f"data: {source}; {len(train)} train / {len(val)} val / {len(test)} test pairs"
          + (f"; {cut} cut to fit block_size {block_size}" if cut else ""))
    if not len(encoded[2]):
        raise ValueError("the test split holds no pairs; change --split (or --test-size)")
    return encoded


# ------------------------------------------------------------------------------------------- reward

def run_reward(args) -> int:
    from ..rl.reward import (RewardModel, evaluate_reward_model, save_reward_model,
                             train_reward_model)
    ckpt, model, tokenizer, out = _start(args)
    train, val, test = _preference_splits(args, tokenizer, model.config.block_size)
    model = RewardModel.from_gpt(model, seed=args.seed)
    before = evaluate_reward_model(model, test)
    print(f"before: held-out pairwise accuracy {before['accuracy']:.3f} (loss "
          f"{before['loss']:.4f})")
    config = _pairs_config(args)
    summary = train_reward_model(model, train, val if len(val) else None, config, log=_logger(out))
    if not distributed.is_main():          # under mpiexec: rank 0 alone saves and reports
        return 0
    extras = {"base": str(ckpt), "data": args.data, "seconds": round(summary["seconds"], 1),
              **{k: v for k, v in _base_extras(ckpt).items() if k != "task"}}
    stop_if_interrupted(summary, out, lambda: save_reward_model(out, model, tokenizer, extras))
    after = evaluate_reward_model(model, test)
    results = {"before": {k: before[k] for k in ("accuracy", "loss", "margin")},
               "after": {k: after[k] for k in ("accuracy", "loss", "margin")}}
    save_reward_model(out, model, tokenizer, {**extras, "results": results})
    plot = _plot(out, ["loss", "accuracy", "margin", "val_accuracy", "val_loss"])
    print(f"\ndone in {summary['seconds']:.0f}s: held-out pairwise accuracy "
          f"{before['accuracy']:.3f} → {after['accuracy']:.3f} ({len(test)} pairs), margin "
          f"{after['margin']:.3f}; curves: {plot}")
    print(f"run saved in {out}/ — next: tinyllm align ppo --reward-model {out}")
    return 0


# ------------------------------------------------------------------------------------------- dpo

def run_dpo(args) -> int:
    from ..rl.dpo import all_pair_log_probs, evaluate_dpo, train_dpo
    from ..rl.logprobs import disable_dropout, frozen_copy
    ckpt, policy, tokenizer, out = _start(args)
    train, val, test = _preference_splits(args, tokenizer, policy.config.block_size)
    disable_dropout(policy)
    reference = frozen_copy(policy)
    _maybe_lora(policy, args)
    ref_test = all_pair_log_probs(reference, test)
    before = evaluate_dpo(policy, test, ref_test, args.beta)
    config = _pairs_config(args)
    summary = train_dpo(policy, reference, train, val if len(val) else None, config, args.beta,
                        log=_logger(out))
    if not distributed.is_main():          # under mpiexec: rank 0 alone saves and reports
        return 0
    alignment = {"method": "dpo", "beta": args.beta, "epochs": args.epochs, "lr": args.lr,
                 "data": args.data, "seconds": round(summary["seconds"], 1)}
    stop_if_interrupted(summary, out, lambda: (_merge_lora(policy, args),
                                               _save_policy(out, policy, tokenizer, ckpt,
                                                            alignment)))
    after = evaluate_dpo(policy, test, ref_test, args.beta)
    _merge_lora(policy, args)
    _save_policy(out, policy, tokenizer, ckpt, {**alignment,
                                                "results": {"before": before, "after": after}})
    plot = _plot(out, ["loss", "margin", "accuracy", "val_accuracy", "val_margin",
                       "val_likelihood_accuracy"])
    print(f"\ndone in {summary['seconds']:.0f}s on {len(test)} held-out pairs: preference accuracy "
          f"(implicit reward) {before['accuracy']:.3f} → {after['accuracy']:.3f}; likelihood "
          f"accuracy {before['likelihood_accuracy']:.3f} → {after['likelihood_accuracy']:.3f}; "
          f"margin {after['margin']:.3f}; loss {before['loss']:.4f} → {after['loss']:.4f}")
    print(f"curves: {plot}; run saved in {out}/ — next: tinyllm chat --ckpt {out}")
    return 0


# ------------------------------------------------------------------------------------------- ppo

def _prompt_records(args):
    """(train, test) records with a "prompt" for PPO: from --data (preference or Alpaca) or built-in
    tasks."""
    from ..data.instructions import builtin_instructions, format_prompt
    if args.data is None:
        train, _, test = builtin_instructions(args.train_size, 0, args.test_size, args.seed + 321)
        for r in train + test:
            r["prompt"] = format_prompt(r)
    else:
        from ..data.instructions import split_records
        from ..rl.data import read_prompts
        train, _, test = split_records(read_prompts(args.data), (0.9, 0.0, 0.1))
    return train, test


def run_ppo(args) -> int:
    from ..data.instructions import end_token
    from ..rl.data import encode_text
    from ..rl.logprobs import check_same_vocab, frozen_copy
    from ..rl.ppo import PolicyWithValue, PPOConfig, reward_model_scorer, train_ppo
    from ..rl.reward import load_reward_model
    config = config_from_args(PPOConfig, args)
    if not (Path(args.reward_model) / "model.safetensors").exists():
        raise FileNotFoundError(f"no reward model at '{args.reward_model}'; train one with "
                                "`tinyllm align reward` or pass --reward-model RUN")
    ckpt, gpt, tokenizer, out = _start(args)
    reward_model, _ = load_reward_model(args.reward_model)
    check_same_vocab(gpt, reward_model, "reward")
    reference = frozen_copy(gpt)
    policy = PolicyWithValue.from_gpt(gpt, seed=args.seed)
    _maybe_lora(policy, args, trainable=("value_head",))
    end = end_token(tokenizer).id
    train, test = _prompt_records(args)
    prompts = [encode_text(tokenizer, r["prompt"]) for r in train]
    score = reward_model_scorer(reward_model)
    # answers to check (not preference text)
    checkable = all("output" in r and "chosen" not in r for r in test)
    evaluate = _ppo_evaluator(test, tokenizer, score, checkable, policy.config.block_size,
                              args.max_new_tokens, end)
    print(f"PPO: {len(prompts)} training prompts, {len(test)} held-out; reward model "
          f"{args.reward_model}")
    summary = train_ppo(policy, reference, prompts, score, config, end, eval_fn=evaluate,
                        log=_logger(out))
    if not distributed.is_main():          # under mpiexec: rank 0 alone saves and reports
        return 0
    _merge_lora(policy, args)
    _save_policy(out, policy.as_gpt(), tokenizer, ckpt,
                 {"method": "ppo", "reward_model": str(args.reward_model), **vars(config),
                  "seconds": round(summary["seconds"], 1),
                  "results": {"before": summary["evals"][0], "after": summary["evals"][-1]}})
    plot = _plot(out, ["score", "kl", "kl_coef", "clip_frac", "entropy", "value_loss",
                       "explained_variance", "completion_length", "test_score", "test_accuracy"])
    _report_ppo(summary, checkable)
    print(f"curves: {plot}; run saved in {out}/")
    return 0


def _ppo_evaluator(test, tokenizer, score, checkable, block_size, max_new_tokens, end):
    """PPO's held-out evaluation: greedy completions of the test prompts, their mean reward-model
    score, and (for prompts with a right answer) their accuracy."""
    import numpy as np
    from ..generate import generate
    from ..rl.data import encode_text
    from ..rl.tasks import is_correct
    test_prompts = [encode_text(tokenizer, r["prompt"])[-(block_size - max_new_tokens):]
                    for r in test]

    def evaluate(model):
        new = generate(model, test_prompts, max_new_tokens, temperature=0.0, stop_ids=(end,),
                       on_full="stop")
        completions = [list(c) + [end] if len(c) < max_new_tokens else list(c) for c in new]
        scores = score(None, test_prompts, completions, None)
        result = {"test_score": float(np.mean(scores))}
        if checkable:
            result["test_accuracy"] = float(np.mean([is_correct(r, tokenizer.decode(c))
                                                     for r, c in zip(test, new)]))
        return result
    return evaluate


def _report_ppo(summary, checkable) -> None:
    """The closing line: held-out score (and accuracy) before → after, the sampled score's first
    quarter → last quarter, and the KL at the end."""
    import numpy as np
    first, last = summary["evals"][0], summary["evals"][-1]
    history = summary["history"]
    quarter = max(len(history) // 4, 1)
    mean = lambda key, rows: float(np.mean([h[key] for h in rows]))  # noqa: E731
    print(f"\ndone in {summary['seconds']:.0f}s: held-out reward-model score (greedy) "
          f"{first['test_score']:.3f} → {last['test_score']:.3f}"
          + (f", accuracy {first['test_accuracy']:.3f} → {last['test_accuracy']:.3f}"
             if checkable else "")
          + f"; sampled score, first quarter of the steps {mean('score', history[:quarter]):.3f} → "
            f"last quarter {mean('score', history[-quarter:]):.3f}; KL per completion in the last "
            f"quarter {mean('kl', history[-quarter:]):.3f} (β {history[-1]['kl_coef']:.3f})")


# ------------------------------------------------------------------------------------------- grpo

def _grpo_problems(args):
    """(training problems, held-out problems, where they come from) for --task / --data, each with
    its formatted prompt."""
    from ..data.instructions import format_prompt
    from ..rl.tasks import verifiable_problems
    if args.task == "gsm8k":
        from ..rl.gsm8k import gsm8k_problems
        train, test = gsm8k_problems(args.data, args.train_size, args.test_size, args.seed + 7,
                                     args.split)
        source = f"GSM8K ({args.data or 'the official train/test files'})"
    elif args.data is None:
        train, test = verifiable_problems(args.task, args.train_size, args.test_size, args.seed + 7)
        source = f"built-in task '{args.task}'"
    else:
        from ..data.instructions import read_instructions, split_records
        train, _, test = split_records(read_instructions(args.data), args.split)
        source = args.data
    for r in train + test:
        r["prompt"] = format_prompt(r)
    return train, test, source


def run_grpo(args) -> int:
    from ..data.instructions import end_token
    from ..rl.data import encode_text
    from ..rl.grpo import GRPOConfig, train_grpo
    from ..rl.logprobs import frozen_copy
    from ..rl.tasks import RewardFunctions, correctness_reward, format_reward, task_accuracy
    config = config_from_args(GRPOConfig, args,
                               max_new_tokens=args.max_new_tokens or GRPOConfig.max_new_tokens)
    ckpt, policy, tokenizer, out = _start(args)
    if args.task == "gsm8k" and args.max_new_tokens is None:    # worked steps need room
        config = dataclasses.replace(config, max_new_tokens=min(256, policy.config.block_size // 2))
    args.max_new_tokens = config.max_new_tokens
    train, test, source = _grpo_problems(args)
    end = end_token(tokenizer).id
    prompts = [encode_text(tokenizer, r["prompt"]) for r in train]
    functions = [("correct", correctness_reward, 1.0)]
    if args.format_weight:
        functions.append(("format", format_reward, args.format_weight))
    rewards = RewardFunctions(functions, tokenizer, train, end)
    reference = frozen_copy(policy)
    _maybe_lora(policy, args)
    print(f"GRPO on {source}: {len(train)} training problems, {len(test)} held-out; "
          f"{config.prompts_per_step} prompts × {config.group_size} completions per step")
    t0 = time.perf_counter()
    summary = train_grpo(policy, reference, prompts, rewards, config, end,
                         eval_fn=lambda model: {f"test_{k}": v for k, v in
                                                task_accuracy(model, tokenizer, test,
                                                              args.max_new_tokens).items()},
                         log=_logger(out))
    if not distributed.is_main():          # under mpiexec: rank 0 alone saves and reports
        return 0
    first, last = summary["evals"][0], summary["evals"][-1]
    _merge_lora(policy, args)
    task = args.task if args.data is None or args.task == "gsm8k" else None
    _save_policy(out, policy, tokenizer, ckpt,
                 {"method": "grpo", "task": task, "data": args.data, **vars(config),
                  "format_weight": args.format_weight, "seconds": round(summary["seconds"], 1),
                  "results": {"before": first, "after": last}})
    plot = _plot(out, ["reward", "reward_std", "correct", "format", "kl", "completion_length",
                       "clip_frac", "test_accuracy"])
    print(f"\ndone in {time.perf_counter() - t0:.0f}s: held-out greedy accuracy "
          f"{first['test_accuracy']:.3f} → {last['test_accuracy']:.3f} ({len(test)} problems); "
          f"curves: {plot}")
    print(f"run saved in {out}/ — next: tinyllm chat --ckpt {out}")
    return 0
