"""Data parallelism over CPU threads: parallel.data_parallel, Tensor.backward(leaf_grads=...),
train.data_parallel_backward and forward_backward (a training step's batch split into row blocks that threads
run side by side), and the finetuning loop that uses them.

Two threads are forced, so the split happens even on a one-core machine; the results must equal running the
batch whole (up to float rounding) and be the same on every run.
"""

import threading

import numpy as np
import pytest

from tinyllm import backend, parallel
from tinyllm.autograd import Tensor, no_grad
from tinyllm.model import GPT, GPTConfig
from tinyllm.functional import cross_entropy
from tinyllm.train import data_parallel_backward, evaluate, forward_backward
from tinyllm.backend import to_numpy

TINY = dict(vocab_size=30, block_size=8, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(parallel, "num_threads", 2)


def _blas_threads():
    """NumPy's OpenBLAS thread count, or None when tinyllm cannot read it (another BLAS)."""
    parallel.data_parallel(lambda rows: None, np.zeros(2))     # looks the functions up once (needs 2 rows)
    return parallel._openblas[1]() if parallel._openblas else None


def test_data_parallel_runs_row_blocks_in_threads_with_one_blas_thread(two_threads):
    before = _blas_threads()
    seen = parallel.data_parallel(lambda a, b: (a.copy(), b.copy(), threading.get_ident(), _blas_threads()),
                                 np.arange(5.0), np.arange(5) * 10)
    if before is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads tinyllm can set: data_parallel runs whole")
    assert len(seen) == 2
    assert np.array_equal(np.concatenate([s[0] for s in seen]), np.arange(5.0))     # row order kept
    assert np.array_equal(np.concatenate([s[1] for s in seen]), np.arange(5) * 10)  # arrays split alike
    assert seen[0][2] != seen[1][2]                                                  # two threads
    assert [s[3] for s in seen] == [1, 1]                                           # each with one BLAS thread
    assert _blas_threads() == before                                                 # restored afterwards


def test_data_parallel_runs_whole_with_one_thread_or_inside_itself(monkeypatch, two_threads):
    outer = parallel.data_parallel(lambda a: len(parallel.data_parallel(lambda b: b, a)), np.arange(4.0))
    assert all(inner == 1 for inner in outer)                # nested: each block runs its rows whole
    monkeypatch.setattr(parallel, "num_threads", 1)
    assert len(parallel.data_parallel(lambda a: a, np.arange(4.0))) == 1


@pytest.mark.skipif(backend.device != "cpu", reason="CPU threads: on other devices data_parallel runs whole")
def test_data_parallel_passes_on_a_blocks_error_and_restores_blas_threads(two_threads):
    before = _blas_threads()

    def fail_on_second_block(a):
        if a[0] >= 2:
            raise ValueError(f"bad block starting at {a[0]}")
        return a

    with pytest.raises(ValueError, match="bad block starting at 2"):
        parallel.data_parallel(fail_on_second_block, np.arange(4.0))
    assert _blas_threads() == before
    assert len(parallel.data_parallel(lambda a: a, np.arange(4.0))) == (2 if before is not None else 1)


def test_worker_threads_get_the_callers_no_grad():
    """no_grad is per thread: the blocks that run on the pool see the caller's setting."""
    x = Tensor(np.ones((4, 2)), requires_grad=True)
    with no_grad():
        recorded = parallel._run_on_threads(lambda rows: (rows * 2.0).requires_grad, [[x], [x], [x]])
    assert recorded == [False, False, False]
    assert parallel._run_on_threads(lambda rows: (rows * 2.0).requires_grad, [[x], [x]]) == [True, True]


@pytest.mark.skipif(backend.device != "cpu", reason="CPU threads: on other devices it runs in order")
def test_for_each_does_every_item_once_on_threads_with_balanced_loads(two_threads):
    done = {}
    sizes = [5, 1, 3, 2, 4]
    parallel.for_each(lambda i: done.setdefault(i, threading.get_ident()), list(range(5)), sizes)
    assert sorted(done) == [0, 1, 2, 3, 4]
    threads = set(done.values())
    assert len(threads) == 2
    loads = sorted(sum(sizes[i] for i in done if done[i] == t) for t in threads)
    assert loads == [7, 8]                                  # {5, 2} and {4, 3, 1}


def test_adamw_on_two_threads_equals_one(monkeypatch):
    from tinyllm.optim import AdamW
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(parallel, "num_threads", threads)
        model = GPT(GPTConfig(**TINY), seed=0)
        optimizer = AdamW([{"params": model.parameters()[:3], "weight_decay": 0.1},
                           {"params": model.parameters()[3:], "weight_decay": 0.0}], lr=1e-2)
        r = np.random.default_rng(0)
        for _ in range(2):
            for p in model.parameters():
                p.grad = backend.asarray(r.standard_normal(p.shape).astype(p.data.dtype))
            optimizer.step(grad_scale=0.5)
        results.append([to_numpy(p.data) for p in model.parameters()])
    for one, two in zip(*results):
        assert np.array_equal(one, two)


def test_collected_leaf_gradients_stay_off_the_leaves_until_added():
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    grads = {}
    ((w * w).sum() + w.sum()).backward(leaf_grads=grads)     # two paths into w: 2w + 1
    assert w.grad is None
    assert list(grads) == [id(w)] and np.allclose(to_numpy(grads[id(w)][1]), [3.0, 5.0])
    parallel.add_leaf_grads(grads)
    parallel.add_leaf_grads(grads)
    assert np.allclose(to_numpy(w.grad), [6.0, 10.0])


def test_thread_rng_replaces_the_global_generator_in_its_thread_only():
    own = backend.rng(1)
    with backend.thread_rng(own):
        assert backend.global_rng() is own
        other = []
        worker = threading.Thread(target=lambda: other.append(backend.global_rng()))
        worker.start()
        worker.join()
        assert other[0] is not own
    assert backend.global_rng() is not own


def _batch(rows=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, TINY["vocab_size"], (rows, 8)), rng.integers(0, TINY["vocab_size"], (rows, 8))


@pytest.mark.usefixtures("float64")
def test_forward_backward_equals_the_whole_batch(two_threads):
    x, y = _batch(rows=5)                                    # 5 rows: blocks of 2 and 3, weighted 2/5 and 3/5
    split, whole = GPT(GPTConfig(**TINY), seed=0), GPT(GPTConfig(**TINY), seed=0)

    loss = forward_backward(split, x, y, scale=0.5)

    _, expected = whole(x, y)
    expected.backward(np.asarray(0.5))
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    for (name, p), q in zip(split.named_parameters(), whole.parameters()):
        np.testing.assert_allclose(to_numpy(p.grad), to_numpy(q.grad), rtol=1e-9, atol=1e-12, err_msg=name)


def test_forward_backward_with_dropout_is_the_same_on_every_run(two_threads):
    runs = []
    for _ in range(2):
        backend.manual_seed(7)
        model = GPT(GPTConfig(**TINY, dropout=0.3), seed=0)
        loss = forward_backward(model, *_batch())
        runs.append((loss, [to_numpy(p.grad) for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    if backend.device == "cuda":      # CuPy's add.at (the embedding's backward) adds with atomics,
        for a, b in zip(runs[0][1], runs[1][1]):          # in no fixed order: the last bits vary
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    else:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.usefixtures("float64")
def test_dropout_masks_do_not_depend_on_how_the_batch_is_split(monkeypatch):
    # Each row draws its masks from its own generator (backend.RowGenerators), so one, two or three
    # blocks of rows (threads, or processes: tinyllm.distributed) compute the same step.
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(parallel, "num_threads", threads)
        backend.manual_seed(7)
        model = GPT(GPTConfig(**TINY, dropout=0.3), seed=0)
        loss = forward_backward(model, *_batch(rows=6))
        runs.append((loss, [to_numpy(p.grad) for p in model.parameters()]))
    for loss, grads in runs[1:]:
        assert loss == pytest.approx(runs[0][0], rel=1e-12)
        for a, b in zip(grads, runs[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("coef", [0.0, 0.01])
def test_a_mixture_of_experts_batch_splits_over_the_cores_like_any_other(two_threads, coef):
    """Each block's loss adds the balancing loss of its own rows' forward (GPT.trunk), weighted like
    its cross-entropy: without that term the split step is the whole batch's; with it, the step is
    Σ_k (rows_k / B)·(CE_k + aux_k), blocks of 2 and 3 rows."""
    moe = dict(TINY, mlp="moe", n_expert=4, expert_top_k=2, norm="rmsnorm", pos="rope", bias=False,
               aux_loss_coef=coef)
    model, reference = GPT(GPTConfig(**moe), seed=0), GPT(GPTConfig(**moe), seed=0)
    x, y = _batch(rows=5)

    loss = forward_backward(model, x, y)
    if not parallel._openblas:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads tinyllm can set: nothing is split")

    expected = 0.0
    for rows in (slice(0, 2), slice(2, 5)):
        _, block = reference(x[rows], y[rows])                # CE + this block's balancing loss
        weighted = block * ((rows.stop - rows.start) / 5)
        weighted.backward()
        expected += weighted.item()
    assert loss == pytest.approx(expected, rel=1e-12)
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(to_numpy(p.grad), to_numpy(q.grad), rtol=1e-10, atol=1e-13)
    if coef == 0:                                             # nothing but the cross-entropy: the whole batch
        whole = GPT(GPTConfig(**moe), seed=0)
        whole(x, y)[1].backward()
        for p, q in zip(model.parameters(), whole.parameters()):
            np.testing.assert_allclose(to_numpy(p.grad), to_numpy(q.grad), rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_evaluate_split_over_threads_equals_one_thread(monkeypatch):
    model, ids = GPT(GPTConfig(**TINY), seed=0), np.random.default_rng(0).integers(0, TINY["vocab_size"], 300)
    monkeypatch.setattr(parallel, "num_threads", 1)
    one = evaluate(model, ids, batch_size=5, context=8)
    monkeypatch.setattr(parallel, "num_threads", 2)
    two = evaluate(model, ids, batch_size=5, context=8)
    assert two["tokens"] == one["tokens"] and two["loss"] == pytest.approx(one["loss"], rel=1e-12)


@pytest.mark.usefixtures("float64")
def test_a_loss_over_unmasked_targets_splits_by_their_count(two_threads):
    """Instruction tuning's loss is a mean over the targets that are not masked (-100), and the rows hold
    different numbers of them: weighting blocks by that count gives the whole batch's gradient; by rows it
    would not (the check that the weighting matters)."""
    x, y = _batch(rows=4)
    y[0, :7] = y[1, :5] = -100                               # block 1 (rows 0-1): 4 targets; block 2: 16
    def block_loss(model):
        return lambda x, y: cross_entropy(model(x)[0], y, ignore_index=-100)
    targets = lambda x, y: int((y != -100).sum())
    whole = GPT(GPTConfig(**TINY), seed=0)
    expected = block_loss(whole)(x, y)
    expected.backward()
    for weight, matches in ((targets, True), (None, False)):
        split = GPT(GPTConfig(**TINY), seed=0)
        loss = data_parallel_backward(block_loss(split), x, y, weight=weight)
        if not parallel._openblas:
            pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads tinyllm can set: nothing is split")
        assert (loss == pytest.approx(expected.item(), rel=1e-12)) is matches
        assert np.allclose(split.wte.weight.grad, whole.wte.weight.grad, rtol=1e-9, atol=1e-12) is matches


def _on_threads(threads, monkeypatch, run):
    monkeypatch.setattr(parallel, "num_threads", threads)
    backend.manual_seed(0)
    return run()


@pytest.mark.usefixtures("float64")
def test_instruction_finetuning_split_over_two_threads_matches_one(monkeypatch):
    """fit splits each batch over the cores, weighting blocks by their response targets (``targets_of``)."""
    from tinyllm.data.instructions import builtin_instructions, format_prompt
    from tinyllm.finetune import FinetuneConfig, train_instructions
    from tinyllm.tokenizer import BPETokenizer
    train, _, _ = builtin_instructions(12, 0, 0, seed=0, kinds=("reverse", "count"))   # 2 to 11 response targets
    tok = BPETokenizer.train("".join(format_prompt(r) + r["output"] for r in train), 400, special_tokens=("<|endoftext|>",))

    def run():
        records = []
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16), seed=0)
        train_instructions(model, tok, train, config=FinetuneConfig(epochs=2, batch_size=6, lr=1e-2, warmup=1),
                           progress=False, log=records.append)
        return [r["loss"] for r in records if r["kind"] == "train"]
    one, two = _on_threads(1, monkeypatch, run), _on_threads(2, monkeypatch, run)
    np.testing.assert_allclose(two, one, rtol=1e-9)
