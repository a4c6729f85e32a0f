"""Shared fixtures, and the switch that runs the whole suite on a GPU.

The suite runs unchanged on CuPy when ``TINYLLM_DEVICE=cuda`` is set: tests build inputs with NumPy, wrap
them in ``Tensor`` (which moves them to ``backend.xp``) and compare through ``.numpy()`` / ``to_numpy``.
When the GPU run is asked for but CuPy or a GPU is missing, every test is reported as skipped with the reason,
instead of every module failing to import (``tinyllm.backend`` raises at import in that case).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _missing_gpu_reason():
    """Why a requested GPU run cannot happen, or None when it can (or was not requested)."""
    if os.environ.get("TINYLLM_DEVICE") not in ("cuda", "gpu"):
        return None
    try:
        import cupy
    except ImportError:
        return "TINYLLM_DEVICE=cuda but CuPy is not installed (pip install -e '.[gpu]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when there is no driver
        return f"TINYLLM_DEVICE=cuda but no usable GPU was found ({e})"
    if count == 0:
        return "TINYLLM_DEVICE=cuda but no GPU is visible"
    return None


_SKIP_ALL_REASON = _missing_gpu_reason()
if _SKIP_ALL_REASON is not None:
    # Let `import tinyllm` succeed (on the CPU) so that collection works; every test is then skipped below.
    del os.environ["TINYLLM_DEVICE"]

import tinyllm  # noqa: E402  (after the environment is settled)


def pytest_report_header(config):
    return f"tinyllm device: {tinyllm.backend.device}" + (f" (skipping all: {_SKIP_ALL_REASON})" if _SKIP_ALL_REASON else "")


def pytest_collection_modifyitems(config, items):
    if _SKIP_ALL_REASON is None:
        return
    skip = pytest.mark.skip(reason=_SKIP_ALL_REASON)
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def float64():
    """Run the test with float64 as the default dtype (for finite-difference gradient checks)."""
    with tinyllm.default_dtype("float64"):
        yield


@pytest.fixture
def rng():
    """A NumPy generator seeded with 0: inputs are made on the host, then wrapped in Tensor."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def memorise():
    """``memorise(model, sequences, steps=60)``: train ``model`` (AdamW, lr 2e-2) on ``sequences`` (lists of
    ids, right-padded) until it repeats them greedily, and return it in eval mode: a real model that knows
    its lines, for tests of what the serving and safety code does with its text."""
    from tinyllm import Tensor
    from tinyllm.optim import AdamW

    def train(model, sequences, steps=60):
        optimizer = AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
        width = max(len(s) for s in sequences)
        x = np.array([s[:-1] + [s[-1]] * (width - len(s)) for s in sequences])
        y = np.array([s[1:] + [-100] * (width - len(s)) for s in sequences])
        for _ in range(steps):
            _, loss = model(Tensor(x), Tensor(y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model.eval()
    return train


@pytest.fixture
def run_cli():
    """``run_cli(*args)``: ``python -m tinyllm ARGS`` in a subprocess, from this checkout, as a user runs it
    (what a user sees of a bad command: one line on stderr, no traceback)."""
    def run(*args):
        environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        return subprocess.run([sys.executable, "-m", "tinyllm", *map(str, args)], capture_output=True, text=True,
                              env=environment, timeout=300)
    return run
