"""Alignment: teaching a model what people (or a checker) prefer, after it has learned to follow
instructions.

    logprobs.py  log π(completion | prompt) token by token (a fused gather of log-softmax), entropy,
    log σ,
                 packing prompt + completion batches, the frozen reference model
    kl.py        estimators of KL(π‖π_ref) from samples: k1, k2, k3
    data.py      preference pairs (JSONL / JSON, Alpaca records) and built-in generated pairs
    rollout.py   sampling completions with ``tinyllm.generate`` (KV cache, batched prompts)
    reward.py    the reward model: GPT + scalar head on the last token, Bradley-Terry loss
    dpo.py       Direct Preference Optimization: the policy is its own (implicit) reward model
    ppo.py       PPO for RLHF: value head, GAE, clipped surrogate and value losses, adaptive KL
    grpo.py      GRPO: groups of completions, group-relative advantages, clipped loss + k3 KL penalty
    tasks.py     verifiable problems and reward functions (correctness, format) for GRPO
    loop.py      what the PPO and GRPO loops share

The command line front is ``tinyllm align reward|dpo|ppo|grpo`` (``tinyllm.cli.align``).
"""

from .data import builtin_preferences, encode_preferences, read_preferences
from .dpo import dpo_loss, train_dpo
from .grpo import GRPOConfig, group_advantages, grpo_loss, train_grpo
from .kl import kl_k1, kl_k2, kl_k3
from .logprobs import (completion_log_probs, frozen_copy, gather_log_probs, log_sigmoid,
                       pack_completions, sequence_log_probs, token_entropy)
from .ppo import (PolicyWithValue, PPOConfig, gae, ppo_policy_loss, ppo_value_loss,
                  reward_model_scorer, train_ppo)
from .reward import (RewardModel, bradley_terry_loss, load_reward_model, save_reward_model,
                     train_reward_model)
from .rollout import Rollout, sample_completions
from .tasks import (RewardFunctions, correctness_reward, format_reward, task_accuracy,
                    verifiable_problems)

__all__ = [
    "gather_log_probs", "token_entropy", "log_sigmoid", "pack_completions", "completion_log_probs",
    "sequence_log_probs", "frozen_copy", "kl_k1", "kl_k2", "kl_k3", "read_preferences",
    "builtin_preferences",
    "encode_preferences", "Rollout", "sample_completions", "RewardModel", "bradley_terry_loss",
    "train_reward_model",
    "save_reward_model", "load_reward_model", "dpo_loss", "train_dpo", "PolicyWithValue",
    "PPOConfig", "gae",
    "ppo_policy_loss", "ppo_value_loss", "reward_model_scorer", "train_ppo", "GRPOConfig",
    "group_advantages",
    "grpo_loss", "train_grpo", "RewardFunctions", "correctness_reward", "format_reward",
    "task_accuracy", "verifiable_problems",
]
