"""Data parallelism over processes (tinyllm.distributed) and ZeRO-1 (tinyllm.zero).

The promise: under ``mpiexec -n 2`` every training loop computes what one process computes on the
same global batch — the same losses and the same final weights (float64: to 1e-12) — with ZeRO-1 or
without, resumed or not; an error in one process ends the whole job at once, leaving the last
checkpoint whole.

The two-process runs are made in one launch for the whole module (tests/mpi_worker.py runs each
scenario and writes its results), the one-process runs here, in this process, with the same
functions. These tests are skipped when mpi4py or mpiexec is missing (pip install -e '.[test]'
brings both).
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mpi_worker
from tinyllm import backend, distributed, parallel
from tinyllm.autograd import Tensor
from tinyllm.checkpoint import load_metadata, load_train_state
from tinyllm.files import read_json, read_jsonl
from tinyllm.optim import AdamW
from tinyllm.safetensors import load_file
from tinyllm.train import TrainConfig, param_groups, pretrain
from tinyllm.zero import ShardedAdamW, make_adamw

REPO = Path(__file__).resolve().parents[1]


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel puts it there), else on PATH; None without
    mpi4py."""
    try:
        import importlib.util
        if importlib.util.find_spec("mpi4py") is None:
            return None
    except ImportError:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None,
                               reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")


