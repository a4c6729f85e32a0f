"""Rollouts: the policy writes completions for a batch of prompts, through ``tinyllm.generate`` and
its KV cache.

    prompts (list of id lists, any lengths) ──generate (left-padded batch, KV cache, sampling)──► completions

PPO and GRPO learn from the policy's own samples, so sampling must be honest: temperature 1 and no
top-k or top-p filtering by default, or the log-probs the loss uses (those of the unfiltered
softmax) would not be the probabilities the tokens were drawn with. A completion that ended with the
end token keeps that token: the model must also learn *when to stop*, and the reward model scores
texts that end with it. ``finished`` says which ones did; the rest hit ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..generate import generate


@dataclass
class Rollout:
    """What a reward function sees: the prompt and completion as text, whether the completion ended
    with the end token (``finished``), and the record the prompt came from (with e.g. the reference
    answer)."""
    prompt: str
    completion: str
    finished: bool
    record: dict


def sample_completions(policy, prompts, max_new_tokens: int, end_id: int, temperature: float = 1.0,
                       top_k=None, top_p=None, seed=None):
    """(prompts, completions, finished): the prompts as the model saw them (one longer than
    ``block_size − max_new_tokens`` is cut from the left, so that every completion has room), one
    completion per prompt (a list of ids, ≥ 1 token, the end token included when it was produced),
    and whether each one ended with the end token. ``seed``: row b samples with ``seed + b`` (see
    ``tinyllm.generate``)."""
    room = policy.config.block_size - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                         f"model's block_size {policy.config.block_size}")
    prompts = [list(p)[-room:] for p in prompts]
    new = generate(policy, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, stop_ids=(end_id,), seed=seed, on_full="stop")
    # generate drops the stop token and stops that row: fewer than max_new_tokens tokens means it
    # stopped.
    finished = [len(ids) < max_new_tokens for ids in new]
    completions = [list(ids) + [end_id] if done else list(ids) for ids, done in zip(new, finished)]
    return prompts, completions, finished
