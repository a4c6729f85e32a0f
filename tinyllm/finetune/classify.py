"""Classification finetuning: a pretrained GPT reads a text, a small head reads its last hidden
state.

    ids (B, T), right-padded ──GPT──► hidden (B, T, C) ──last real position──► (B, C)
                                                                  ──classifier──► (B, K)

Why the last token: in a causal model, position t has attended to positions 0…t and nothing after,
so the last real token is the only one whose hidden state has seen the whole text. Why right padding
is harmless: padding sits after every real token, and causal attention never lets a position look
ahead, so no real position (and so no logit we use) depends on the padding, whatever its ids. Each
row picks its own last real position, ``lengths[b] - 1``, rather than the padded row's end.

The head is a new ``Linear(C, K)`` (``classifier``); the GPT's own weights start from pretraining.
Training can update everything, only the last N blocks + ``ln_f`` + head (``freeze_except_last``),
or LoRA adapters + head (``tinyllm.lora``). ``GPTClassifier`` is a ``GPT`` with one more layer, so
its weights are the GPT's names (``blocks.0.attn.qkv.weight``...) plus ``classifier.weight`` /
``classifier.bias``.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import Tensor, array_of, fused_op, no_grad
from ..model import GPT, GPTConfig
from ..nn import Linear, init_rng


def last_token_states_forward(hidden, lengths):
    """out[b] = hidden[b, lengths[b] - 1]: the hidden state of each row's last real token.
    hidden (B, T, C), lengths (B,) integers in 1…T, out (B, C)."""
    rows = backend.xp.arange(hidden.shape[0])
    positions = lengths - 1                                   # (B,)
    return hidden[rows, positions], (hidden.shape, rows, positions)


def last_token_states_backward(dout, cache, needs=(True, False)):
    """A gather: each output row is a copy of one input row, so dhidden is zero everywhere except
    at (b, lengths[b] - 1), where it is dout[b]. Each (b, t) is picked at most once, so the scatter
    is a plain assignment (no add.at). The lengths get no gradient."""
    hidden_shape, rows, positions = cache
    dhidden = backend.xp.zeros(hidden_shape, dtype=dout.dtype)   # (B, T, C)
    dhidden[rows, positions] = dout                              # undoes out[b] = hidden[b, t_b]
    return dhidden, None


def last_token_states(hidden: Tensor, lengths) -> Tensor:
    """Each row's last real hidden state (``last_token_states_forward``); saves only the
    positions."""
    if hidden.ndim != 3:
        raise ValueError("last_token_states: hidden must be (batch, time, channels), got shape "
                         f"{hidden.shape}")
    batch, time, _ = hidden.shape
    lengths = backend.xp.asarray(array_of(lengths))
    if lengths.shape != (batch,) or lengths.dtype.kind not in "iu":
        raise ValueError(f"last_token_states: lengths must be {batch} integers (one per row), got "
                         f"{lengths.dtype} of shape {lengths.shape}")
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > time):
        raise ValueError(f"last_token_states: every length must be in 1…{time}, got "
                         f"{backend.to_numpy(lengths).tolist()}")
    out, cache = last_token_states_forward(hidden.data, lengths)
    return fused_op(last_token_states_backward, out, cache, hidden, lengths)


class GPTClassifier(GPT):
    """A GPT whose output is ``num_classes`` scores per text, read off the last real token.

    ``label_names``: one name per class index (kept in the run's config.json).
    """

    def __init__(self, config: GPTConfig, num_classes: int, label_names=None, seed: int = 0):
        super().__init__(config, seed)
        self._add_head(num_classes, label_names, seed)

    @classmethod
    def from_gpt(cls, gpt: GPT, num_classes: int, label_names=None,
                 seed: int = 0) -> "GPTClassifier":
        """A classifier that shares ``gpt``'s parameters (no copy) and adds a fresh head."""
        model = cls.__new__(cls)
        model.__dict__.update(vars(gpt))
        model._add_head(num_classes, label_names, seed)
        return model

    def _add_head(self, num_classes, label_names, seed):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes!r}")
        names = ([str(i) for i in range(num_classes)] if label_names is None
                 else [str(n) for n in label_names])
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} label names given for {num_classes} classes")
        self.label_names = names
        # Small weights: the first predictions are near uniform, so the first gradients are not
        # dominated by a random head's confident mistakes.
        self.classifier = Linear(self.config.n_embd, num_classes, True, 0.02, init_rng(seed + 1))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def forward(self, idx, lengths=None, labels=None):
        """idx (B, T) right-padded ids, lengths (B,) real tokens per row (default: all T) →
        (logits (B, K), mean cross-entropy against ``labels`` (B,) — plus a mixture of experts'
        balancing loss in training mode — or None)."""
        idx = backend.xp.asarray(array_of(idx))
        if lengths is None:
            lengths = backend.xp.full(idx.shape[0], idx.shape[1])
        hidden, balance = self.trunk(idx)          # (B, T, C); no mask needed (see module doc)
        logits = self.classifier(last_token_states(hidden, lengths))   # (B, K)
        loss = None if labels is None else balance.added_to(
            F.cross_entropy(logits, backend.xp.asarray(labels)))
        return logits, loss


