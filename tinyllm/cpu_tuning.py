"""Two settings of the C libraries under NumPy that make a CPU training step faster. Nothing in
tinyllm's maths depends on them; ``tinyllm/__init__.py`` applies both at import (measured effect:
``benchmarks/cpu_tuning.md``).

1. ``OPENBLAS_THREAD_TIMEOUT``: after a matrix product, OpenBLAS's worker threads spin, waiting for
   the next one, for about 2^28 cycles (a tenth of a second) by default. While they spin they hold
   cores that other work needs. 2^16 cycles (about 25 µs) still covers back-to-back products
   (attention's batched ones), then lets the core go. OpenBLAS reads it once, when NumPy loads it:
   so ``import tinyllm`` must come before ``import numpy`` (the ``tinyllm`` command always does);
   set the variable yourself to choose another value.
2. ``keep_freed_memory()``: every forward and backward pass allocates and frees hundreds of MB of
   activations. By default glibc serves blocks over a few MB with a fresh ``mmap`` and unmaps them
   on ``free``, so the next step touches brand-new pages and the kernel zero-fills each 4 KiB page
   on first touch (a "minor page fault"). Raising glibc's mmap and trim thresholds keeps those
   blocks in the heap for reuse: no faults, the same peak memory. One arena for all threads, or the
   data-parallel worker threads' own arenas (64 MB heaps) would serve their large blocks from fresh
   mmaps again. ``TINYLLM_KEEP_FREED_MEMORY=0`` turns it off.

This module imports nothing but the standard library, so that it can run before NumPy is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys


def set_openblas_thread_timeout(cycles_log2: int = 16) -> None:
    """Make OpenBLAS's idle threads spin 2^cycles_log2 cycles,
    unless the environment already says."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(cycles_log2))


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.
    Linux/glibc only; elsewhere it does nothing and returns False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    largest = 2**31 - 1  # mallopt takes a C int
    return (bool(mallopt(M_MMAP_THRESHOLD, largest)) and bool(mallopt(M_TRIM_THRESHOLD, largest))
            and bool(mallopt(M_ARENA_MAX, 1)))


def apply() -> None:
    """Both settings (called by ``tinyllm/__init__.py`` before anything imports NumPy)."""
    set_openblas_thread_timeout()
    if os.environ.get("TINYLLM_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()
