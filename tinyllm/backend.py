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
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

xp = np  # the array module: numpy or cupy
device = "cpu"
dtype = np.dtype(np.float32)  # default float dtype for new tensors and parameters


DEVICES = ("cpu", "cuda", "strict")


class DeviceError(RuntimeError):
    """The device asked for cannot be used here; the message says why and what to do."""


def set_device(name: str) -> None:
    """Use ``"cpu"`` (NumPy), ``"cuda"`` (CuPy on an NVIDIA GPU) or ``"strict"`` (NumPy under CuPy's
    rules, for testing the GPU path on a CPU: see ``tinyllm.strict``) for all array math from now on."""
    global xp, device, device_error
    device_error = None
    if name == "cpu":
        xp, device = np, "cpu"
    elif name == "strict":
        from . import strict
        xp, device = strict.xp, "strict"
    elif name in ("cuda", "gpu"):
        xp, device = _cupy(), "cuda"
    else:
        raise DeviceError(f"unknown device {name!r}; the devices are {', '.join(DEVICES)}")


def _cupy():
    """The cupy module, once it is known to see a GPU."""
    try:
        import cupy  # the only import of cupy in tinyllm
    except ImportError:
        raise DeviceError("device 'cuda' needs CuPy, which is not installed: pip install -e '.[gpu]' "
                          "(or the cupy-cuda12x / cupy-cuda13x wheel that matches your CUDA)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy raises its own CUDARuntimeError when no driver is present
        raise DeviceError(f"device 'cuda': CuPy is installed but finds no usable GPU "
                          f"({type(e).__name__}: {e}); check nvidia-smi and the CUDA driver") from None
    if count == 0:
        raise DeviceError("device 'cuda': CuPy is installed but no GPU is visible (CUDA_VISIBLE_DEVICES?)")
    return cupy


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
    """Return a NumPy array for an ``xp`` array: the one explicit way to the host (a copy from the GPU)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # cupy.ndarray, strict.ndarray
        return a.get()
    return np.asarray(a)


def host_min_max(a) -> tuple:
    """(min, max) of a non-empty array as Python numbers: free for a host array, one read of the device
    (both values together) for a device array."""
    if isinstance(a, np.ndarray):
        return a.min().item(), a.max().item()
    return tuple(to_numpy(xp.stack([a.min(), a.max()])).tolist())


def asarray(a, dtype=None):
    """An ``xp`` array from anything array-like (NumPy arrays are copied to the GPU when on cuda)."""
    return xp.asarray(a, dtype=dtype)


def rng(seed=None):
    """A seeded random generator on the current device (``xp.random.default_rng``)."""
    return xp.random.default_rng(seed)


_global_rng = None
_seed_stream = None


def manual_seed(seed: int) -> None:
    """Seed the global generator that dropout and sampling use when given none of their own, and the
    host seed stream."""
    global _global_rng, _seed_stream
    _global_rng = rng(seed)
    _seed_stream = np.random.default_rng(seed)


def seed_stream() -> np.random.Generator:
    """A NumPy generator on the host (seeded by ``manual_seed``) that hands out seeds for device generators,
    such as each block's dropout generator in a training step. Its state is a small host object on every
    device, so a run can save it and resume exactly, on a GPU too."""
    global _seed_stream
    if _seed_stream is None:
        _seed_stream = np.random.default_rng(0)
    return _seed_stream


_this_thread = threading.local()   # .rng: a generator that global_rng() returns in this thread only


def global_rng():
    """The global random generator (seeded with 0 until ``manual_seed`` is called), or the one that
    ``thread_rng`` set for the calling thread."""
    global _global_rng
    own = getattr(_this_thread, "rng", None)
    if own is not None:
        return own
    if _global_rng is None or (device != "cpu") == isinstance(_global_rng, np.random.Generator):
        _global_rng = rng(0)
    return _global_rng


@contextlib.contextmanager
def thread_rng(generator):
    """Within this block, ``global_rng()`` called from this thread returns ``generator``: threads that run
    micro-batches side by side (``data_parallel``) each draw dropout masks from their own seeded generator,
    so a run does not depend on which thread got there first."""
    previous, _this_thread.rng = getattr(_this_thread, "rng", None), generator
    try:
        yield generator
    finally:
        _this_thread.rng = previous


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
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    largest = 2**31 - 1  # mallopt takes a C int
    # One arena for all threads: a thread other than the main one otherwise gets its own arena, whose heaps
    # are at most 64 MB, so its large blocks would come from fresh mmaps again (data_parallel's workers).
    return (bool(mallopt(M_MMAP_THRESHOLD, largest)) and bool(mallopt(M_TRIM_THRESHOLD, largest))
            and bool(mallopt(M_ARENA_MAX, 1)))


# ------------------------------------------------------------------------------------- CPU threads

def _default_threads() -> int:
    """TINYLLM_NUM_THREADS, else OMP_NUM_THREADS / OPENBLAS_NUM_THREADS (so "one thread" means one thread
    for BLAS and for us alike), else the CPUs this process may run on."""
    for name in ("TINYLLM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


num_threads = _default_threads()
# Elements: below this, handing work to a thread costs more than it saves. Measured on 2 cores (layer norm and
# GELU, forward + backward): at 65,536 elements two threads took ~1.9x as long as one, at 196,608 the same,
# at 393,216 0.7x.
min_parallel_size = 1 << 17
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
    rows = arrays[0].shape[0] if arrays[0].ndim else 0
    threads = min(num_threads, rows)
    if xp is not np or threads < 2 or arrays[0].size < min_parallel_size or _data_parallel_running:
        return [fn(*arrays)]
    return _run_on_threads(fn, _row_blocks(arrays, threads))


def _row_blocks(arrays, count):
    rows = len(arrays[0])
    bounds = [rows * i // count for i in range(count + 1)]
    return [[a[lo:hi] for a in arrays] for lo, hi in zip(bounds, bounds[1:])]


def _run_on_threads(fn, blocks) -> list:
    """fn(*block) for every block, the first on this thread (instead of waiting), the others on the pool;
    returns the results in block order. Waits for all of them even when one fails, then re-raises."""
    futures = [_thread_pool().submit(fn, *block) for block in blocks[1:]]
    try:
        first = fn(*blocks[0])
    finally:
        wait(futures)
    return [first] + [f.result() for f in futures]


def _thread_pool():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="tinyllm")
    return _pool


# ------------------------------------------------------------------ data parallelism over CPU threads

_data_parallel_running = False   # while True, parallel_rows runs inline: every core already has a block
_openblas = None                 # (set_num_threads, get_num_threads) of NumPy's OpenBLAS, False if none


def _openblas_thread_functions():
    """OpenBLAS's set/get_num_threads, found among the libraries this process has loaded (the one NumPy's
    wheel bundles is ``scipy_openblas`` with a ``64_`` suffix); None for another BLAS or off Linux."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split(maxsplit=5)[-1].strip() for line in maps if "openblas" in line.lower()})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", "")):
            set_threads = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            get_threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if set_threads is not None and get_threads is not None:
                set_threads.argtypes, get_threads.restype = [ctypes.c_int], ctypes.c_int
                return set_threads, get_threads
    return None


