"""A CPU stand-in for CuPy that keeps CuPy's rules,
so the GPU code path can be tested without a GPU.

``tinyllm.set_device("strict")`` (or ``TINYLLM_DEVICE=strict``) makes ``backend.xp`` the namespace
below. Its arrays hold an ordinary NumPy array and compute with NumPy, but they behave like
``cupy.ndarray`` wherever CuPy differs from NumPy in a way that breaks NumPy-written code:

- No implicit trip to the host: ``numpy.asarray(a)``, ``numpy.array(a)`` and any ``numpy`` function
  or ufunc called on a device array raise ``TypeError`` (CuPy: "Implicit conversion to a NumPy array
  is not allowed"). The only way out is explicit: ``backend.to_numpy(a)`` (``a.get()``).
- No host arrays inside device math: ``device_array + numpy_array``, ``xp.exp(numpy_array)`` or
  ``device_array[...] = numpy_array`` raise ``TypeError``. Host data enters through ``xp.asarray``,
  which copies (the result never shares memory with the host array). Python and NumPy scalars mix
  freely.
- Reductions and single-element indexing return 0-d device arrays, never NumPy scalars.
- Random generators have CuPy's ``Generator`` methods only (``random``, ``standard_normal``,
  ``integers``, ``uniform``, ...; no ``normal``, ``choice``, ``permutation``), and ``integers``
  without ``size`` gives a 0-d array.
- ``ufunc.at`` / ``reduce`` / ``accumulate`` / ``reduceat`` exist only for the ufuncs CuPy
  implements.

Reading a value on the host (``.item()``, ``float()``, ``int()``, ``bool()``, ``.tolist()``,
formatting) works, as on CuPy, where it waits for the GPU: each such read is a *sync*, counted in
``counts`` so that tests can bound how often a training step or a decoding step stops the device.
``to_numpy`` counts as a transfer.

This is a thin wrapper (every result is computed by NumPy),
not a second array library. It is for tests:
it is several times slower than NumPy.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import numbers

import numpy as np

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed (device 'strict' keeps "
            "CuPy's rules). "
            "Use backend.to_numpy(array) to copy it to the host explicitly.")

# Host reads of device values, by kind ("item", "float", "bool", "tolist", "to_numpy", ...).
counts: collections.Counter = collections.Counter()


def sync_count() -> int:
    """Host reads so far: each one makes a GPU wait for its queue of work to finish."""
    return sum(counts.values())


@contextlib.contextmanager
def count_syncs():
    """``with count_syncs() as seen: ...`` —
    afterwards ``seen`` holds the host reads made inside, by kind."""
    before = counts.copy()
    seen: collections.Counter = collections.Counter()
    try:
        yield seen
    finally:
        seen.update(counts - before)


def _host_read(kind: str) -> None:
    counts[kind] += 1


# --------------------------------------------------------------------- crossing the device boundary

def _unwrap(value, what="argument"):
    """The NumPy array inside a device array; host arrays (and lists holding them) are refused."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}: a host numpy.ndarray was "
                        "passed as a device "
                        f"{what} (CuPy refuses this; move it with xp.asarray first)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, what) for v in value)
    return value


def _unwrap_elementwise(value):
    """Operands of elementwise math: device arrays and scalars only
    (CuPy refuses lists here too)."""
    if isinstance(value, (list, tuple)):
        raise TypeError(f"Unsupported type {type(value)} in elementwise device math "
                        "(CuPy refuses it)")
    return _unwrap(value, "operand")


def _wrap(result):
    """NumPy results back as device arrays; a NumPy scalar becomes a 0-d device array,
    as in CuPy."""
    if isinstance(result, np.ndarray):
        return ndarray(result)
    if isinstance(result, np.generic):
        return ndarray(np.asarray(result))
    if isinstance(result, tuple):
        return tuple(_wrap(r) for r in result)
    if isinstance(result, list):
        return [_wrap(r) for r in result]
    return result


