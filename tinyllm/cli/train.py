"""``tinyllm pretrain``, ``tinyllm eval``, ``tinyllm plot`` and ``tinyllm demo``."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from .. import backend, distributed
from .common import (add_config_flags, fraction, non_negative_int, positive_int, probability,
                     tokenizer_choice)

DEMO_MINUTES = "about 4"   # on 2 idle CPU cores: 4.1–4.4 min in 3 runs (README, Examples)


def add_commands(sub) -> None:
    p = sub.add_parser("pretrain",
                       help="train a GPT on a text file or directory (next-token prediction)",
                       description="Pretrain a GPT from scratch. Writes config.json, "
                                   "model.safetensors, tokenizer.json, train_state.safetensors, "
                                   "log.jsonl and loss.svg into --out.")
    add_model_and_training_flags(p)
    _add_curriculum_flags(p)
    g = p.add_argument_group("objective")
    g.add_argument("--objective", choices=["clm", "mlm"], default="clm",
                   help="clm: a GPT predicting the next token; mlm: a BERT-style encoder filling "
                        "in masked tokens (15%% selected: 80%% [MASK], 10%% random, 10%% kept), "
                        "with the preset's shape and a WordPiece tokenizer by default")
    g.add_argument("--mask-prob", type=probability, default=0.15,
                   help="mlm: share of the tokens (or words) selected")
    g.add_argument("--whole-word-mask", action="store_true",
                   help="mlm: select whole words, all their ## pieces together")
    g.add_argument("--encoder-norm", choices=["post", "pre"], default="post",
                   help="mlm: post-LN (BERT) or pre-LN (GPT-style, steadier without warmup) blocks")
    p.add_argument("--out", default="runs/pretrain", help="run directory to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=run_pretrain)

    p = sub.add_parser("eval", help="loss and perplexity of a checkpoint on a text",
                       description="The mean next-token loss of a run's model (and perplexity = "
                                   "e^loss) on non-overlapping windows of its context length over "
                                   "--data: by default the held-out tail of the built-in corpus, "
                                   "which is what `pretrain` validates on.")
    p.add_argument("--ckpt", required=True, help="run directory (or its model.safetensors)")
    p.add_argument("--data", default=None,
                   help="text file or directory (default: the built-in corpus's validation split)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="windows of the model's context per batch")
    p.add_argument("--max-batches", type=positive_int, default=None,
                   help="evaluate on at most this many batches")
    p.add_argument("--val-fraction", type=fraction, default=None,
                   help="evaluate only this held-out tail of the text, as `pretrain "
                        "--val-fraction` split it (default: the whole --data file; 0.1 of the "
                        "built-in corpus)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("plot", help="draw the loss curves of a run as an SVG picture",
                       description="Draw RUN/log.jsonl as an SVG: the raw training loss (faint), "
                                   "its moving average, and the validation loss at each evaluation "
                                   "(points).")
    p.add_argument("run", help="run directory holding log.jsonl")
    p.add_argument("--out", default=None, help="output file (default: RUN/loss.svg)")
    p.set_defaults(func=run_plot)

    p = sub.add_parser("demo", help=f"the whole pretraining stage in {DEMO_MINUTES} minutes on a "
                                    "laptop CPU",
                       description="Train a BPE tokenizer and a small GPT on text that ships with "
                                   "Python (pydoc_data.topics), report validation perplexity "
                                   "before and after, write the loss curve and print a few sampled "
                                   "continuations.")
    p.add_argument("--out", default="runs/demo", help="run directory to write")
    p.add_argument("--steps", type=positive_int, default=600, help="training steps")
    p.add_argument("--seed", type=non_negative_int, default=1337,
                   help="seed of the weights, the data order and the samples")
    p.set_defaults(func=run_demo)


def add_model_and_training_flags(p) -> None:
    add_data_flags(p)
    add_model_flags(p)
    add_training_flags(p)


def add_data_flags(p, tokenizer: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="UTF-8 text file or directory of .txt files (default: Python's own "
                         "pydoc_data.topics text, ~465 KB)")
    g.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="the tail of the data held out for validation")
    if not tokenizer:
        return
    g.add_argument("--tokenizer", default=None, type=tokenizer_choice,
                   help="'bpe' or 'wordpiece' (trained on the data), 'char', or a tokenizer to "
                        "reuse: a tokenizer .json file or a run directory holding one; --objective "
                        "mlm trains a wordpiece one unless another is given (default: bpe)")
    g.add_argument("--vocab-size", type=positive_int, default=2048,
                   help="vocabulary size when training a tokenizer")


def add_model_flags(p, preset: bool = True) -> None:
    """--preset (unless ``preset`` is False) and the flags that override its shape."""
    from ..model import PRESETS
    g = p.add_argument_group("model")
    if preset:
        g.add_argument("--preset", default="mini", choices=sorted(PRESETS),
                       help="model shape; the flags below override it")
    g.add_argument("--n-layer", type=positive_int, default=None,
                   help="transformer blocks (default: the preset's)")
    g.add_argument("--n-head", type=positive_int, default=None,
                   help="attention heads; must divide --n-embd (default: the preset's)")
    g.add_argument("--n-embd", type=positive_int, default=None,
                   help="width of the residual stream (default: the preset's)")
    g.add_argument("--context", type=positive_int, default=None,
                   help="context length, block_size (default: the preset's)")
    g.add_argument("--dropout", type=probability, default=0.0,
                   help="dropout probability while training")
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="biases in linear and norm layers (default: the preset's: on for GPT-2 "
                        "shapes, off for llama/moe)")
    g.add_argument("--n-kv-head", type=positive_int, default=None,
                   help="key/value heads, dividing --n-head: fewer = grouped-query attention "
                        "(default: the preset's)")
    g.add_argument("--n-expert", type=positive_int, default=None,
                   help="experts per layer of a moe preset (default: the preset's)")
    g.add_argument("--expert-top-k", type=positive_int, default=None,
                   help="experts per token of a moe preset (default: the preset's)")


def add_training_flags(p) -> None:
    from ..train import TrainConfig
    g = p.add_argument_group("training")
    add_config_flags(g, TrainConfig)
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="floating-point type of weights and math")
    add_zero_flag(g)


def add_zero_flag(group) -> None:
    """``--zero``, for every command whose loop runs under ``mpiexec`` (tinyllm.distributed)."""
    group.add_argument("--zero", type=int, choices=[0, 1], default=0,
                       help="under mpiexec: 1 shards AdamW's moments over the processes (ZeRO-1: "
                            "1/N of their memory in each, the same results)")


def _load_text(data):
    from ..data.text import builtin_corpus
    from ..data.tokens import read_text
    return builtin_corpus() if data is None else read_text(data)


def _make_tokenizer(choice, text, vocab_size, out):
    from ..tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
    if choice == "char":
        return CharTokenizer.from_text(text)
    if choice == "wordpiece":
        from ..tokenizer.wordpiece_train import train_wordpiece
        t0 = time.perf_counter()
        tok = train_wordpiece(text, vocab_size)
        print(f"trained a WordPiece tokenizer: {tok.vocab_size} tokens in "
              f"{time.perf_counter() - t0:.1f}s")
        return tok
    if choice in ("bpe", None):
        t0 = time.perf_counter()
        tok = BPETokenizer.train(text, vocab_size, pattern="gpt4",
                                 special_tokens=("<|endoftext|>",))
        print(f"trained a BPE tokenizer: {tok.vocab_size} tokens in "
              f"{time.perf_counter() - t0:.1f}s")
        return tok
    return load_tokenizer(choice)


def run_pretrain(args) -> int:
    from ..data.tokens import split_train_val
    from ..model import GPT
    from ..train import TrainConfig, pretrain

    backend.set_dtype(args.dtype)
    out = run_directory(args)
    distributed.check_divides(args.batch_size)       # under mpiexec: before any work
    if getattr(args, "objective", "clm") == "mlm":
        from .encoder import run_pretrain_mlm
        return run_pretrain_mlm(args)
    # refuse a bad shape before any work
    config = _model_config(args, vocab_size=args.vocab_size)
    ids, tokenizer = _ids_and_tokenizer(args, out)
    config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
    train_ids, val_ids = split_train_val(ids, args.val_fraction)
    model = GPT(config, seed=args.seed)
    train_config = TrainConfig(**{f.name: getattr(args, f.name)
                                  for f in dataclasses.fields(TrainConfig)})
    print(f"data: {len(ids):,} tokens ({len(train_ids):,} train / {len(val_ids):,} val); model: "
          f"{model.num_parameters():,} parameters, {config.n_layer} layers, {config.n_head} heads, "
          f"{config.n_embd} dims, context {config.block_size}")
    sampler = _curriculum(args, train_ids, config.block_size, tokenizer)
    summary = pretrain(model, train_ids, val_ids, train_config, run_dir=out, tokenizer=tokenizer,
                       resume=args.resume,
                       batch_sampler=sampler,
                       extra_config={"curriculum": args.curriculum} if sampler else None)
    _print_summary(summary, out)
    return 0


def run_directory(args) -> Path:
    """--out as a Path: a run to continue with --resume, else a folder that holds no run yet."""
    from ..checkpoint import check_resumable
    out = Path(args.out)
    if args.resume:
        check_resumable(out)
    elif (out / "model.safetensors").exists():
        raise ValueError(f"'{out}' already holds a run; pass --resume to continue it or choose "
                         "another --out")
    return out


def _model_config(args, vocab_size):
    """The GPTConfig the flags ask for (the preset with the flags that were given overriding it)."""
    from ..model import preset
    overrides = {k: v for k, v in dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                       block_size=args.context, bias=args.bias,
                                       n_kv_head=args.n_kv_head,
                                       n_expert=args.n_expert,
                                       expert_top_k=args.expert_top_k).items() if v is not None}
    return preset(args.preset, vocab_size=vocab_size, dropout=args.dropout, **overrides)


def _add_curriculum_flags(p) -> None:
    from ..data.curriculum import CURRICULA
    g = p.add_argument_group("curriculum")
    g.add_argument("--curriculum", default=None, choices=CURRICULA,
                   help="draw windows easiest first: by mean sentence length, or by a bigram "
                        "model's loss (%(default)s: uniformly random windows)")
    g.add_argument("--curriculum-warmup", type=float, default=0.5,
                   help="share of the steps after which every window is available")


def _curriculum(args, train_ids, context, tokenizer):
    if args.curriculum is None:
        return None
    from ..data.curriculum import curriculum_sampler
    return curriculum_sampler(args.curriculum, train_ids, context, args.batch_size, args.steps,
                              tokenizer, args.curriculum_warmup)


def _ids_and_tokenizer(args, out):
    """The token ids of --data and their tokenizer: a `tinyllm data prepare --tokenizer`
    directory's, else the text tokenized with --tokenizer (or with the tokenizer of the run being
    resumed)."""
    from ..checkpoint import load_tokenizer_of
    from ..data.prepare import prepared_tokens
    from ..data.tokens import tokenize
    prepared = prepared_tokens(args.data) if args.data is not None else None
    if prepared is not None:
        print(f"data: the prepared tokens of {args.data} (its tokenizer.json; --tokenizer is not "
              "used)")
        return prepared
    text = _load_text(args.data)
    tokenizer = load_tokenizer_of(out) if args.resume else _make_tokenizer(args.tokenizer, text,
                                                                           args.vocab_size, out)
    return tokenize(text, tokenizer, cache_dir=out / "cache"), tokenizer


def _print_summary(summary, out):
    first, last = summary.get("first_val"), summary["last_val"]
    before = f"{first['loss']:.4f} (perplexity {first['ppl']:.1f}) → " if first else ""
    print(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s "
          f"({summary['tokens_per_s']:,.0f} tokens/s); val loss {before}{last['loss']:.4f} "
          f"(perplexity {last['ppl']:.1f})")
    print(f"run saved in {out}/ (loss curve: {summary['plot']})")


def run_eval(args) -> int:
    from ..checkpoint import load_pretrained
    from ..data.tokens import split_train_val, tokenize
    from ..train import evaluate
    model, tokenizer = load_pretrained(args.ckpt)
    if tokenizer is None:
        raise ValueError(f"'{args.ckpt}' has no tokenizer.json, so text cannot be encoded for it")
    ids = tokenize(_load_text(args.data), tokenizer)
    val_fraction = 0.1 if args.data is None and args.val_fraction is None else args.val_fraction
    if val_fraction is not None:
        ids = split_train_val(ids, val_fraction)[1]
    result = evaluate(model, ids, args.batch_size, model.config.block_size, args.max_batches)
    print(f"loss {result['loss']:.4f} | perplexity {result['ppl']:.2f} | {result['tokens']:,} "
          "tokens evaluated")
    return 0


def run_plot(args) -> int:
    from ..plot import plot_run
    print(plot_run(args.run, args.out))
    return 0


def run_demo(args) -> int:
    """Tokenizer → GPT → pretraining → evaluation → samples, on the built-in corpus."""
    from ..data.text import builtin_corpus
    from ..data.tokens import split_train_val, tokenize
    from ..generate import generate
    from ..model import GPT, preset
    from ..tokenizer import BPETokenizer
    from ..interrupt import TrainingInterrupted
    from ..train import TrainConfig, pretrain

    out = Path(args.out)
    print("tinyllm demo: tokenizer, GPT and pretraining on Python's own documentation text "
          f"({DEMO_MINUTES} min)\n")
    text = builtin_corpus()
    t0 = time.perf_counter()
    tokenizer = BPETokenizer.train(text, 2048, pattern="gpt4", special_tokens=("<|endoftext|>",))
    ids = tokenize(text, tokenizer, cache_dir=out / "cache")
    print(f"1. tokenizer: byte-level BPE with {tokenizer.vocab_size} tokens, trained in "
          f"{time.perf_counter() - t0:.1f}s; {len(text):,} characters → {len(ids):,} tokens "
          f"({len(text) / len(ids):.2f} characters per token)")
    train_ids, val_ids = split_train_val(ids, 0.1)
    config = preset("mini", vocab_size=tokenizer.vocab_size, block_size=128, dropout=0.1)
    model = GPT(config, seed=args.seed)
    print(f"2. model: GPT with {model.num_parameters():,} parameters ({config.n_layer} layers, "
          f"{config.n_head} heads, {config.n_embd} dims, context {config.block_size})")
    train_config = TrainConfig(steps=args.steps, batch_size=16, lr=2e-3, min_lr=2e-4, warmup=50,
                               beta2=0.99,
                               eval_interval=max(args.steps // 4, 1), eval_iters=10,
                               log_interval=25, seed=args.seed)
    print(f"3. pretraining for {args.steps} steps of {train_config.batch_size}×{config.block_size} "
          f"tokens ({len(train_ids):,} training / {len(val_ids):,} validation tokens)")
    if out.exists() and (out / "model.safetensors").exists():
        print(f"   (overwriting the earlier demo run in {out}/)")
        for name in ("log.jsonl", "train_state.safetensors"):
            (out / name).unlink(missing_ok=True)
    try:
        summary = pretrain(model, train_ids, val_ids, train_config, run_dir=out,
                           tokenizer=tokenizer)
    # the demo has no --resume: say what the checkpoint is good for
    except TrainingInterrupted as stopped:
        raise TrainingInterrupted(f"interrupted after step {stopped.step} of {args.steps}: the "
                                  f"model so far is saved in {out}/ (try `tinyllm generate --ckpt "
                                  f"{out}`); `tinyllm demo` starts again from step "
                                  "0", stopped.step) from None
    first, last = summary["first_val"], summary["last_val"]
    print(f"\n4. validation perplexity {first['ppl']:.1f} → {last['ppl']:.1f} (loss "
          f"{first['loss']:.3f} → {last['loss']:.3f}) in {summary['seconds']:.0f}s; loss curve: "
          f"{summary['plot']}")
    print("5. samples (temperature 0.8, top-k 40):")
    model.eval()
    for i, prompt in enumerate(["The \"if\" statement", "A list is", "def "]):
        prompt_ids = tokenizer.encode(prompt)
        new = generate(model, prompt_ids, 40, temperature=0.8, top_k=40, seed=args.seed + i)
        print(f"   --- {prompt!r}\n   {tokenizer.decode(prompt_ids + list(new))!r}")
    print(f"\nnext: tinyllm generate --ckpt {out} --prompt \"The for statement\"   (or tinyllm "
          f"eval --ckpt {out})")
    return 0
