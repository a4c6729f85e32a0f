"""Data parallelism over CPU threads: one training batch split into one block of rows per core.

A NumPy training step is mostly matrix products, and OpenBLAS could run each of them on every core.
But a step is hundreds of products and elementwise passes, and splitting *each* of them over the
cores makes the cores meet hundreds of times per step. Splitting the *batch* instead makes them meet
once: each thread runs a whole forward and backward pass on its block of rows, with single-threaded
BLAS, and the blocks' gradients are added at the end. This is PyTorch's DistributedDataParallel,
with threads that share one copy of the weights (NumPy releases Python's GIL inside its loops, so
the threads really run side by side).

Two things make the threads safe and the result repeatable:

- each block's backward pass puts the parameters' gradients into its own dict
  (``Tensor.backward(..., leaf_grads=...)``) instead of adding them to ``.grad``, so no parameter is
  written by two threads at once;
- the dicts are added in block order (``add_leaf_grads``): floating-point addition is not
  associative, and a fixed order gives the same bits on every run.

Nothing in the maths (``autograd``, ``functional``, ``model``) knows about threads; ``train`` calls
``data_parallel``. On a GPU, with one thread, or when NumPy's BLAS is not an OpenBLAS whose thread
count can be set, ``data_parallel`` runs the batch whole.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from . import backend, grad_mode


def default_threads(processes_here: int = 1) -> int:
    """TINYLLM_NUM_THREADS, else OMP_NUM_THREADS / OPENBLAS_NUM_THREADS (so "one thread" means one
    thread for BLAS and for us alike), else the CPUs this process may run on: all of them, or its
    share when it is one of ``processes_here`` processes of a job on this machine that were not each
    given their own cores (``tinyllm.distributed``)."""
    for name in ("TINYLLM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    cpus = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return max(1, allowed // processes_here) if allowed == cpus else allowed


num_threads = default_threads()
_pool = None
# inside data_parallel: a nested call runs whole (every core has a block)
_running = False
# (set_num_threads, get_num_threads) of NumPy's OpenBLAS, False if none
_openblas = None


def data_parallel(fn, *arrays) -> list:
    """Call ``fn(*blocks)`` on matching row blocks (axis 0) of ``arrays``, one block per CPU thread,
    each thread with single-threaded BLAS; returns the calls' results in row order
    (``[fn(*arrays)]`` when it runs the batch whole: see the module docstring)."""
    global _openblas, _running
    threads = min(num_threads, len(arrays[0]))
    if backend.xp is not np or threads < 2 or _running:
        return [fn(*arrays)]
    if _openblas is None:
        _openblas = _openblas_thread_functions() or False
    if not _openblas:
        return [fn(*arrays)]
    set_blas_threads, get_blas_threads = _openblas
    blas_threads = get_blas_threads()
    set_blas_threads(1)
    _running = True
    try:
        return _run_on_threads(fn, _row_blocks(arrays, threads))
    finally:
        _running = False
        set_blas_threads(blas_threads)


def for_each(fn, items, sizes) -> None:
    """Call ``fn(item)`` for every item, the items shared out over the CPU threads in groups of
    about equal total ``sizes`` (largest first, each to the least loaded thread). For independent
    work on many arrays that is limited by memory bandwidth, which one core cannot use up: the
    optimizer's update of each parameter (``optim.AdamW``). Each item is done by one thread, so the
    results do not depend on the grouping. Runs in order on this thread where ``data_parallel``
    would run the batch whole."""
    threads = min(num_threads, len(items))
    if backend.xp is not np or threads < 2 or _running:
        for item in items:
            fn(item)
        return
    groups, loads = [[] for _ in range(threads)], [0] * threads
    for i in sorted(range(len(items)), key=lambda i: -sizes[i]):
        least = loads.index(min(loads))
        groups[least].append(items[i])
        loads[least] += sizes[i]
    _run_on_threads(lambda group: [fn(item) for item in group], [[group] for group in groups])


def set_num_threads(count: int) -> None:
    """Use ``count`` threads from now on: ``data_parallel``'s blocks, and OpenBLAS outside them."""
    global num_threads, _openblas
    num_threads = count
    if _openblas is None:
        _openblas = _openblas_thread_functions() or False
    if _openblas:
        _openblas[0](count)


def _row_blocks(arrays, count):
    rows = len(arrays[0])
    bounds = [rows * i // count for i in range(count + 1)]
    return [[a[lo:hi] for a in arrays] for lo, hi in zip(bounds, bounds[1:])]


def _run_on_threads(fn, blocks) -> list:
    """fn(*block) for every block, the first on this thread (instead of waiting), the others on the
    pool; returns the results in block order. Waits for all of them even when one fails, then
    re-raises."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="tinyllm")
    grad = grad_mode.is_grad_enabled()                    # no_grad is per thread: pass it on

    def on_worker(*block):
        with grad_mode.set_grad_enabled(grad):
            return fn(*block)

    futures = [_pool.submit(on_worker, *block) for block in blocks[1:]]
    try:
        first = fn(*blocks[0])
    finally:
        wait(futures)
    return [first] + [f.result() for f in futures]


def add_leaf_grads(*collected: dict) -> None:
    """Add the leaf gradients that blocks' backward passes collected (``Tensor.backward(...,
    leaf_grads=dict)``, one dict per block: ``{id(leaf): [leaf, gradient]}``) into the leaves'
    ``.grad``, summing the dicts in the order given."""
    totals = {}
    for leaf_grads in collected:
        for key, (leaf, grad) in leaf_grads.items():
            if key in totals:
                totals[key][1] = totals[key][1] + grad
            else:
                totals[key] = [leaf, grad]
    for leaf, grad in totals.values():
        leaf._accumulate(grad)


def _openblas_thread_functions():
    """OpenBLAS's set/get_num_threads, found among the libraries this process has loaded (the one
    NumPy's wheel bundles is ``scipy_openblas`` with a ``64_`` suffix); None for another BLAS or off
    Linux."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted(
                {line.split(maxsplit=5)[-1].strip() for line in maps if "openblas" in line.lower()}
            )
    except OSError:
        return None
    names = [(prefix, suffix) for prefix in ("scipy_openblas", "openblas")
             for suffix in ("64_", "")]
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in names:
            set_threads = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            get_threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if set_threads is not None and get_threads is not None:
                set_threads.argtypes, get_threads.restype = [ctypes.c_int], ctypes.c_int
                return set_threads, get_threads
    return None
