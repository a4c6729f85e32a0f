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
import os

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


if os.environ.get("TINYLLM_DEVICE"):
    set_device(os.environ["TINYLLM_DEVICE"])
