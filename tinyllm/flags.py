"""Config dataclass fields that carry their own command-line help.

A training config (``TrainConfig``, ``PPOConfig``, ``GRPOConfig``) declares a field with
``option(default, help, check)``; the CLI (``cli.common.add_config_flags``) turns every such field
into a flag of the same name (``rollout_batch`` → ``--rollout-batch``) with that default, help and
check, so the fields and the flags cannot drift apart. Fields declared the plain way get no flag.
``check``: "positive", "non_negative", "probability" ([0, 1)), "unit" ([0, 1]) or "group" (an
integer ≥ 2); by default an int field must be positive and a float field non-negative.
"""

from __future__ import annotations

import dataclasses

CHECKS = ("positive", "non_negative", "probability", "unit", "group")


def option(default, help: str, check: str | None = None):
    """A dataclass field with ``default`` whose flag says ``help`` and validates with ``check``."""
    if check is not None and check not in CHECKS:
        raise ValueError(f"option: unknown check {check!r}; choose one of {', '.join(CHECKS)}")
    return dataclasses.field(default=default, metadata={"help": help, "check": check})