# ------------------------------------------------------------------------------------------ batches

def encode_texts(tokenizer, texts, block_size: int):
    """Token ids of each text, cut to its first ``block_size`` tokens; returns (ids lists, number
    cut)."""
    encoded, cut = [], 0
    for text in texts:
        ids = (tokenizer.encode(text, allowed_special="none") if _has_specials(tokenizer)
               else tokenizer.encode(text))
        if not ids:
            raise ValueError(f"the text {text!r} encodes to no tokens")
        if len(ids) > block_size:
            ids, cut = ids[:block_size], cut + 1
        encoded.append(ids)
    return encoded, cut


def _has_specials(tokenizer) -> bool:
    return bool(getattr(tokenizer, "special_tokens", None))


def pad_batch(sequences, pad_id: int = 0):
    """Right-pad token lists to the longest one: (ids (B, T) int64, lengths (B,) int64)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    ids = np.full((len(sequences), int(lengths.max())), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
    return ids, lengths


def predict_ids(model: GPTClassifier, sequences, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N, K) for token-id lists, in eval mode, batched (similar lengths
    together)."""
    order = np.argsort([len(s) for s in sequences], kind="stable")   # less padding per batch
    probs = np.empty((len(sequences), model.num_classes))
    was_training = model.training
    model.eval()
    with no_grad():
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            ids, lengths = pad_batch([sequences[i] for i in rows])
            logits, _ = model(backend.asarray(ids), backend.asarray(lengths))
            z = backend.to_numpy(logits.data).astype(np.float64)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            probs[rows] = z / z.sum(axis=1, keepdims=True)
    model.train(was_training)
    return probs


def predict(model: GPTClassifier, tokenizer, texts, batch_size: int = 32):
    """(labels, probabilities): the most likely label name of each text, and all class
    probabilities (N, K)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    sequences, _ = encode_texts(tokenizer, texts, model.config.block_size)
    probs = predict_ids(model, sequences, batch_size)
    return [model.label_names[i] for i in probs.argmax(axis=1)], probs


def accuracy_of(model, sequences, labels, batch_size: int = 32) -> float:
    if not sequences:
        return float("nan")
    predicted = predict_ids(model, sequences, batch_size).argmax(axis=1)
    return float((predicted == np.asarray(labels)).mean())


# ----------------------------------------------------------------------------------------- training

class LabeledData:
    """Examples ``(label, text)`` encoded once: token-id lists and class indices (``label_names``
    order)."""

    def __init__(self, examples, tokenizer, label_names, block_size: int):
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({label for label, _ in examples} - set(index))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classifier's classes "
                             f"{list(label_names)}")
        self.sequences, self.truncated = encode_texts(tokenizer, [text for _, text in examples],
                                                      block_size)
        self.labels = np.array([index[label] for label, _ in examples], dtype=np.int64)

    def __len__(self):
        return len(self.labels)

    def batch(self, indices):
        ids, lengths = pad_batch([self.sequences[i] for i in indices])
        return backend.asarray(ids), backend.asarray(lengths), backend.asarray(self.labels[indices])


def train_classifier(model: GPTClassifier, tokenizer, train, val, config=None, progress=True,
                     log=None, eval_train_examples: int = 256) -> dict:
    """Finetune ``model`` on ``train`` examples ``(label, text)``; after every epoch report the mean
    training loss and the accuracy on ``val`` and on (up to ``eval_train_examples`` of) ``train``,
    both measured in eval mode (no dropout). Only parameters with ``requires_grad`` are trained:
    freeze first (``freeze_except_last``) or ``apply_lora(model, trainable=("classifier",))`` for
    the cheaper variants. Returns ``fit``'s summary plus the final ``train_acc`` and ``val_acc``."""
    from .loop import FinetuneConfig, fit
    config = config or FinetuneConfig()
    block = model.config.block_size
    train_data = LabeledData(train, tokenizer, model.label_names, block)
    val_data = LabeledData(val, tokenizer, model.label_names, block) if val else None
    if progress and train_data.truncated:
        print(f"note: {train_data.truncated} of {len(train_data)} training texts were longer than "
              f"block_size {block} and were cut to their first tokens")
    probe = np.random.default_rng(config.seed).permutation(len(train_data))[:eval_train_examples]

    def loss_fn(indices):
        ids, lengths, labels = train_data.batch(indices)
        return model(ids, lengths, labels)[1]

    def evaluate_fn():
        probe_sequences = [train_data.sequences[i] for i in probe]
        scores = {"train_acc": accuracy_of(model, probe_sequences, train_data.labels[probe])}
        if val_data is not None:
            scores["val_acc"] = accuracy_of(model, val_data.sequences, val_data.labels)
        return scores

    summary = fit(model, len(train_data), loss_fn, config, evaluate_fn, progress, log,
                  lengths=[len(s) for s in train_data.sequences])
    if summary["history"]:                         # none when Ctrl-C stopped the first epoch
        summary.update({k: v for k, v in summary["history"][-1].items() if k.endswith("_acc")})
    return summary


