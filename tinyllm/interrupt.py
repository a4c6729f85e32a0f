"""Ctrl-C that keeps the work: a training loop stops at the end of a step, saves, then stops.

Python turns Ctrl-C (SIGINT) into a ``KeyboardInterrupt`` raised wherever the main thread happens to
be: in the middle of a forward pass, halfway through AdamW's update of the weights, or between
writing a checkpoint's weights and its optimizer state. A checkpoint saved from there would hold a
state that no step of the run ever had. So while a loop runs inside ``with StopRequests() as stop:``

* the first Ctrl-C only sets ``stop.requested``; the loop finishes its step, saves and stops
  (raising ``TrainingInterrupted``, a KeyboardInterrupt whose message names the checkpoint);
* a second Ctrl-C stops at once, as Ctrl-C usually does (the last checkpoint on disk is kept);
* inside ``with stop.deferred():`` (around writing a checkpoint's files) every Ctrl-C waits until
  the block is done, so a checkpoint is always whole: the new one, or the previous one untouched.

Signals reach only the main thread, so elsewhere (a loop run from a worker thread) Ctrl-C keeps its
usual meaning, and so does a SIGINT that the process was told to ignore (``nohup``).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training loop after ``step`` steps; the message says where the run was
    saved."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class StopRequests:
    """Turns Ctrl-C into a request (``requested``) that a loop answers at a safe point (see the
    module)."""

    def __init__(self):
        self.requested = False
        self._saving = False
        self._stop_now = False
        self._previous = None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_ctrl_c)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_ctrl_c(self, signum, frame) -> None:
        if self.requested and not self._saving:
            raise KeyboardInterrupt
        # a second Ctrl-C while saving: stop when the save is done
        self._stop_now = self.requested
        self.requested = True
        # os.write, not print: a signal handler may run in the middle of another print to stderr.
        os.write(2, b"\nCtrl-C: stopping after this step to save the run (Ctrl-C again to stop at "
                    b"once)\n")

    @contextmanager
    def deferred(self):
        """Ctrl-C waits while the block runs (writing a checkpoint: all of its files, or none)."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._stop_now:
            raise KeyboardInterrupt
