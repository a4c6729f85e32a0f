"""Example 12: masked vs causal language modelling — an encoder (BERT) and a decoder (GPT) on equal terms.

    python examples/12_mlm_vs_clm.py                  # SMS Spam Collection (about 1–1.5 minutes on 2 cores)
    python examples/12_mlm_vs_clm.py --steps 100      # a quick look

Both models get the same text (the messages of the training split, labels unused), the same WordPiece
tokenizer, the same shape (layers, heads, width, context) and the same compute (steps × batch × context
tokens). They differ in one line of the attention and in the objective:

    decoder (CLM)   causal attention; predict every next token          → it can *generate* text
    encoder (MLM)   bidirectional attention; predict 15% masked tokens  → it can *fill in* text, not continue it

Then each is finetuned as a spam classifier (the GPT reads its last token, the encoder its [CLS] token)
with the same epochs, batch size and learning rate, and scored on the same held-out messages. The table
says what each learned to do and how well each classifies; the README's "Encoders" section explains why.
"""

import argparse
import time
from pathlib import Path

from tinyllm import no_grad
from tinyllm.data.classification import balance, read_labeled, split_examples
from tinyllm.data.datasets import resolve_data
from tinyllm.encoder import Encoder, EncoderConfig
from tinyllm.finetune.classify import GPTClassifier, classification_report, train_classifier
from tinyllm.finetune.encoder_classify import EncoderClassifier
from tinyllm.finetune.loop import FinetuneConfig
from tinyllm.generate import generate
from tinyllm.mlm import MaskedLM, fill_mask
from tinyllm.model import GPT, GPTConfig
from tinyllm.data.tokens import split_train_val, tokenize
from tinyllm.tokenizer.wordpiece_train import train_wordpiece
from tinyllm.train import TrainConfig, pretrain

parser = argparse.ArgumentParser(description="Encoder (MLM) vs decoder (CLM) at equal compute (example 12).")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sms_spam.tsv"
parser.add_argument("--data", default=str(SHARED) if SHARED.exists() else "sms-spam",
                    help="label<TAB>text file or dataset name (default: ../shared/data/sms_spam.tsv, else sms-spam)")
parser.add_argument("--steps", type=int, default=600, help="pretraining steps, for each model")
parser.add_argument("--epochs", type=int, default=3, help="classification finetuning epochs")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/example-mlm-vs-clm")
args = parser.parse_args()

try:
    examples = balance(read_labeled(resolve_data(args.data)), args.seed)
except (ValueError, OSError, RuntimeError) as e:       # no such file, offline, a bad checksum
    parser.error(f"--data {args.data!r}: {e}")
train, val, test = split_examples(examples, (0.7, 0.1, 0.2), args.seed)
text = "\n".join(message for _, message in train)              # unlabeled text for pretraining
tokenizer = train_wordpiece(text, 2000)
train_ids, val_ids = split_train_val(tokenize(text, tokenizer), 0.1)
shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=64)
batch = 16
print(f"{len(examples)} labelled messages ({len(train)} train / {len(val)} val / {len(test)} test); pretraining on "
      f"the {len(train_ids):,} tokens of the training messages; WordPiece vocabulary {tokenizer.vocab_size}; "
      f"{args.steps} steps × {batch} × {shape['block_size']} tokens for each model\n")

train_config = TrainConfig(steps=args.steps, batch_size=batch, lr=2e-3, min_lr=2e-4, warmup=30,
                           eval_interval=max(args.steps // 3, 1), eval_iters=8, sample_tokens=0, seed=args.seed)
decoder = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape), seed=args.seed)
encoder = Encoder(EncoderConfig(vocab_size=tokenizer.vocab_size, cls_token_id=tokenizer.cls_id,
                                sep_token_id=tokenizer.sep_id, pad_token_id=tokenizer.pad_id, norm="pre", **shape),
                  seed=args.seed)
rows = {}
for name, model in (("decoder (CLM)", decoder), ("encoder (MLM)", encoder)):
    objective = MaskedLM(train_ids, tokenizer, batch, shape["block_size"]) if model is encoder else None
    t0 = time.perf_counter()
    summary = pretrain(model, train_ids, val_ids, train_config, run_dir=Path(args.out) / name.split()[0],
                       tokenizer=tokenizer, progress=False, objective=objective)
    rows[name] = {"params": model.num_parameters(), "pretrain_s": time.perf_counter() - t0,
                  "val_loss": summary["last_val"]["loss"]}
    print(f"{name}: pretrained in {rows[name]['pretrain_s']:.0f}s, validation loss "
          f"{summary['first_val']['loss']:.3f} → {summary['last_val']['loss']:.3f} "
          f"({'masked tokens' if objective else 'next tokens'})")

model = decoder.eval()
prompt = tokenizer.encode("call me when you")
with no_grad():
    new = generate(model, prompt, 12, temperature=0, seed=args.seed)
print(f"\ndecoder, greedy continuation of 'call me when you': {tokenizer.decode(prompt + list(new))!r}")
for sentence in ("call me when you [MASK] home", "you have won a [MASK] prize"):
    (fillers,) = fill_mask(encoder.eval(), tokenizer, sentence, top_k=3)
    print(f"encoder, fill-mask {sentence!r}: " + ", ".join(f"{t} {p:.2f}" for t, p in fillers))

finetune = FinetuneConfig(epochs=args.epochs, batch_size=16, lr=1e-3, min_lr=1e-4, warmup=10, seed=args.seed)
names = sorted({label for label, _ in examples})
# The same two architectures from random weights: what pretraining adds to each.
rows["decoder, no pretraining"] = {"params": decoder.num_parameters(), "pretrain_s": 0.0, "val_loss": float("nan")}
rows["encoder, no pretraining"] = {"params": encoder.num_parameters(), "pretrain_s": 0.0, "val_loss": float("nan")}
classifiers = {
    "decoder (CLM)": GPTClassifier.from_gpt(decoder.train(), 2, names, seed=args.seed),
    "encoder (MLM)": EncoderClassifier.from_encoder(encoder.train(), 2, names, seed=args.seed),
    "decoder, no pretraining": GPTClassifier(decoder.config, 2, names, seed=args.seed),
    "encoder, no pretraining": EncoderClassifier(encoder.config, 2, names, seed=args.seed),
}
for name, classifier in classifiers.items():
    print(f"finetuning the {name} as a classifier")
    t0 = time.perf_counter()
    train_classifier(classifier, tokenizer, train, val, finetune, progress=False)
    rows[name]["finetune_s"] = time.perf_counter() - t0
    report = classification_report(classifier, tokenizer, test)
    rows[name].update(accuracy=report["accuracy"], f1=report["f1"], majority=report["majority_baseline"])

can_do = {"decoder (CLM)": "generate text; classify (last token)", "encoder (MLM)": "fill [MASK]; classify ([CLS])",
          "decoder, no pretraining": "classify (last token)", "encoder, no pretraining": "classify ([CLS])"}
print(f"\nheld-out test set: {len(test)} messages, majority-class baseline {rows['encoder (MLM)']['majority']:.3f}")
print(f"| model | parameters | pretraining | val loss (own objective) | finetuning | test accuracy | spam F1 | can |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for name, r in rows.items():
    loss = "—" if r["val_loss"] != r["val_loss"] else f"{r['val_loss']:.3f}"
    print(f"| {name} | {r['params']:,} | {r['pretrain_s']:.0f}s | {loss} | {r['finetune_s']:.0f}s | "
          f"{r['accuracy']:.3f} | {r['f1']:.3f} | {can_do[name]} |")