def launch(*args, timeout=120):
    """``mpiexec -n 2 python ARGS`` with this checkout importable and one thread per process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TINYLLM_NUM_THREADS": "1"}
    return subprocess.run([MPIEXEC, "-n", "2", sys.executable, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


TWO_PROCESS_SCENARIOS = ["pretrain", "pretrain_float32", "pretrain_zero", "resumed",
                         "resumed_from_one", "classify", "classify_zero", "dpo", "grpo", "ppo"]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The scenarios' results from two processes (one launch for them all)."""
    out = tmp_path_factory.mktemp("two")
    mpi_worker.pretrain_run(out / "resumed_from_one", steps=2)    # one process saves, two resume
    result = launch("tests/mpi_worker.py", str(out), *TWO_PROCESS_SCENARIOS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The same runs in this process, its batches split over two threads (as two processes split
    them)."""
    out = tmp_path_factory.mktemp("one")
    threads, parallel.num_threads = parallel.num_threads, 2
    try:
        for name in ("pretrain", "pretrain_float32", "classify", "dpo", "grpo", "ppo"):
            mpi_worker.SCENARIOS[name](out / name)
    finally:
        parallel.num_threads = threads
    return out


LOGGED = ("loss", "val_loss", "train_loss", "grad_norm", "lr", "val_acc", "train_acc", "margin",
          "accuracy", "reward", "kl", "clip_frac", "score", "value_loss", "entropy")


def logged(run_dir, keys=LOGGED):
    """(kind, step, key, value) of every number a run logged (log.jsonl, or its records.json)."""
    path = Path(run_dir) / "log.jsonl"
    records = read_jsonl(path) if path.exists() else read_json(Path(run_dir) / "records.json")
    return [(r["kind"], r["step"], k, r[k]) for r in records for k in keys if r.get(k) is not None]


def assert_same_run(a, b, rtol=1e-12, atol=1e-12, weights_atol=None):
    """Two runs logged the same numbers at the same steps and ended with the same weights."""
    log_a, log_b = logged(a), logged(b)
    assert [entry[:3] for entry in log_a] == [entry[:3] for entry in log_b]
    np.testing.assert_allclose([e[3] for e in log_b], [e[3] for e in log_a], rtol=rtol, atol=atol)
    weights_a = load_file(Path(a) / "model.safetensors")
    weights_b = load_file(Path(b) / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        np.testing.assert_allclose(weights_b[name], weights_a[name], rtol=rtol,
                                   atol=weights_atol or atol, err_msg=name)


# ------------------------------------------------------------------------------ two processes

@needs_mpi
@pytest.mark.parametrize("name", ["pretrain", "classify", "dpo", "grpo", "ppo"])
def test_two_processes_train_as_one_process_on_the_same_global_batch_float64(two, one, name):
    assert_same_run(one / name, two / name)


@needs_mpi
def test_two_processes_train_as_one_process_in_float32_to_rounding(two, one):
    # Where the two split a batch differently (the strict device runs one process's batch whole),
    # float32 rounding differs; AdamW divides each update by √v, so an element with tiny gradients
    # moves by about lr whatever their rounding: the weights agree to ~lr/1000, the logged losses
    # to float32's precision.
    assert_same_run(one / "pretrain_float32", two / "pretrain_float32", rtol=1e-6, atol=1e-9,
                    weights_atol=1e-4)


@needs_mpi
@pytest.mark.parametrize("plain, sharded", [("pretrain", "pretrain_zero"),
                                            ("classify", "classify_zero")])
def test_zero_1_gives_the_results_of_plain_adamw(two, one, plain, sharded):
    assert_same_run(one / plain, two / sharded)


@needs_mpi
def test_a_run_resumed_by_two_processes_is_the_uninterrupted_run(two, one):
    assert_same_run(one / "pretrain", two / "resumed")
    state = load_train_state(two / "resumed", AdamW(param_groups(mpi_worker.tiny_gpt(), 0.1)))
    assert (state["step"], state["processes"], state["threads"]) == (4, 2, 1)
    # A one-process checkpoint continues on two processes: the same data, dropout and moments.
    assert_same_run(one / "pretrain", two / "resumed_from_one")


@needs_mpi
def test_an_error_in_one_process_ends_the_job_at_once_and_keeps_the_last_checkpoint(tmp_path):
    started = time.perf_counter()
    result = launch("tests/mpi_worker.py", str(tmp_path), "failure", timeout=60)
    seconds = time.perf_counter() - started

    assert result.returncode != 0 and seconds < 30
    assert result.stderr.count("injected failure in process 1 at step 5") == 1, result.stderr
    run = tmp_path / "failure"
    assert load_metadata(run / "model.safetensors")["step"] == "4"      # step 4's checkpoint, whole
    assert load_train_state(run, AdamW(param_groups(mpi_worker.tiny_gpt(), 0.1)))["step"] == 4
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


@needs_mpi
def test_the_command_line_under_mpiexec_prints_and_saves_once(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    result = launch("-m", "tinyllm", "pretrain", "--data", str(text), "--tokenizer", "char",
                    "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "8",
                    "--steps", "2", "--batch-size", "4", "--eval-interval", "2",
                    "--eval-iters", "1", "--sample-tokens", "4", "--zero", "1",
                    "--out", str(tmp_path / "run"))

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: 2 steps") == 1, result.stdout
    assert result.stdout.count("data: ") == 1
    assert "ZeRO-1: AdamW moments" in result.stderr and "in each of 2 processes" in result.stderr
    assert load_metadata(tmp_path / "run" / "model.safetensors")["step"] == "2"
    records = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]


# ------------------------------------------------------------------------------ one process

def test_without_mpiexec_the_world_is_one_process_and_mpi4py_is_not_imported():
    world = distributed.world()
    assert (world.rank, world.size, world.comm) == (0, 1, None)
    assert distributed.shard(5) == slice(0, 5)
    assert distributed.is_main() and not distributed.active()
    assert distributed.all_reduce_gradients([], 2.5, 3.0) == [2.5, 3.0]
    assert "mpi4py" not in sys.modules


def test_a_launched_process_without_mpi4py_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # import mpi4py fails
    expected = r"one of 2 .*pip install 'tinyllm\[mpi\]'"
    with pytest.raises(distributed.DistributedError, match=expected):
        distributed.world()


def test_each_process_takes_a_contiguous_share_of_the_rows(monkeypatch):
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "_world", distributed.World(rank=rank, size=3))
        shares.append(distributed.shard(8))
    assert shares == [slice(0, 2), slice(2, 5), slice(5, 8)]


def test_a_global_batch_that_does_not_divide_by_the_processes_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "_world", distributed.World(rank=0, size=4))
    ids = mpi_worker.token_ids()
    expected = r"--batch-size 6 does not divide by the 4 processes.* such as 4 or 8"
    with pytest.raises(ValueError, match=expected):
        pretrain(mpi_worker.tiny_gpt(), ids[:300], ids[300:], TrainConfig(batch_size=6),
                 progress=False)


def test_buckets_hold_the_parameters_end_to_end_in_equal_chunks(rng):
    shapes = [(3, 4), (5,), (2, 2), (7,)]
    params = [Tensor(rng.normal(size=shape), requires_grad=True) for shape in shapes]
    buckets = distributed.make_buckets(params, parts=4, bucket_bytes=17 * params[0].data.itemsize)
    assert [len(b.params) for b in buckets] == [2, 2]                  # 12 + 5 numbers, then 4 + 7
    assert [(b.length, b.chunk) for b in buckets] == [(20, 5), (12, 3)]   # padded to multiples of 4
    for bucket in buckets:
        flat = bucket.flatten([p.data for p in bucket.params])
        used = sum(p.data.size for p in bucket.params)
        assert backend.to_numpy(flat)[used:].tolist() == [0.0] * (bucket.length - used)
        for p, view in zip(bucket.params, bucket.views(flat)):
            np.testing.assert_array_equal(backend.to_numpy(view), p.numpy())


def _steps(optimizer, model, steps=3):
    rng = np.random.default_rng(5)
    for _ in range(steps):
        x = backend.asarray(rng.integers(0, mpi_worker.VOCAB, (2, 8)))
        model(x, x)[1].backward()
        if isinstance(optimizer, ShardedAdamW):
            optimizer.reduce_gradients()
        optimizer.step(grad_scale=0.5)                       # as if clipped
        optimizer.zero_grad()


def test_sharded_adamw_in_one_process_updates_and_saves_exactly_as_adamw(float64):
    plain_model, sharded_model = mpi_worker.tiny_gpt(), mpi_worker.tiny_gpt()
    plain = AdamW(param_groups(plain_model, 0.1), lr=1e-2, betas=(0.9, 0.99))
    sharded = make_adamw(param_groups(sharded_model, 0.1), 1, lr=1e-2, betas=(0.9, 0.99),
                         bucket_bytes=2000)
    assert isinstance(sharded, ShardedAdamW) and len(sharded.buckets) > 1

    _steps(plain, plain_model)
    _steps(sharded, sharded_model)

    for a, b in zip(plain_model.parameters(), sharded_model.parameters()):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
    plain_state, sharded_state = plain.state_dict(), sharded.state_dict()
    assert list(sharded_state) == list(plain_state)
    for key, value in plain_state.items():
        np.testing.assert_array_equal(backend.to_numpy(sharded_state[key]), backend.to_numpy(value),
                                      err_msg=key)
    restored = make_adamw(param_groups(mpi_worker.tiny_gpt(), 0.1), 1, bucket_bytes=2000)
    restored.load_state_dict(plain_state)
    for mine, theirs in zip(restored.exp_avg_sq, sharded.exp_avg_sq):
        np.testing.assert_array_equal(backend.to_numpy(mine), backend.to_numpy(theirs))


def test_zero_takes_only_0_or_1():
    with pytest.raises(ValueError, match="zero must be 0 .* or 1"):
        make_adamw([Tensor(np.ones(2), requires_grad=True)], 2)
