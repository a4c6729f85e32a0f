"""The one place that chooses the array library.

Everything in tinyllm does array math through ``xp``, which is NumPy by default and CuPy on a GPU.
Pick the device once, before building models::

    import tinyllm
    tinyllm.set_device("cuda")        # or set TINYLLM_DEVICE=cuda in the environment

Other modules must read the module attribute at call time (``backend.xp``), never ``from
tinyllm.backend import xp``, so that ``set_device`` takes effect everywhere.

The default float dtype is float32; gradient checks switch to float64 with ``set_dtype("float64")``
or the ``default_dtype("float64")`` context manager.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

xp = np  # the array module: numpy or cupy
device = "cpu"
dtype = np.dtype(np.float32)  # default float dtype for new tensors and parameters


DEVICES = ("cpu", "cuda", "strict")


class DeviceError(RuntimeError):
    """The device asked for cannot be used here; the message says why and what to do."""


def set_device(name: str) -> None:
    """Use ``"cpu"`` (NumPy), ``"cuda"`` (CuPy on an NVIDIA GPU) or ``"strict"`` (NumPy under CuPy's
    rules, for testing the GPU path on a CPU: see ``tinyllm.strict``)
    for all array math from now on."""
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
        raise DeviceError("device 'cuda' needs CuPy, which is not installed: pip install -e "
                          "'.[gpu]' (or the cupy-cuda12x / cupy-cuda13x wheel that matches your "
                          "CUDA)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy raises its own CUDARuntimeError when no driver is present
        raise DeviceError("device 'cuda': CuPy is installed but finds no usable GPU "
                          f"({type(e).__name__}: {e}); check nvidia-smi and the CUDA "
                          "driver") from None
    if count == 0:
        raise DeviceError("device 'cuda': CuPy is installed but no GPU is visible "
                          "(CUDA_VISIBLE_DEVICES?)")
    from .distributed import local_rank_from_launcher
    cupy.cuda.Device(local_rank_from_launcher() % count).use()   # a GPU per process of a job
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
    """Return a NumPy array for an ``xp`` array: the one explicit way to the host
    (a copy from the GPU)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # cupy.ndarray, strict.ndarray
        return a.get()
    return np.asarray(a)


def host_min_max(a) -> tuple:
    """(min, max) of a non-empty array as Python numbers: free for a host array, one read of the
    device (both values together) for a device array."""
    if isinstance(a, np.ndarray):
        return a.min().item(), a.max().item()
    return tuple(to_numpy(xp.stack([a.min(), a.max()])).tolist())


def asarray(a, dtype=None):
    """An ``xp`` array from anything array-like
    (NumPy arrays are copied to the GPU when on cuda)."""
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
    """A NumPy generator on the host (seeded by ``manual_seed``) that hands out seeds for device
    generators, such as each block's dropout generator in a training step. Its state is a small host
    object on every device, so a run can save it and resume exactly, on a GPU too."""
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
    """Within this block, ``global_rng()`` called from this thread returns ``generator``: threads
    that run micro-batches side by side (``data_parallel``) each draw dropout masks from their own
    seeded generator, so a run does not depend on which thread got there first."""
    previous, _this_thread.rng = getattr(_this_thread, "rng", None), generator
    try:
        yield generator
    finally:
        _this_thread.rng = previous


class RowGenerators:
    """Random numbers for a block of a batch's rows, each row drawing from its own generator (seeded
    with ``seeds[b]``): an array whose first axis holds the rows, (B, ...), or their positions,
    (B·T, ...), is cut into len(seeds) equal parts along it, and part b comes from row b's
    generator. A row's dropout masks are then the same whichever block it falls in, so splitting a
    batch over threads or processes (``train.data_parallel_backward``) does not change them.
    Anything else, or a first axis that does not divide into the rows (say, the tokens one expert of
    a mixture received), draws from the first row's."""

    def __init__(self, seeds):
        self.generators = [rng(int(seed)) for seed in seeds]

    def random(self, shape, dtype=None):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        rows = len(self.generators)
        if not shape or shape[0] % rows:
            return self.generators[0].random(shape, dtype=dtype)
        piece = (shape[0] // rows,) + shape[1:]
        return xp.concatenate([g.random(piece, dtype=dtype) for g in self.generators])

    def __getattr__(self, name):
        return getattr(self.generators[0], name)


class _UnusableDevice:
    """Stands in for ``xp`` when TINYLLM_DEVICE named a device that cannot be used: importing
    tinyllm still works (so the command line can print one clear line), and the first array
    operation raises the error."""

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
