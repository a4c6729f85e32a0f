"""The one place that chooses the array library.

Everything in tinyllm does array math through ``xp``, which is NumPy by default and CuPy on a GPU. Pick
the device once, before building models::

    import tinyllm
    tinyllm.set_device("cuda")        # or set TINYLLM_DEVICE=cuda in the environment

Other modules must read the module attribute at call time (``backend.xp``), never ``from
tinyllm.backend import xp``, so that ``set_device`` takes effect everywhere.

The default float dtype is float32; gradient checks switch to float64 with ``set_dtype("float64")`` or
the ``default_dtype("float64")`` context manager.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

xp = np  # the array module: numpy or cupy
device = "cpu"
dtype = np.dtype(np.float32)  # default float dtype for new tensors and parameters


def set_device(name: str) -> None:
    """Use ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy) for all array math from now on."""
    global xp, device
    if name == "cpu":
        xp, device = np, "cpu"
        return
    if name not in ("cuda", "gpu"):
        raise ValueError(f"unknown device {name!r}; expected 'cpu' or 'cuda'")
    try:
        import cupy  # the only import of cupy in tinyllm
    except ImportError as e:
        raise RuntimeError(
            "device 'cuda' needs CuPy, which is not installed; install it with "
            "pip install -e '.[gpu]' (or the cupy wheel matching your CUDA version)"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises its own CUDARuntimeError when no driver is present
        raise RuntimeError(f"device 'cuda' was asked for but no usable GPU was found ({e})") from e
    if count == 0:
        raise RuntimeError("device 'cuda' was asked for but no GPU is visible")
    xp, device = cupy, "cuda"


def set_dtype(name) -> None:
    """Set the default float dtype (``"float32"`` or ``"float64"``)."""
    global dtype
    new = np.dtype(name)
    if new not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {new}")
    dtype = new


@contextlib.contextmanager
def default_dtype(name):
    """Temporarily use another default float dtype: ``with default_dtype("float64"): ...``."""
    old = dtype
    set_dtype(name)
    try:
        yield
    finally:
        set_dtype(old)


def to_numpy(a) -> np.ndarray:
    """Return a NumPy array for an ``xp`` array (copies from the GPU when needed)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return np.asarray(a)


def asarray(a, dtype=None):
    """An ``xp`` array from anything array-like (NumPy arrays are copied to the GPU when on cuda)."""
    return xp.asarray(a, dtype=dtype)


def rng(seed=None):
    """A seeded random generator on the current device (``xp.random.default_rng``)."""
    return xp.random.default_rng(seed)


_global_rng = None


def manual_seed(seed: int) -> None:
    """Seed the global generator that dropout and sampling use when given none of their own."""
    global _global_rng
    _global_rng = rng(seed)


def global_rng():
    """The global random generator (seeded with 0 until ``manual_seed`` is called)."""
    global _global_rng
    if _global_rng is None or (device == "cuda") != (not isinstance(_global_rng, np.random.Generator)):
        _global_rng = rng(0)
    return _global_rng


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    Every forward and backward pass allocates and frees hundreds of MB of activations. By default glibc
    serves blocks over a few MB with a fresh ``mmap`` and unmaps them on ``free``, so the next step touches
    brand-new pages and the kernel zero-fills each 4 KiB page on first touch (a "minor page fault"). On the
    6-layer, 384-wide benchmark model that was ~65,000 faults and ~0.2 s of kernel time per training step
    (15% of it). Raising the mmap and trim thresholds keeps those blocks in the heap, where the next step
    reuses them: no faults, same peak memory. Linux/glibc only; elsewhere it does nothing and returns False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    largest = 2**31 - 1  # mallopt takes a C int
    return bool(mallopt(M_MMAP_THRESHOLD, largest)) and bool(mallopt(M_TRIM_THRESHOLD, largest))


# ------------------------------------------------------------------------------------- CPU threads

def _default_threads() -> int:
    """TINYLLM_NUM_THREADS, else OMP_NUM_THREADS / OPENBLAS_NUM_THREADS (so "one thread" means one thread
    for BLAS and for us alike), else the CPUs this process may run on."""
    for name in ("TINYLLM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


num_threads = _default_threads()
min_parallel_size = 1 << 16   # elements: below this, handing work to threads costs more than it saves
_pool = None


def parallel_rows(fn, *arrays) -> list:
    """Call ``fn(*blocks)`` on matching blocks of rows (axis 0) of ``arrays``, one block per CPU thread;
    returns the calls' results in row order.

    BLAS already runs matmuls on every core, but a NumPy ufunc or reduction (exp, tanh, +=, max, sum …) runs
    on one, so without this the elementwise half of a training step would leave the other cores idle. NumPy
    releases the GIL inside ufuncs and reductions, so plain Python threads working on disjoint row blocks do
    run at the same time. ``fn`` must only read its blocks and write into them (or return per-block results,
    such as partial sums, for the caller to add up). Rows never see each other, so row-wise results are the
    same bits as ``fn(*arrays)``; sums over rows, added up from per-block parts, can differ in the last bit
    (floating-point addition is not associative). On the GPU, with one thread, or for small arrays, it is just ``fn(*arrays)``.
    """
    global _pool
    rows = arrays[0].shape[0] if arrays[0].ndim else 0
    threads = min(num_threads, rows)
    if xp is not np or threads < 2 or arrays[0].size < min_parallel_size:
        return [fn(*arrays)]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="tinyllm")
    bounds = [rows * i // threads for i in range(threads + 1)]
    blocks = [[a[lo:hi] for a in arrays] for lo, hi in zip(bounds, bounds[1:])]
    futures = [_pool.submit(fn, *block) for block in blocks[1:]]
    first = fn(*blocks[0])                 # this thread takes the first block instead of waiting
    return [first] + [f.result() for f in futures]


if os.environ.get("TINYLLM_KEEP_FREED_MEMORY", "1") != "0":
    keep_freed_memory()

if os.environ.get("TINYLLM_DEVICE"):
    set_device(os.environ["TINYLLM_DEVICE"])