def classification_report(model, tokenizer, examples, batch_size: int = 32) -> dict:
    """Accuracy, precision/recall/F1 (binary for the last class when there are two, else
    macro-averaged), the confusion matrix (rows: true class, columns: predicted, in ``label_names``
    order) and the majority-class baseline on ``examples`` ``(label, text)``."""
    from ..metrics import accuracy, confusion_matrix, precision_recall_f1
    names = model.label_names
    truth = [label for label, _ in examples]
    predicted, _ = predict(model, tokenizer, [text for _, text in examples], batch_size)
    binary = len(names) == 2
    scores = precision_recall_f1(truth, predicted, positive=names[-1],
                                 average="binary" if binary else "macro", classes=names)
    majority = max(truth.count(name) for name in names) / len(truth)
    return {"accuracy": accuracy(truth, predicted), "precision": scores.precision,
            "recall": scores.recall, "f1": scores.f1,
            "average": f"binary (positive: {names[-1]})" if binary else "macro",
            "confusion": confusion_matrix(truth, predicted, names).tolist(), "labels": names,
            "majority_baseline": majority, "examples": len(truth)}


def format_report(report: dict) -> str:
    """The classification report as text, confusion matrix included."""
    names = report["labels"]
    width = max(8, *(len(n) for n in names))
    lines = [f"accuracy {report['accuracy']:.4f} (majority-class baseline "
             f"{report['majority_baseline']:.4f}) on {report['examples']} examples",
             f"precision {report['precision']:.4f} | recall {report['recall']:.4f} | "
             f"F1 {report['f1']:.4f} [{report['average']}]",
             "confusion matrix (rows: true, columns: predicted):",
             " " * (width + 2) + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, report["confusion"]):
        lines.append(name.rjust(width) + "  " + " ".join(str(c).rjust(width) for c in row))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- files

def save_classifier(run_dir, model: GPTClassifier, tokenizer=None,
                    extra_config: dict | None = None) -> None:
    """A run directory with the whole classifier (GPT + head), and ``"task": "classify"`` and the
    label names in config.json. A LoRA model must be merged first (``merge_lora``), or its adapter
    saved alone with ``tinyllm.lora.save_adapter``."""
    from ..checkpoint import save_model
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("save_classifier: the model still has LoRA layers; merge_lora(model) "
                         "first, or save_adapter")
    save_model(run_dir, model, tokenizer, extra_config={**(extra_config or {}), "task": "classify",
                                                        "labels": model.label_names})


def load_classifier(path):
    """(classifier, tokenizer) from a run directory written by ``save_classifier``."""
    from ..checkpoint import (TOKENIZER, _run_dir, load_config, load_tokenizer_of,
                              load_weights_as_saved)
    run_dir = _run_dir(path)
    config = load_config(run_dir)
    if config.get("task") != "classify" or "labels" not in config:
        raise ValueError(f"'{run_dir}' is not a classifier run (its config.json has task "
                         f"{config.get('task')!r}); finetune one with `tinyllm finetune classify`")
    if config.get("architecture") == "encoder":
        from ..encoder import EncoderConfig
        from .encoder_classify import EncoderClassifier
        model = EncoderClassifier(EncoderConfig.from_dict(config["model"]), len(config["labels"]),
                                  config["labels"])
    else:
        model = GPTClassifier(GPTConfig.from_dict(config["model"]), len(config["labels"]),
                              config["labels"])
    load_weights_as_saved(model, run_dir, config)
    has_tokenizer = (run_dir / config.get("tokenizer", TOKENIZER)).exists()
    tokenizer = load_tokenizer_of(run_dir) if has_tokenizer else None
    return model, tokenizer