def _index(key):
    """An index may hold device arrays, and (as CuPy allows) host integer arrays or lists."""
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key


def _device_function(fn, name):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        args = [_unwrap(a) for a in args]
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return _wrap(fn(*args, **kwargs))
    call.__name__ = name
    return call


# --------------------------------------------------------------------------------- the array

class ndarray:
    """A device array: a NumPy array behind CuPy's rules (see the module docstring)."""

    __slots__ = ("_a",)
    # numpy ufuncs refuse it; numpy scalars defer to its reflected operators
    __array_ufunc__ = None
    __hash__ = None

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was called on a device array. {IMPLICIT} "
                        f"(Or call backend.xp.{func.__name__}.)")

    # What CuPy lets a caller read on the host: each is a sync on a GPU.
    def get(self) -> np.ndarray:
        """An explicit copy to the host (``cupy.ndarray.get``)."""
        _host_read("to_numpy")
        return self._a.copy()

    def item(self, *args):
        _host_read("item")
        return self._a.item(*args)

    def tolist(self):
        _host_read("tolist")
        return self._a.tolist()

    def __float__(self):
        _host_read("float")
        return float(self._a)

    def __int__(self):
        _host_read("int")
        return int(self._a)

    def __index__(self):
        _host_read("int")
        return self._a.__index__()

    def __bool__(self):
        _host_read("bool")
        return bool(self._a)

    def __format__(self, spec):
        _host_read("format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        return f"strict.{np.array_repr(self._a)}"

    __str__ = __repr__

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, (list, tuple)):
            raise TypeError(f"Unsupported type {type(value)} as a value to store in a device array")
        self._a[_index(key)] = _unwrap(value, "value")

    def __getattr__(self, name):
        # no __array_interface__, __array_struct__, __dlpack__ ... from NumPy
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return _device_function(attr, name)
        return _wrap(attr)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):
        raise TypeError("device arrays are not pickled; use backend.to_numpy first")


def _binary(name):
    op = getattr(np.ndarray, name)

    def method(self, other):
        if isinstance(other, np.ndarray) or isinstance(other, (list, tuple)):
            _unwrap_elementwise(other)          # raises, naming the type
        result = op(self._a, _unwrap(other))
        if result is NotImplemented:
            return NotImplemented
        return self if result is self._a else _wrap(result)
    method.__name__ = name
    return method


def _unary(name):
    op = getattr(np.ndarray, name)
    return lambda self: _wrap(op(self._a))


for _name in ("add sub mul truediv floordiv mod pow matmul and or xor lshift rshift "
              "divmod").split():
    for _form in ("__{}__", "__r{}__", "__i{}__"):
        if hasattr(np.ndarray, _form.format(_name)):
            setattr(ndarray, _form.format(_name), _binary(_form.format(_name)))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", _unary(f"__{_name}__"))


# ---------------------------------------------------------------------- the xp namespace

