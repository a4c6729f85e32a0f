"""``tinyllm fill-mask`` and ``tinyllm pretrain --objective mlm`` (BERT-style encoders)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .common import positive_int


def add_commands(sub) -> None:
    p = sub.add_parser("fill-mask",
                       help="the most likely tokens for each [MASK] in a text (an encoder run)",
                       description="Run an encoder (from `tinyllm pretrain --objective mlm` or a "
                                   "BERT imported with import-hf) on a text holding [MASK] tokens "
                                   "and print the top-k fillers of each with their probabilities.")
    p.add_argument("--ckpt", required=True, help="encoder run directory")
    p.add_argument("--text", required=True,
                   help='text with at least one [MASK], e.g. "The capital of France is [MASK]."')
    p.add_argument("--top-k", type=positive_int, default=5, help="fillers shown per [MASK]")
    p.set_defaults(func=run_fill_mask)


def run_fill_mask(args) -> int:
    from ..checkpoint import load_config, load_pretrained
    from ..mlm import fill_mask
    if load_config(args.ckpt).get("architecture") != "encoder":
        raise ValueError(f"'{args.ckpt}' is a decoder (GPT) run: it predicts the next token and "
                         "has no masked-LM head, so it cannot fill in [MASK]; use `tinyllm "
                         "generate` with it, or give an encoder run (`tinyllm pretrain --objective "
                         "mlm`, or a BERT from `tinyllm import-hf`)")
    model, tokenizer = load_pretrained(args.ckpt, allow_encoder=True)
    if tokenizer is None:
        raise ValueError(f"'{args.ckpt}' has no tokenizer, so the text cannot be encoded for it")
    model.eval()
    results = fill_mask(model, tokenizer, args.text, args.top_k)
    best = iter(fillers[0][0] for fillers in results)
    print(" ".join(next(best) if token == "[MASK]" else token
                   for token in tokenizer.tokenize(args.text))
          .replace(" ##", ""))
    for n, fillers in enumerate(results, 1):
        print(f"[MASK] #{n}:")
        for token, probability in fillers:
            print(f"  {token:<16} {probability:.4f}")
    return 0


# -------------------------------------------------------------------------------------- pretraining

def encoder_config(args, vocab_size: int):
    """The EncoderConfig for ``pretrain --objective mlm``: the GPT preset's shape,
    overridden by the flags."""
    from ..encoder import EncoderConfig
    from ..model import PRESETS
    shape = dict(PRESETS[args.preset])
    if any(key in shape for key in ("norm", "pos", "mlp")):
        raise ValueError(f"--preset {args.preset} is a Llama/MoE shape; an encoder (--objective "
                         "mlm) takes the "
                         "GPT-2 shapes: nano, micro, mini, gpt2, gpt2-medium")
    for flag, value in (("--n-kv-head", args.n_kv_head), ("--n-expert", args.n_expert),
                        ("--expert-top-k", args.expert_top_k), ("--curriculum", args.curriculum)):
        if value is not None:
            raise ValueError(f"{flag} does not apply to an encoder (--objective mlm)")
    if args.bias is False:
        raise ValueError("--no-bias does not apply to an encoder: BERT's layers have biases")
    overrides = {k: v for k, v in dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                       block_size=args.context).items() if v is not None}
    shape = {**{k: shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}, **overrides}
    return EncoderConfig(vocab_size=vocab_size, dropout=args.dropout, norm=args.encoder_norm,
                         **shape)


def run_pretrain_mlm(args) -> int:
    from ..data.tokens import split_train_val
    from ..encoder import Encoder
    from ..mlm import MaskedLM, require_mlm_tokenizer
    from ..train import TrainConfig, pretrain
    from .train import _ids_and_tokenizer, _print_summary

    out = Path(args.out)
    config = encoder_config(args, args.vocab_size)             # refuse a bad shape before any work
    extra = {"objective": {"name": "mlm", "mask_prob": args.mask_prob,
                           "whole_word": args.whole_word_mask}}
    if args.resume:
        from ..checkpoint import load_config
        saved = load_config(out).get("objective")
        if saved != extra["objective"]:
            raise ValueError(f"cannot resume '{out}' with other masking settings: saved {saved}, "
                             f"now {extra['objective']}")
    if args.tokenizer in ("bpe", "char"):
        raise ValueError("--objective mlm needs a WordPiece tokenizer ([CLS] [SEP] [MASK]), not "
                         f"{args.tokenizer}: "
                         "leave --tokenizer out (or pass wordpiece, or a WordPiece tokenizer file)")
    args.tokenizer = args.tokenizer or "wordpiece"
    ids, tokenizer = _ids_and_tokenizer(args, out)
    require_mlm_tokenizer(tokenizer)
    config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size,
                                 pad_token_id=tokenizer.pad_id,
                                 cls_token_id=tokenizer.cls_id, sep_token_id=tokenizer.sep_id)
    train_ids, val_ids = split_train_val(ids, args.val_fraction)
    model = Encoder(config, seed=args.seed)
    objective = MaskedLM(train_ids, tokenizer, args.batch_size, config.block_size, args.mask_prob,
                         args.whole_word_mask)
    train_config = TrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    )
    print(f"data: {len(ids):,} tokens ({len(train_ids):,} train / {len(val_ids):,} val); model: "
          f"encoder with {model.num_parameters():,} parameters, {config.n_layer} layers, "
          f"{config.n_head} heads, {config.n_embd} dims, context {config.block_size} "
          f"({config.norm}-LN); masked LM: {args.mask_prob:.0%} of the "
          f"{'words' if args.whole_word_mask else 'tokens'} (80% [MASK] / 10% random / 10% kept)")
    summary = pretrain(model, train_ids, val_ids, train_config, run_dir=out, tokenizer=tokenizer,
                       resume=args.resume,
                       objective=objective, extra_config=extra)
    _print_summary(summary, out)
    print(f"try: tinyllm fill-mask --ckpt {out} --text \"...a sentence with a [MASK] in it...\"")
    return 0
