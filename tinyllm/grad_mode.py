"""Whether ops record a graph: ``no_grad``, ``set_grad_enabled``, ``is_grad_enabled``.

The switch is kept per thread, as PyTorch keeps its grad mode: a server thread that generates
under ``no_grad`` must not switch gradients off for another thread that is training at the same
time. (With one shared switch, two threads whose ``no_grad`` blocks overlap and end out of order
restore each other's saved value: gradients come back on inside one block, or stay off for good.)
A new thread starts with gradients on; ``tinyllm.parallel`` hands its worker threads the caller's
setting with ``set_grad_enabled``.
"""

from __future__ import annotations

import threading

_this_thread = threading.local()          # .enabled: this thread's switch (True until set)


def is_grad_enabled() -> bool:
    return getattr(_this_thread, "enabled", True)


class set_grad_enabled:
    """Context manager: ops inside record a graph if ``enabled`` (in the calling thread)."""

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)

    def __enter__(self):
        self._previous = is_grad_enabled()
        _this_thread.enabled = self.enabled

    def __exit__(self, *exc):
        _this_thread.enabled = self._previous


class no_grad(set_grad_enabled):
    """Context manager: ops inside build no graph (for evaluation and sampling)."""

    def __init__(self):
        super().__init__(False)