def data_parallel(fn, *arrays) -> list:
    """Call ``fn(*blocks)`` on matching row blocks (axis 0) of ``arrays``, one block per CPU thread, each
    thread with single-threaded BLAS; returns the calls' results in row order.

    This is data parallelism (as PyTorch's DistributedDataParallel, one worker per core) with threads that
    share one copy of the weights: ``fn`` runs a whole forward and backward pass on its block of the batch.
    It beats running the batch whole with ``parallel_rows`` inside each op: there, every op hands half its
    work to the other core and waits for it, and every matmul splits across cores, hundreds of meeting points
    per step; here the cores meet once. Measured on 2 cores: forward + backward of the 6×384 benchmark model
    ~1090 → ~990 ms, of the Shakespeare model ~48 → ~39 ms.
    Within the block, ``parallel_rows`` runs inline and nested ``data_parallel`` calls run whole. Falls back
    to one call ``fn(*arrays)`` on the GPU, with one thread, with fewer than two rows, or when NumPy's BLAS
    is not an OpenBLAS whose thread count can be set (its threads and these would fight for the cores).
    """
    global _openblas, _data_parallel_running
    threads = min(num_threads, len(arrays[0]))
    if xp is not np or threads < 2 or _data_parallel_running:
        return [fn(*arrays)]
    if _openblas is None:
        _openblas = _openblas_thread_functions() or False
    if not _openblas:
        return [fn(*arrays)]
    set_blas_threads, get_blas_threads = _openblas
    blas_threads = get_blas_threads()
    set_blas_threads(1)
    _data_parallel_running = True
    try:
        return _run_on_threads(fn, _row_blocks(arrays, threads))
    finally:
        _data_parallel_running = False
        set_blas_threads(blas_threads)


if os.environ.get("TINYLLM_KEEP_FREED_MEMORY", "1") != "0":
    keep_freed_memory()

class _UnusableDevice:
    """Stands in for ``xp`` when TINYLLM_DEVICE named a device that cannot be used: importing tinyllm still
    works (so the command line can print one clear line), and the first array operation raises the error."""

    def __init__(self, error: DeviceError):
        self.error = error

    def __getattr__(self, name):
        raise self.error


device_error = None   # the DeviceError for TINYLLM_DEVICE, if it named a device that cannot be used
if os.environ.get("TINYLLM_DEVICE"):
    try:
        set_device(os.environ["TINYLLM_DEVICE"])
    except DeviceError as e:
        device_error = DeviceError(f"TINYLLM_DEVICE={os.environ['TINYLLM_DEVICE']}: {e}")
        xp, device = _UnusableDevice(device_error), os.environ["TINYLLM_DEVICE"]
