"""The safetensors file format, read and written with NumPy alone.

safetensors (Hugging Face) is the format for model weights that is safe to open: unlike a pickle,
loading it runs no code, so a checkpoint downloaded from a stranger can at worst contain wrong
numbers. The layout is simple enough to describe in three lines::

    [8 bytes]  N, the header length, as a little-endian unsigned 64-bit integer
    [N bytes]  the header: UTF-8 JSON, padded with spaces to a multiple of 8
    [the rest] the data section: every tensor's raw bytes, little-endian, C order, back to back

and the header maps each tensor name to where its bytes are, plus an optional string-to-string
``__metadata__`` table::

    {"__metadata__": {"format": "np"},
     "wte": {"dtype": "F32", "shape": [50257, 768], "data_offsets": [0, 154389504]}, ...}

``data_offsets`` are ``[begin, end)`` byte positions counted from the start of the data section, so
a tensor's bytes are ``file[8 + N + begin : 8 + N + end]``, and ``end - begin`` must equal
``itemsize(dtype) * prod(shape)``. Tensors must tile the data section exactly: no gaps, no overlaps,
no bytes after the last one (the reference library enforces this too, and it is what makes a file
easy to check). A 0-d tensor has ``shape: []`` and one element; an empty tensor has a 0 in its shape
and ``begin == end``.

Writing sorts tensors by element size (largest first), then by name. With the header padded to a
multiple of 8, every tensor then starts at a multiple of its own element size, so the file can be
memory-mapped without unaligned reads. That is the order the reference library uses as well.

bfloat16 has no NumPy dtype. It is the top half of a float32 (same sign and 8-bit exponent, mantissa
cut from 23 bits to 7), so it is read by widening: ``float32 bits = bf16 bits << 16``, exact.
Writing rounds float32 to the nearest bfloat16 (ties to even): see ``float32_to_bfloat16_bits``.
Pass ``save_file(..., bf16={"wte", ...})`` to store chosen tensors that way and halve their size.

Nothing read from the file is ever executed: the header goes through ``json.loads`` and every tensor
through ``file.readinto`` into a freshly allocated array.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .files import atomic_write_with

__all__ = [
    "save_file",
    "load_file",
    "load_metadata",
    "read_header",
    "Header",
    "TensorInfo",
    "float32_to_bfloat16_bits",
    "bfloat16_bits_to_float32",
    "DTYPES",
]

# safetensors dtype name -> the little-endian NumPy dtype its bytes are read as. BF16 is read as raw
# uint16 bits and widened to float32 afterwards.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# NumPy dtype (by kind and size, byte order aside) -> safetensors name,
# for writing. BF16 is chosen explicitly.
_NAME_OF_NUMPY_DTYPE = {(dt.kind, dt.itemsize): name
                        for name, dt in DTYPES.items() if name != "BF16"}

_HEADER_LENGTH_BYTES = 8
# the reference library's limit; a larger "header" is a corrupt length field
_MAX_HEADER_BYTES = 100_000_000
_METADATA_KEY = "__metadata__"
_READ_CHUNK_BYTES = 1 << 30


# ----------------------------------------------------------------------------------------- bfloat16


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16, returned as the uint16 bit patterns (round to nearest,
    ties to even).

    Keeping the top 16 bits of a float32 truncates; to round instead, add just under half of the
    dropped part's range before cutting: ``0x7FFF`` plus the lowest kept bit, so that an exact tie
    (dropped part ``0x8000``) rounds up only when that makes the kept part even. A carry out of the
    mantissa correctly bumps the exponent, and the largest floats round to infinity, as IEEE
    rounding does. NaN is the one case the trick breaks (a NaN with only low mantissa bits set would
    round to infinity), so NaNs become the canonical quiet NaN ``0x7FC0`` with their sign kept.
    float64 input is converted to float32 first.
    """
    # asarray keeps 0-d arrays 0-d
    bits = np.asarray(values, dtype=np.float32, order="C").view(np.uint32)
    lowest_kept_bit = (bits >> 16) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lowest_kept_bit) >> 16).astype(np.uint16)
    is_nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if is_nan.any():
        quiet_nan = ((bits >> 16) & np.uint32(0x8000)).astype(np.uint16) | np.uint16(0x7FC0)
        rounded = np.where(is_nan, quiet_nan, rounded)
    return rounded


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly:
    they are the float32's top 16 bits."""
    bits = np.asarray(bits)
    if bits.dtype.kind != "u" or bits.dtype.itemsize != 2:
        raise TypeError(f"bfloat16 bits must be a uint16 array, got dtype {bits.dtype}")
    widened = bits.astype(np.uint32)
    widened <<= 16  # in place: ``bits << 16`` would turn a 0-d array into a scalar
    return widened.view(np.float32)


