"""Instruction finetuning: teach a pretrained GPT to answer prompts in the Alpaca template.

The model and the loss are pretraining's — next-token cross-entropy — with two changes (see
``tinyllm.data.instructions``): the data are prompt + response + end-of-text sequences, and the
targets of prompt and padding positions are ``-100``, so only the response and its end token are
learned. A model that learned the prompt too would spend capacity on reproducing the fixed template;
masking it is what Alpaca-style finetunes do ("LLMs from scratch" ch. 7 shows it as an exercise).

Evaluation:
    response perplexity   e^(mean NLL of the reference response tokens + end token, given the prompt)
    generation            greedy, stopped at the end token: exact match, ROUGE-L F, corpus BLEU against the
                          reference outputs
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .. import backend
from ..autograd import no_grad
from ..data.instructions import (IGNORE_INDEX, collate_instructions, encode_instructions,
                                 encode_prompt, end_token)
from ..functional import cross_entropy


def instruction_loss(model, x, y):
    """Mean cross-entropy over the unmasked targets (response and end tokens) of a collated batch
    (plus a mixture of experts' balancing loss in training mode)."""
    hidden, balance = model.trunk(backend.asarray(x))                    # (B, L, C)
    logits = model.logits(hidden)                                        # (B, L, V)
    return balance.added_to(cross_entropy(logits, backend.asarray(y), ignore_index=IGNORE_INDEX))


def train_instructions(model, tokenizer, train_records, val_records=(), config=None,
                       template: str = "alpaca", progress=True, log=None) -> dict:
    """Finetune ``model`` on Alpaca records; after each epoch report the mean training loss and the
    validation response loss and perplexity. Only parameters with ``requires_grad`` are trained
    (apply LoRA first for the adapter variant). Returns ``fit``'s summary plus ``truncated``
    (examples cut)."""
    from .loop import FinetuneConfig, fit
    config = config or FinetuneConfig()
    block = model.config.block_size
    train = encode_instructions(train_records, tokenizer, block, template)
    val = encode_instructions(val_records, tokenizer, block, template) if val_records else None
    if progress and train.truncated:
        print(train.warning(block))
    pad = end_token(tokenizer, template).id

    def collate(indices):
        return collate_instructions([train.sequences[i] for i in indices],
                                    [train.prompt_lengths[i] for i in indices], pad)

    def loss_fn(indices):
        return instruction_loss(model, *collate(indices))

    def targets_of(indices):                                  # what instruction_loss's mean is over
        return int((collate(indices)[1] != IGNORE_INDEX).sum())

    def evaluate_fn():
        if val is None:
            return {}
        loss = _mean_response_nll(model, val, pad, config.batch_size)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}

    summary = fit(model, len(train), loss_fn, config, evaluate_fn, progress, log,
                  lengths=[len(s) for s in train.sequences], weight_fn=targets_of)
    summary["truncated"] = train.truncated
    return summary


def _mean_response_nll(model, encoded, pad_id, batch_size) -> float:
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with no_grad():
        order = np.argsort([len(s) for s in encoded.sequences], kind="stable")
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            x, y = collate_instructions([encoded.sequences[i] for i in rows],
                                        [encoded.prompt_lengths[i] for i in rows], pad_id)
            n = int((y != IGNORE_INDEX).sum())
            if n:
                total += instruction_loss(model, x, y).item() * n
                count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("no response token is left to score (every example was truncated away?)")
    return total / count


def response_perplexity(model, tokenizer, records, template: str = "alpaca",
                        batch_size: int = 16) -> dict:
    """Mean NLL per response token (end token included) given the prompt, and its perplexity."""
    encoded = encode_instructions(records, tokenizer, model.config.block_size, template)
    loss = _mean_response_nll(model, encoded, end_token(tokenizer, template).id, batch_size)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0))}


def generate_responses(model, tokenizer, records, max_new_tokens: int = 64,
                       template: str = "alpaca", batch_size: int = 16) -> list[str]:
    """Greedy responses to the records' prompts, each stopped at the end token (or
    ``max_new_tokens``)."""
    end = end_token(tokenizer, template).id
    prompts = [encode_prompt(tokenizer, record, template) for record in records]
    return [tokenizer.decode(ids).strip()
            for ids in greedy_completions(model, prompts, max_new_tokens, (end,), batch_size)]


def greedy_completions(model, prompts, max_new_tokens: int, stop_ids,
                       batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations (token ids) of prompts (token ids), each stopped at one of ``stop_ids``
    or after ``max_new_tokens``, batched by length.

    Prompts and answers share the model's context of ``block_size`` tokens: see the comment in the
    loop for what happens when a prompt leaves less room than ``max_new_tokens``."""
    from ..generate import generate
    block = model.config.block_size
    completions = [None] * len(prompts)
    # similar lengths share a batch
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size].tolist()
        # Prompt + answer must fit the context: a batch of long prompts gets fewer new tokens (but
        # at least min(max_new_tokens, 32)), and a prompt longer than what is left keeps its last
        # tokens.
        longest = max(len(prompts[i]) for i in rows)
        new_tokens = max(min(max_new_tokens, block - longest), min(max_new_tokens, 32, block - 1))
        batch = [prompts[i][-(block - new_tokens):] for i in rows]
        for row, ids in zip(rows, generate(model, batch, new_tokens, temperature=0.0,
                                           stop_ids=stop_ids)):
            completions[row] = ids
    return completions


def evaluate_instructions(model, tokenizer, records, max_new_tokens: int = 64,
                          template: str = "alpaca",
                          batch_size: int = 16, perplexity: bool = True) -> dict:
    """Response perplexity and, on greedy generations, exact match, ROUGE-L F and corpus BLEU (add-1
    smoothed above unigrams, so short answers still score); exact match also per "task" when records
    have one. Returns the scores and the ``responses``."""
    from ..metrics import bleu_report, exact_match, mean_rouge_l
    responses = generate_responses(model, tokenizer, records, max_new_tokens, template, batch_size)
    references = [r["output"] for r in records]
    result = {"examples": len(records),
              "exact_match": exact_match(responses, references),
              "rouge_l": mean_rouge_l(responses, references).f1,
              "bleu": bleu_report(responses, references, smoothing="add1")["bleu"]}
    if perplexity:
        scores = response_perplexity(model, tokenizer, records, template, batch_size)
        result.update({f"response_{k}": v for k, v in scores.items()})
    by_task = defaultdict(list)
    for record, response in zip(records, responses):
        if "task" in record:
            by_task[record["task"]].append((response, record["output"]))
    if by_task:
        result["exact_match_by_task"] = {task: exact_match(*zip(*pairs))
                                         for task, pairs in sorted(by_task.items())}
    result["responses"] = responses
    return result


def format_scores(scores: dict) -> str:
    parts = [f"exact match {scores['exact_match']:.3f}", f"ROUGE-L F {scores['rouge_l']:.3f}",
             f"BLEU {scores['bleu']:.3f}"]
    if "response_ppl" in scores:
        parts.insert(0, f"response perplexity {scores['response_ppl']:.2f}")
    text = " | ".join(parts) + f" ({scores['examples']} examples)"
    if "exact_match_by_task" in scores:
        text += "\n  exact match by task: " + ", ".join(f"{k} {v:.2f}"
                                                        for k,
                                                        v in scores["exact_match_by_task"].items())
    return text
