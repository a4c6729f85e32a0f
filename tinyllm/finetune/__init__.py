"""Finetuning a pretrained GPT: classification (``classify``), instruction following (``instruct``),
the shared training loop (``loop``), and loading any finetuned run (``load_finetuned``).

A finetuned run directory is a pretraining run directory plus keys in ``config.json``:
``"task": "classify"`` with ``"labels"``, or ``"task": "instruct"`` with ``"template"`` — the Alpaca
template as ``{"name": "alpaca", "prompt": "...### Instruction:\n{instruction}\n\n### Response:\n",
"separator": "\n\n"}``, the form ``tinyllm chat`` reads. Both also record their data settings, so
``tinyllm evaluate`` can rebuild the held-out split. A LoRA run also holds ``adapter.safetensors``
and ``adapter_config.json`` — the adapter alone, loadable on top of its base run.
"""

from __future__ import annotations

from pathlib import Path

from .classify import (GPTClassifier, classification_report, last_token_states, load_classifier,
                       predict, save_classifier, train_classifier)
from .instruct import (evaluate_instructions, generate_responses, response_perplexity,
                       train_instructions)
from .loop import FinetuneConfig, fit, freeze_except_last, optimizer_bytes

__all__ = [
    "GPTClassifier", "last_token_states", "train_classifier", "predict", "classification_report",
    "save_classifier", "load_classifier", "train_instructions", "response_perplexity",
    "generate_responses", "evaluate_instructions", "FinetuneConfig", "fit", "freeze_except_last",
    "optimizer_bytes", "load_finetuned",
]


def load_finetuned(path, prefer_adapter: bool = False):
    """(model, tokenizer, config) of any run: a classifier, an instruction-tuned or a plain GPT,
    from its merged weights (``model.safetensors``) or, when it has none or ``prefer_adapter``, from
    its base run + ``adapter.safetensors``. ``config`` is the run's config.json (or
    adapter_config.json) as a dict."""
    from ..checkpoint import load_config, load_pretrained
    from ..lora import ADAPTER_CONFIG, load_adapter, read_adapter_config
    run_dir = Path(path)
    has_adapter = (run_dir / ADAPTER_CONFIG).exists()
    if has_adapter and (prefer_adapter or not (run_dir / "model.safetensors").exists()):
        config = read_adapter_config(run_dir)
        classify = config.get("task") == "classify"
        base, tokenizer = load_pretrained(_resolve(config.get("base"), run_dir),
                                          allow_encoder=classify)
        if classify and getattr(base, "architecture", None) == "encoder":
            from .encoder_classify import EncoderClassifier
            base = EncoderClassifier.from_encoder(base, len(config["labels"]), config["labels"])
        elif classify:
            base = GPTClassifier.from_gpt(base, len(config["labels"]), config["labels"])
        load_adapter(base, run_dir)
        return base, tokenizer, config
    config = load_config(run_dir)
    if config.get("task") == "classify":
        model, tokenizer = load_classifier(run_dir)
    else:
        model, tokenizer = load_pretrained(run_dir)
    return model, tokenizer, config


def _resolve(base, adapter_dir: Path) -> Path:
    if base is None:
        raise ValueError(f"{adapter_dir / 'adapter_config.json'} names no base run")
    path = Path(base)
    if not path.exists() and (adapter_dir / path).exists():
        path = adapter_dir / path
    if not path.exists():
        raise FileNotFoundError(f"the adapter in '{adapter_dir}' needs its base run '{base}', "
                                "which does not exist")
    return path