# ----------------------------------------------------------------------------------------- writing


def _prepare_tensor(name, value, as_bf16: bool) -> tuple[str, np.ndarray]:
    """Check one tensor and return (safetensors dtype name,
    contiguous little-endian array to write)."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
    if name == _METADATA_KEY:
        raise ValueError(f"{_METADATA_KEY!r} is reserved for the metadata table and "
                         "cannot name a tensor")
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(
            f"tensor {name!r} is a {type(value).__module__}.{type(value).__name__}, not a NumPy "
            "array (convert GPU arrays with tinyllm.backend.to_numpy first)"
        )
    array = np.asarray(value)
    # the second: an ml_dtypes.bfloat16 array, if a caller has one
    if as_bf16 or array.dtype.name == "bfloat16":
        if array.dtype.name == "bfloat16":
            bits = array.view(np.uint16)
        elif array.dtype.kind == "f":
            bits = float32_to_bfloat16_bits(array)
        else:
            raise TypeError(f"tensor {name!r} was asked to be stored as BF16 but has dtype "
                            f"{array.dtype}, not a float")
        return "BF16", np.asarray(bits, dtype="<u2", order="C")
    dtype_name = _NAME_OF_NUMPY_DTYPE.get((array.dtype.kind, array.dtype.itemsize))
    if dtype_name is None:
        supported = ", ".join(
            str(DTYPES[name].newbyteorder("=")) for name in _NAME_OF_NUMPY_DTYPE.values()
        )
        raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store "
                        f"(supported: {supported})")
    return dtype_name, np.asarray(array, dtype=DTYPES[dtype_name], order="C")


def save_file(
    tensors: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    *,
    bf16: Iterable[str] = (),
) -> None:
    """Write ``tensors`` (name -> NumPy array) to ``path`` in safetensors format, atomically.

    ``metadata`` is an optional str -> str table stored in the header. ``bf16`` names tensors to
    round to bfloat16 on the way out (``load_file`` gives them back as float32). Any existing file
    at ``path`` is replaced only once the new one is completely on disk.
    """
    path = os.fspath(path)
    bf16 = set(bf16)
    unknown_bf16 = sorted(bf16 - set(tensors))
    if unknown_bf16:
        raise KeyError(f"bf16 names tensors that are not being saved: {unknown_bf16}")
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"safetensors metadata must map str to str; got {key!r}: {value!r} "
                                "(use json.dumps for other values)")

    prepared = {name: _prepare_tensor(name, value, name in bf16) for name, value in tensors.items()}
    # Largest elements first, so every tensor starts at a multiple of its element size;
    # then by name.
    order = sorted(prepared, key=lambda name: (-prepared[name][1].itemsize, name))

    header: dict = {}
    if metadata:
        header[_METADATA_KEY] = dict(metadata)
    offset = 0
    for name in order:
        dtype_name, array = prepared[name]
        header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)

    def write(file) -> None:
        file.write(struct.pack("<Q", len(header_bytes)))
        file.write(header_bytes)
        for name in order:
            array = prepared[name][1]
            file.write(memoryview(array.reshape(-1)).cast("B"))  # the array's own bytes, no copy

    atomic_write_with(path, write)


# ----------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: ``dtype`` is the safetensors name ("F32"),
    offsets are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: tensors in file order, the metadata table,
    where the data section starts."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def _is_count(value) -> bool:
    """A JSON non-negative integer (``True`` is an int in Python but not in JSON's sense)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tensor_entry(path: str, name: str, entry) -> TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: header entry must be an object, got {entry!r}")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise ValueError(f"{where}: header entry lacks {', '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"{where}: unsupported dtype {dtype!r} (tinyllm reads "
                         f"{', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
        raise ValueError(f"{where}: data_offsets must be [begin, end] with non-negative integers, "
                         f"got {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise ValueError(f"{where}: data_offsets {offsets} end before they begin")
    # Python ints: no overflow on absurd shapes
    expected = DTYPES[dtype].itemsize * math.prod(shape)
    if end - begin != expected:
        raise ValueError(
            f"{where}: data_offsets {offsets} span {end - begin} bytes, but dtype {dtype} with "
            f"shape {shape} needs {expected}"
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _check_layout(path: str, infos: list[TensorInfo], data_length: int) -> list[TensorInfo]:
    """Sort by offset and check the tensors tile the data section exactly;
    returns them in file order."""
    infos = sorted(infos, key=lambda info: (info.begin, info.end))
    position, previous = 0, None
    for info in infos:
        if info.end > data_length:
            raise ValueError(
                f"{path}: tensor {info.name!r} ends at byte {info.end} of the data section, which "
                f"has only {data_length} bytes (truncated file?)"
            )
        if info.begin < position:
            raise ValueError(
                f"{path}: tensors {previous.name!r} [{previous.begin}, {previous.end}) and "
                f"{info.name!r} [{info.begin}, {info.end}) overlap"
            )
        if info.begin > position:
            after = (f"after tensor {previous.name!r}" if previous
                     else "at the start of the data section")
            raise ValueError(f"{path}: {info.begin - position} unused bytes {after} (before tensor "
                             f"{info.name!r})")
        position, previous = info.end, info
    if position != data_length:
        raise ValueError(f"{path}: {data_length - position} unexpected bytes after the last tensor")
    return infos


def _read_header_from(file, path: str) -> Header:
    file_size = os.fstat(file.fileno()).st_size
    if file_size < _HEADER_LENGTH_BYTES:
        raise ValueError(f"{path} is not a safetensors file: it has {file_size} bytes, fewer than "
                         "the 8-byte header length")
    (header_length,) = struct.unpack("<Q", file.read(_HEADER_LENGTH_BYTES))
    if header_length > file_size - _HEADER_LENGTH_BYTES:
        raise ValueError(
            f"{path} is not a safetensors file (or is truncated): its header length field says "
            f"{header_length} bytes, but only {file_size - _HEADER_LENGTH_BYTES} bytes follow"
        )
    if header_length > _MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header length {header_length} exceeds the "
                         f"{_MAX_HEADER_BYTES}-byte limit")
    raw = file.read(header_length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a safetensors file: header is not UTF-8 (byte "
                         f"{e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a safetensors file: header is not valid JSON (char "
                         f"{e.pos}: {e.msg})") from None
    except RecursionError:  # "[[[[..." thousands deep: a hostile header, not a tinyllm bug
        raise ValueError(f"{path} is not a safetensors file: header JSON is nested too "
                         "deeply") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop(_METADATA_KEY, None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: {_METADATA_KEY} must be an object of string values, "
                         f"got {metadata!r}")
    data_start = _HEADER_LENGTH_BYTES + header_length
    infos = [_check_tensor_entry(path, name, entry) for name, entry in header.items()]
    infos = _check_layout(path, infos, file_size - data_start)
    return Header({info.name: info for info in infos}, metadata, data_start)


def read_header(path: str | os.PathLike) -> Header:
    """Read and check a safetensors header without reading any tensor data."""
    path = os.fspath(path)
    with open(path, "rb") as file:
        return _read_header_from(file, path)


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` table of a safetensors file ({} when it has none)."""
    return read_header(path).metadata


def _read_into(file, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``file``; returns the bytes read, fewer only at the end of the file.

    Reads at most 1 GiB at a time: a single read on Linux moves at most about 2 GiB, and a short
    read must not be mistaken for a truncated file.
    """
    filled = 0
    while filled < len(buffer):
        got = file.readinto(buffer[filled : filled + _READ_CHUNK_BYTES])
        if not got:
            break
        filled += got
    return filled


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file into NumPy arrays
    (BF16 tensors come back as float32).

    Each tensor is read straight from the file into its own new, aligned, writable array, so peak
    memory is the size of the tensors, not twice it.
    """
    path = os.fspath(path)
    tensors = {}
    with open(path, "rb") as file:
        header = _read_header_from(file, path)
        # tensors are contiguous and in file order: read them in sequence
        file.seek(header.data_start)
        for name, info in header.tensors.items():
            try:
                array = np.empty(info.shape, dtype=DTYPES[info.dtype])
            # e.g. 65 dimensions, or [0, 2**70]: empty but not allocatable
            except (ValueError, OverflowError) as e:
                raise ValueError(f"{path}: tensor {name!r} with shape {list(info.shape)} "
                                 f"cannot be made: {e}") from None
            got = _read_into(file, memoryview(array.reshape(-1)).cast("B"))
            if got != array.nbytes:  # the file shrank after we checked its size
                raise ValueError(f"{path}: tensor {name!r} is truncated: read {got} of "
                                 f"{array.nbytes} bytes")
            if info.dtype == "BF16":
                array = bfloat16_bits_to_float32(array)
            tensors[name] = array
    return tensors
