"""The strict device (tinyllm.strict): NumPy under CuPy's rules, so the GPU path is tested on a CPU.

First the stand-in's own rules (each would break NumPy-written code on a real GPU), then what it measures:
how often a training step and a decoding step make the device wait for the host.
"""

import copy

import numpy as np
import pytest

import tinyllm
from tinyllm import backend, strict
from tinyllm.autograd import Tensor
from tinyllm.generate import generate
from tinyllm.model import GPT, GPTConfig
from tinyllm.optim import AdamW, clip_factor, grad_norm
from tinyllm.train import forward_backward

xp = strict.xp


@pytest.fixture
def on_strict():
    """Run the test on device 'strict', then go back to the device the suite runs on."""
    before = backend.device
    backend.set_device("strict")
    try:
        yield
    finally:
        backend.set_device(before)


def test_no_implicit_conversion_to_numpy():
    a = xp.arange(6.0).reshape(2, 3)
    for convert in (np.asarray, np.array, lambda x: np.testing.assert_allclose(x, 0), np.exp, np.concatenate):
        with pytest.raises(TypeError):
            convert([a] if convert is np.concatenate else a)
    np.testing.assert_array_equal(backend.to_numpy(a), np.arange(6.0).reshape(2, 3))


def test_host_arrays_are_refused_inside_device_math():
    a, host = xp.ones(3), np.ones(3)
    for mix in (lambda: a + host, lambda: host * a, lambda: xp.exp(host), lambda: xp.concatenate([a, host])):
        with pytest.raises(TypeError, match="Unsupported type"):
            mix()
    with pytest.raises(TypeError):
        a[...] = host                                         # CuPy stores device arrays and scalars only
    a[...] = xp.asarray(host) * 2 + np.float32(1)             # explicit copy in; numpy scalars mix freely
    assert a.tolist() == [3.0, 3.0, 3.0]


def test_asarray_copies_host_data_and_indices_may_be_host_arrays():
    host = np.arange(4.0)
    device = xp.asarray(host)
    host[0] = 99.0
    assert device[0].item() == 0.0, "a device array never shares memory with the host array it came from"
    assert device[np.array([1, 3])].tolist() == [1.0, 3.0]


def test_reductions_and_single_elements_are_0d_device_arrays_and_reading_them_counts_a_sync():
    a = xp.arange(4.0)
    total, first = a.sum(), a[0]
    assert isinstance(total, strict.ndarray) and total.shape == () and isinstance(first, strict.ndarray)
    with strict.count_syncs() as seen:
        float(total), int(first), a.max().item(), bool(total > 1), f"{total:.1f}"
    assert sum(seen.values()) == 5, seen


def test_generators_offer_cupys_methods_only():
    rng = xp.random.default_rng(0)
    assert rng.standard_normal((2, 3), dtype=np.float32).dtype == np.float32
    assert isinstance(rng.integers(10), strict.ndarray), "CuPy's integers() without size is a 0-d array"
    for missing in ("normal", "choice", "permutation", "shuffle"):
        with pytest.raises(AttributeError):
            getattr(rng, missing)


def test_ufunc_methods_exist_only_where_cupy_has_them():
    out = xp.zeros(3)
    xp.add.at(out, xp.asarray([0, 0, 2]), xp.ones(3))
    assert out.tolist() == [2.0, 0.0, 1.0]
    with pytest.raises(AttributeError):
        xp.maximum.reduce(out)


def test_deepcopy_copies_on_the_device_and_pickling_is_refused():
    a = xp.ones(2)
    b = copy.deepcopy(a)
    b += 1
    assert a.tolist() == [1.0, 1.0] and isinstance(b, strict.ndarray)
    with pytest.raises(TypeError):
        copy.copy(a).__reduce__()


def test_device_names_and_errors():
    with pytest.raises(backend.DeviceError, match="cpu, cuda, strict"):
        backend.set_device("tpu")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(backend.DeviceError, match=r"pip install -e '\.\[gpu\]'"):
            backend.set_device("cuda")


TINY = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)


def test_a_training_step_syncs_a_bounded_number_of_times(on_strict):
    model = GPT(GPTConfig(**TINY), seed=0)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    x = np.random.default_rng(0).integers(0, 32, (4, 16))
    y = np.roll(x, -1, axis=1)
    with strict.count_syncs() as seen:
        loss = forward_backward(model, x, y)
        optimizer.step(grad_scale=clip_factor(grad_norm(model.parameters()), 1.0))
    syncs = sum(seen.values())
    print(f"host syncs in one training step (2 layers, {len(model.parameters())} parameters): {dict(seen)}")
    assert np.isfinite(loss)
    assert syncs <= 2, f"a training step should read the device for its loss and its gradient norm only, got {dict(seen)}"


def test_decoding_syncs_once_per_token(on_strict):
    model = GPT(GPTConfig(**TINY), seed=0)
    generate(model, [1, 2, 3], max_new_tokens=2, temperature=0)         # warm up (first-use tables)
    with strict.count_syncs() as seen:
        generate(model, [1, 2, 3], max_new_tokens=10, temperature=0.8, top_k=5, seed=0)
    reads = sum(seen.values())
    print(f"host reads for 10 generated tokens with the KV cache: {dict(seen)}")
    assert reads <= 10 + 1, f"one logits transfer per token (sampling runs on the host), got {dict(seen)}"


def test_cuda_without_a_visible_gpu_says_so(monkeypatch):
    """A stand-in ``cupy`` module whose runtime sees no device (as on a machine without a driver or GPU)."""
    import sys
    import types

    def fake_cupy(device_count):
        runtime = types.SimpleNamespace(getDeviceCount=device_count)
        return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    before = backend.device
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(no_driver))
    with pytest.raises(backend.DeviceError, match="finds no usable GPU .*nvidia-smi"):
        backend.set_device("cuda")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(lambda: 0))
    with pytest.raises(backend.DeviceError, match="no GPU is visible"):
        backend.set_device("cuda")
    assert backend.device == before, "a refused device leaves the current one in place"


def test_an_unusable_tinyllm_device_is_one_line_on_the_command_line():
    import importlib.util
    import os
    import subprocess
    import sys
    for value, expected in (("cuda", "pip install"), ("tpu", "cpu, cuda, strict")):
        env = {**os.environ, "TINYLLM_DEVICE": value}
        help_run = subprocess.run([sys.executable, "-m", "tinyllm", "--help"], env=env, capture_output=True,
                                  text=True, timeout=60)
        assert help_run.returncode == 0 and "Traceback" not in help_run.stderr
        run = subprocess.run([sys.executable, "-m", "tinyllm", "eval", "--ckpt", "nowhere"], env=env,
                             capture_output=True, text=True, timeout=60)
        if value == "cuda" and importlib.util.find_spec("cupy") is not None:
            continue                                         # CuPy is really here: another message, or none
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert f"TINYLLM_DEVICE={value}" in run.stderr and expected in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