# ufunc methods CuPy implements, and for which ufuncs (beyond these, CuPy raises).
_UFUNC_METHODS = {
    "at": {"add", "subtract", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor"},
    "reduce": {"add", "multiply"},
    "accumulate": {"add"},
    "reduceat": {"add"},
}


class _Ufunc:
    """``xp.exp``, ``xp.add`` ...: elementwise on device arrays and scalars only."""

    def __init__(self, ufunc: np.ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        args = [_unwrap_elementwise(a) for a in args]
        kwargs = {k: _unwrap(v, k) for k, v in kwargs.items()}
        return _wrap(self._ufunc(*args, **kwargs))

    def outer(self, a, b, **kwargs):
        return _wrap(self._ufunc.outer(_unwrap_elementwise(a), _unwrap_elementwise(b), **kwargs))

    def __getattr__(self, name):
        if name not in _UFUNC_METHODS:
            return getattr(self._ufunc, name)     # nin, nout, identity ...
        if self.__name__ not in _UFUNC_METHODS[name]:
            raise AttributeError(f"CuPy has no {self.__name__}.{name}")
        method = getattr(self._ufunc, name)
        if name == "at":
            def at(a, indices, b=None):
                method(_unwrap(a), _index(indices),
                       *([] if b is None else [_unwrap_elementwise(b)]))
            return at
        return _device_function(method, name)


# CuPy's Generator methods (cupy.random.Generator); numpy's others (normal, choice, permutation,
# shuffle ...) do not exist there.
_GENERATOR_METHODS = {"random", "uniform", "integers", "standard_normal", "standard_exponential",
                      "standard_gamma", "exponential", "gamma", "beta", "binomial", "chisquare",
                      "dirichlet", "f", "geometric", "hypergeometric", "logseries", "poisson",
                      "power"}


class Generator:
    """``xp.random.default_rng(seed)``: NumPy's generator behind CuPy's ``Generator`` interface."""

    def __init__(self, seed=None):
        if seed is not None and not isinstance(seed, numbers.Integral):
            raise TypeError("cupy.random.default_rng takes an integer seed, not "
                            f"{type(seed).__name__}")
        self._rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        if name not in _GENERATOR_METHODS:
            raise AttributeError(f"CuPy's random Generator has no method {name!r}")
        method = getattr(self._rng, name)

        def draw(*args, **kwargs):
            if "size" not in kwargs and name == "integers" and len(args) < 3:
                kwargs["size"] = ()                 # CuPy: a 0-d array, not a Python int
            return _wrap(np.asarray(method(*[_unwrap(a) for a in args], **kwargs)))
        return draw


class _Random:
    """``xp.random``: only the generator API is offered (tinyllm never uses global random state)."""

    Generator = Generator

    @staticmethod
    def default_rng(seed=None):
        return Generator(seed)


def _asarray(a, dtype=None, copy=None, **kwargs):
    """Host data in, device array out. Like CuPy, a host array is always copied to the device."""
    if isinstance(a, ndarray):
        return _wrap(np.array(a._a, dtype=dtype, copy=copy, **kwargs)) if dtype or copy else a
    return ndarray(np.array(_unwrap_host_sequence(a), dtype=dtype, **kwargs))


def _unwrap_host_sequence(a):
    """Lists may mix device arrays and Python numbers (``xp.asarray([x, y])``)."""
    if isinstance(a, (list, tuple)):
        return [_unwrap_host_sequence(v) for v in a]
    return a._a if isinstance(a, ndarray) else a


def _fuse(*args, **kwargs):
    """``cupy.fuse``: compiles an elementwise function into one kernel on a GPU; here,
    the function itself."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


def asnumpy(a) -> np.ndarray:
    """``cupy.asnumpy``: an explicit copy to the host."""
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


_NOT_IN_CUPY = {"errstate", "seterr", "geterr", "ma", "rec", "char"}
_OWN = {"ndarray": ndarray, "asarray": _asarray, "array": _asarray, "asanyarray": _asarray,
        "random": _Random, "fuse": _fuse, "asnumpy": asnumpy}


class _Namespace:
    """What ``backend.xp`` is on device 'strict': NumPy's names,
    each wrapped to follow CuPy's rules."""

    __name__ = "tinyllm.strict"

    def __init__(self):
        self._cache = {}

    def __getattr__(self, name):
        if name in self._cache:
            return self._cache[name]
        if name in _OWN:
            value = _OWN[name]
        elif name in _NOT_IN_CUPY or name.startswith("_"):
            raise AttributeError(f"CuPy has no {name!r}: the strict device refuses numpy.{name}")
        else:
            value = getattr(np, name)
            if isinstance(value, np.ufunc):
                value = _Ufunc(value)
            elif callable(value) and not isinstance(value, type):
                value = _device_function(value, name)
            elif name == "linalg":
                value = _Submodule(np.linalg)
        self._cache[name] = value
        return value

    def __repr__(self):
        return "<tinyllm.strict: NumPy under CuPy's rules>"


class _Submodule:
    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return _device_function(getattr(self._module, name), name)


xp = _Namespace()
