"""tinyllm.safetensors: round trips, bfloat16 rounding, rejection of every kind of corrupt file, atomic
writes, and compatibility with the reference ``safetensors`` library when it is installed."""

import json
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyllm import safetensors as sf

ALL_NUMPY_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool"]


def example_array(dtype: str, shape: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def write_raw(path, header, data: bytes = b"") -> str:
    """A safetensors file built by hand, so tests can break any part of it. ``header`` is a dict or raw bytes."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return str(path)


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ALL_NUMPY_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (2, 3, 4)])
def test_round_trip_keeps_values_dtype_and_shape(tmp_path, dtype, shape):
    original = {"t": example_array(dtype, shape)}
    path = tmp_path / "m.safetensors"
    sf.save_file(original, path)
    loaded = sf.load_file(path)["t"]
    assert loaded.dtype == np.dtype(dtype) and loaded.shape == shape, f"got {loaded.dtype} {loaded.shape}"
    np.testing.assert_array_equal(loaded, original["t"])


def test_many_tensors_of_mixed_dtypes_round_trip_aligned_and_writable(tmp_path):
    original = {f"{dtype}_{i}": example_array(dtype, (i + 1, 3), seed=i) for i, dtype in enumerate(ALL_NUMPY_DTYPES)}
    sf.save_file(original, tmp_path / "m.safetensors")
    loaded = sf.load_file(tmp_path / "m.safetensors")
    assert set(loaded) == set(original)
    for name, array in original.items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
        assert loaded[name].flags.aligned and loaded[name].flags.writeable
    header = sf.read_header(tmp_path / "m.safetensors")
    assert header.data_start % 8 == 0, "header must be padded to a multiple of 8"
    for info in header.tensors.values():
        assert info.begin % sf.DTYPES[info.dtype].itemsize == 0, f"{info.name} starts unaligned at {info.begin}"


def test_non_contiguous_and_big_endian_inputs_are_written_correctly(tmp_path):
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    original = {"transposed": matrix.T, "every_other": matrix[:, ::2], "big_endian": matrix.astype(">f4")}
    sf.save_file(original, tmp_path / "m.safetensors")
    loaded = sf.load_file(tmp_path / "m.safetensors")
    for name, array in original.items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def test_tensors_larger_than_one_read_are_read_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(sf, "_READ_CHUNK_BYTES", 7)  # stands in for the 1 GiB pieces of real files
    original = {"w": np.arange(100, dtype=np.float64), "b": np.arange(5, dtype=np.int8)}
    sf.save_file(original, tmp_path / "m.safetensors")
    loaded = sf.load_file(tmp_path / "m.safetensors")
    for name, array in original.items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def test_metadata_round_trips_and_defaults_to_empty(tmp_path):
    sf.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "a.safetensors", metadata={"step": "100", "name": "tiny"})
    sf.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "b.safetensors")
    assert sf.load_metadata(tmp_path / "a.safetensors") == {"step": "100", "name": "tiny"}
    assert sf.load_metadata(tmp_path / "b.safetensors") == {}


def test_output_is_deterministic_whatever_the_insertion_order(tmp_path):
    tensors = {"b": np.ones(3, np.float32), "a": np.arange(2, dtype=np.int64), "c": np.zeros(1, np.uint8)}
    sf.save_file(tensors, tmp_path / "one.safetensors")
    sf.save_file(dict(reversed(tensors.items())), tmp_path / "two.safetensors")
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()


def test_save_rejects_bad_names_values_and_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="names must be str"):
        sf.save_file({1: np.zeros(1)}, path)
    with pytest.raises(TypeError, match="'x' is a builtins.list"):
        sf.save_file({"x": [1.0, 2.0]}, path)
    with pytest.raises(TypeError, match="'x' has dtype complex64"):
        sf.save_file({"x": np.zeros(2, np.complex64)}, path)
    with pytest.raises(TypeError, match="'x' has dtype object"):
        sf.save_file({"x": np.array([{}], dtype=object)}, path)
    with pytest.raises(TypeError, match="str to str"):
        sf.save_file({"x": np.zeros(1)}, path, metadata={"step": 100})
    with pytest.raises(ValueError, match="reserved"):
        sf.save_file({"__metadata__": np.zeros(1)}, path)
    assert not path.exists(), "a failed save must not create the file"


# ---------------------------------------------------------------------------------------------- bfloat16


def test_bfloat16_rounds_to_nearest_even_on_exact_ties():
    # float32 1.0 is 0x3F800000. Adding 0x8000 puts it exactly halfway between bf16 0x3F80 and 0x3F81:
    # the tie goes to the even one, 0x3F80. From 0x3F818000 the tie goes up to the even 0x3F82.
    as_float = lambda bits: np.array(bits, dtype=np.uint32).view(np.float32)
    ties = as_float([0x3F808000, 0x3F818000])
    np.testing.assert_array_equal(sf.float32_to_bfloat16_bits(ties), [0x3F80, 0x3F82])
    # Just above / below halfway round up / down.
    near = as_float([0x3F808001, 0x3F807FFF])
    np.testing.assert_array_equal(sf.float32_to_bfloat16_bits(near), [0x3F81, 0x3F80])


def test_bfloat16_special_values():
    special = np.array([np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max], dtype=np.float32)
    bits = sf.float32_to_bfloat16_bits(special)
    np.testing.assert_array_equal(bits, [0x7F80, 0xFF80, 0x0000, 0x8000, 0x7F80])  # float32 max rounds up to inf
    # A NaN whose payload sits only in the low 16 bits must stay NaN, not round to infinity.
    low_payload_nan = np.array([0x7F800001, 0xFF800001], dtype=np.uint32).view(np.float32)
    assert np.isnan(sf.bfloat16_bits_to_float32(sf.float32_to_bfloat16_bits(low_payload_nan))).all()


def test_bfloat16_save_and_load_as_float32(tmp_path):
    exact = np.array([1.0, -2.5, 0.15625, 2.0**120, 0.0], dtype=np.float32)  # all fit in 8 significant bits
    approximate = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    original = {"exact": exact, "approximate": approximate, "scalar": np.array(0.5), "empty": np.zeros((0, 3), np.float32)}
    path = tmp_path / "m.safetensors"
    sf.save_file(original, path, bf16=set(original))
    loaded = sf.load_file(path)
    assert {name: sf.read_header(path).tensors[name].dtype for name in original} == dict.fromkeys(original, "BF16")
    for name, array in original.items():
        assert loaded[name].dtype == np.float32 and loaded[name].shape == array.shape, name
    np.testing.assert_array_equal(loaded["exact"], exact)
    np.testing.assert_allclose(loaded["approximate"], approximate, rtol=2**-8)  # half a bf16 ulp, relative
    assert loaded["scalar"] == 0.5
    # On disk 1.0 is the top half of float32 0x3F800000, little-endian: 80 3F.
    data_start = sf.read_header(path).data_start
    begin = sf.read_header(path).tensors["exact"].begin
    assert path.read_bytes()[data_start + begin : data_start + begin + 2] == b"\x80\x3f"


def test_bf16_names_must_exist_and_be_floats(tmp_path):
    with pytest.raises(KeyError, match="missing"):
        sf.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "m.safetensors", bf16={"missing"})
    with pytest.raises(TypeError, match="BF16"):
        sf.save_file({"x": np.zeros(2, np.int32)}, tmp_path / "m.safetensors", bf16={"x"})


# ---------------------------------------------------------------------------------------------- corrupt files

GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CORRUPT_FILES = {
    # name: (header dict or raw header bytes, data bytes, text the error must contain)
    "header not JSON": (b"{not json", b"", "not valid JSON"),
    "header not UTF-8": (b"\xff\xfe{}", b"", "not UTF-8"),
    "header a JSON list": (b"[1, 2]", b"", "must be a JSON object"),
    "header nested too deeply": (b"[" * 100_000, b"", "nested too deeply"),
    "entry not an object": ({"w": [1, 2]}, b"", "must be an object"),
    "entry missing keys": ({"w": {"dtype": "F32"}}, b"", "lacks shape, data_offsets"),
    "unknown dtype": ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, bytes(2), "unsupported dtype 'F8_E4M3'"),
    "negative shape": ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "shape must be"),
    "float shape": ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8), "shape must be"),
    "bool shape": ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4), "shape must be"),
    "shape not a list": ({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8), "shape must be"),
    "offsets not a pair": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8), "data_offsets must be"),
    "offsets reversed": ({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, bytes(8), "end before"),
    "offsets wrong size": ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12"),
    "huge shape": ({"w": {"dtype": "F64", "shape": [2**62, 2**62], "data_offsets": [0, 8]}}, bytes(8), "needs"),
    "dtype not a string": ({"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unsupported dtype"),
    "too many dimensions": ({"w": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, bytes(4), "cannot be made"),
    "empty but absurd": ({"w": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}, b"", "cannot be made"),
    "truncated data": ({"w": GOOD_ENTRY}, bytes(5), "truncated"),
    "offsets past the end": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(8), "has only 8 bytes"),
    "overlap": ({"a": GOOD_ENTRY, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlap"),
    "gap": ({"a": GOOD_ENTRY, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, bytes(16), "unused bytes"),
    "gap at start": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "at the start"),
    "trailing bytes": ({"w": GOOD_ENTRY}, bytes(12), "4 unexpected bytes"),
    "metadata a list": ({"__metadata__": [], "w": GOOD_ENTRY}, bytes(8), "__metadata__"),
    "metadata not strings": ({"__metadata__": {"step": 100}, "w": GOOD_ENTRY}, bytes(8), "__metadata__"),
}


@pytest.mark.parametrize("case", list(CORRUPT_FILES))
def test_corrupt_file_raises_value_error_naming_the_file(tmp_path, case):
    header, data, expected_text = CORRUPT_FILES[case]
    path = write_raw(tmp_path / "corrupt_model.safetensors", header, data)
    with pytest.raises(ValueError, match="corrupt_model.safetensors") as error:
        sf.load_file(path)
    assert expected_text in str(error.value), f"{case}: message was {error.value}"


def test_error_for_a_bad_tensor_names_the_tensor(tmp_path):
    path = write_raw(tmp_path / "m.safetensors", {"h.0.attn.w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ValueError, match="tensor 'h.0.attn.w'"):
        sf.load_file(path)


def test_file_shorter_than_the_length_field(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="short.safetensors.*3 bytes"):
        sf.load_file(path)


def test_header_length_larger_than_the_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b'{"a": 1}')
    with pytest.raises(ValueError, match="cut.safetensors.*1000 bytes, but only 8"):
        sf.load_file(path)


class _CreatesAFileWhenUnpickled:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))  # unpickling this calls open(sentinel, "w")


def test_a_pickle_is_rejected_without_running_it(tmp_path):
    sentinel = tmp_path / "pickle_code_ran"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"w": _CreatesAFileWhenUnpickled(str(sentinel)), "x": np.zeros(3)}))
    with pytest.raises(ValueError, match="model.safetensors"):
        sf.load_file(path)
    assert not sentinel.exists(), "loading must never unpickle anything"


def test_random_bytes_are_rejected(tmp_path):
    rng = np.random.default_rng(0)
    for size in (0, 7, 8, 100, 10_000):
        path = tmp_path / f"random_{size}.safetensors"
        path.write_bytes(rng.bytes(size))
        with pytest.raises(ValueError, match=f"random_{size}.safetensors"):
            sf.load_file(path)


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, 10_000), new_byte=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_damaged_files_either_load_or_raise_value_error(tmp_path_factory, position, new_byte, cut):
    """Flip one byte and/or cut the file short: the loader may succeed (a data byte changed) but must never
    fail any other way than ValueError."""
    directory = tmp_path_factory.mktemp("fuzz")
    good = directory / "good.safetensors"
    sf.save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.int8)}, good, metadata={"k": "v"})
    data = bytearray(good.read_bytes())
    data[position % len(data)] = new_byte
    damaged = directory / "damaged.safetensors"
    damaged.write_bytes(bytes(data[: len(data) - cut % 40]))
    try:
        sf.load_file(damaged)
    except ValueError as error:
        assert "damaged.safetensors" in str(error)


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=4)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
small_counts = st.integers(-2, 40)
plausible_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from([*sf.DTYPES, "F8_E5M2", ""]) | json_values,
    "shape": st.lists(small_counts, max_size=3) | json_values,
    "data_offsets": st.lists(small_counts, min_size=2, max_size=2) | json_values,
})


@settings(max_examples=150, deadline=None)
@given(
    header=st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]) | st.text(max_size=3), plausible_entries | json_values, max_size=3),
    data=st.binary(max_size=48),
)
def test_any_header_either_loads_or_raises_value_error(tmp_path_factory, header, data):
    path = write_raw(tmp_path_factory.mktemp("headers") / "fuzzed.safetensors", header, data)
    try:
        loaded = sf.load_file(path)
    except ValueError as error:
        assert "fuzzed.safetensors" in str(error)
    else:
        assert set(loaded) == set(header) - {"__metadata__"}


# ---------------------------------------------------------------------------------------------- atomicity


def test_failed_save_leaves_the_old_file_intact_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    sf.save_file({"w": np.ones(4, np.float32)}, path)
    before = path.read_bytes()

    def failing_replace(source, destination):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        sf.save_file({"w": np.zeros(1000, np.float32)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"], "the temporary file must be cleaned up"


def test_failure_while_writing_tensor_bytes_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    sf.save_file({"w": np.ones(4, np.float32)}, path)
    before = path.read_bytes()
    real_memoryview = memoryview
    calls = []

    def memoryview_that_fails_on_the_second_tensor(obj):
        calls.append(obj)
        if len(calls) == 2:
            raise OSError("write failed midway (simulated)")
        return real_memoryview(obj)

    monkeypatch.setattr(sf, "memoryview", memoryview_that_fails_on_the_second_tensor, raising=False)
    with pytest.raises(OSError, match="midway"):
        sf.save_file({"a": np.zeros(8, np.float64), "b": np.zeros(8, np.float32)}, path)
    assert len(calls) == 2, "the header and first tensor should have been written before the failure"
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


# ---------------------------------------------------------------------------------------------- reference library


def test_reference_library_reads_our_files(tmp_path):
    reference = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    original = {f"t_{dtype}": example_array(dtype, (3, 2), seed=i) for i, dtype in enumerate(ALL_NUMPY_DTYPES)}
    original["scalar"] = np.array(2.5, np.float32)
    original["empty"] = np.zeros((0, 4), np.int32)
    path = tmp_path / "ours.safetensors"
    sf.save_file(original, path, metadata={"format": "np", "by": "tinyllm"})
    loaded = reference.load_file(str(path))
    assert set(loaded) == set(original)
    for name, array in original.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    with safe_open(str(path), framework="numpy") as file:
        assert file.metadata() == {"format": "np", "by": "tinyllm"}


def test_we_read_reference_files_and_write_the_same_bytes(tmp_path):
    reference = pytest.importorskip("safetensors.numpy")
    original = {f"t_{dtype}": example_array(dtype, (2, 3), seed=i) for i, dtype in enumerate(ALL_NUMPY_DTYPES)}
    original["scalar"] = np.array(-1, np.int64)
    reference.save_file(original, str(tmp_path / "theirs.safetensors"), metadata={"format": "np"})
    loaded = sf.load_file(tmp_path / "theirs.safetensors")
    assert set(loaded) == set(original)
    for name, array in original.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    assert sf.load_metadata(tmp_path / "theirs.safetensors") == {"format": "np"}

    # With one tensor per element size the layout is fully determined, and both writers agree byte for byte.
    one_per_size = {"f64": original["t_float64"], "f32": original["t_float32"], "f16": original["t_float16"], "u8": original["t_uint8"]}
    reference.save_file(one_per_size, str(tmp_path / "theirs2.safetensors"), metadata={"format": "np"})
    sf.save_file(one_per_size, tmp_path / "ours2.safetensors", metadata={"format": "np"})
    assert (tmp_path / "ours2.safetensors").read_bytes() == (tmp_path / "theirs2.safetensors").read_bytes()
