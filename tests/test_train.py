"""Tests of pretraining (tinyllm.train), its data pipeline (tinyllm.data.tokens) and its command line
(``tinyllm pretrain / eval / plot / demo``).

The promises under test: a resumed run is the uninterrupted run, bit for bit; a run that blows up stops,
says where, and leaves its last good checkpoint usable; the logged numbers mean what they say; and every
mistake a user can make with data or flags ends in a message that names the problem.
"""

import dataclasses
import math
import re
import shutil

import numpy as np
import pytest

import tinyllm.train as train_module
from tinyllm import backend, parallel
from tinyllm.backend import to_numpy
from tinyllm.autograd import no_grad
from tinyllm.checkpoint import load_pretrained, load_train_state
from tinyllm.cli import build_parser, main
from tinyllm.data.text import builtin_corpus
from tinyllm.data.tokens import TokenWindows, check_length, read_text, split_train_val, tokenize
from tinyllm.files import read_jsonl
from tinyllm.model import GPT, GPTConfig
from tinyllm.optim import AdamW, clip_grad_norm, warmup_cosine_lr
from tinyllm.safetensors import load_file
from tinyllm.tokenizer import CharTokenizer
from tinyllm.train import TrainConfig, TrainingDiverged, evaluate, param_groups, pretrain

VOCAB = 40
TINY = dict(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=16)


def tiny_model(dropout=0.0, seed=0, **overrides):
    return GPT(GPTConfig(**{**TINY, "dropout": dropout, **overrides}), seed=seed)


def token_ids(n=600, seed=0):
    """Some token ids with structure to learn (a noisy repeating pattern), as uint16 like real data."""
    rng = np.random.default_rng(seed)
    pattern = np.tile(np.arange(VOCAB), n // VOCAB + 1)[:n]
    noise = rng.integers(0, VOCAB, size=n)
    return np.where(rng.random(n) < 0.2, noise, pattern).astype(np.uint16)


def quick(**overrides) -> TrainConfig:
    """A TrainConfig small enough for a test: a handful of steps on batches of 4."""
    settings = dict(steps=10, batch_size=4, lr=1e-2, min_lr=1e-3, warmup=3, eval_interval=5, eval_iters=2,
                    log_interval=100, sample_tokens=0, seed=0)
    return TrainConfig(**{**settings, **overrides})


def train_records(run_dir):
    """The training log without the timing field (which no two runs share)."""
    records = read_jsonl(run_dir / "log.jsonl")
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def run_pretrain(model, run_dir, config, ids=None, **kwargs):
    ids = token_ids() if ids is None else ids
    train_ids, val_ids = split_train_val(ids, 0.2)
    return pretrain(model, train_ids, val_ids, config, run_dir=run_dir, progress=False, **kwargs)


# ====================================================================== resuming
class Interrupted(Exception):
    """Stands for Ctrl-C or a killed job (an Exception, so pytest's own KeyboardInterrupt handling stays out)."""


@pytest.mark.skipif(backend.device == "cuda", reason="bit-for-bit resuming is promised on the CPU (CuPy's generator states are not saved)")
def test_a_resumed_run_reproduces_the_uninterrupted_run_exactly(tmp_path, monkeypatch):
    # Dropout > 0, so the random state of dropout must be saved and restored too, not only the data order.
    config = quick(steps=10, eval_interval=5)
    run_pretrain(tiny_model(dropout=0.1), tmp_path / "whole", config)

    # The same run, killed during step 8 — after its checkpoint at step 5 and after logging steps 6 and 7,
    # which the resumed run must redo (and log once) — then resumed with the same settings.
    real_norm = train_module.global_grad_norm
    norms = {"count": 0}

    def norm_then_die(params):
        norms["count"] += 1
        if norms["count"] == 8:
            raise Interrupted
        return real_norm(params)
    monkeypatch.setattr(train_module, "global_grad_norm", norm_then_die)
    with pytest.raises(Interrupted):
        run_pretrain(tiny_model(dropout=0.1), tmp_path / "split", config)
    monkeypatch.setattr(train_module, "global_grad_norm", real_norm)
    assert train_records(tmp_path / "split")[-1]["step"] == 7
    summary = run_pretrain(tiny_model(dropout=0.1, seed=99), tmp_path / "split", config, resume=True)

    assert summary["start_step"] == 5
    whole, split = train_records(tmp_path / "whole"), train_records(tmp_path / "split")
    assert [r["step"] for r in split if r["kind"] == "train"] == list(range(1, 11))
    assert split == whole, "losses, learning rates or gradient norms differ after resuming"
    whole_weights, split_weights = load_file(tmp_path / "whole/model.safetensors"), load_file(tmp_path / "split/model.safetensors")
    for name in whole_weights:
        assert np.array_equal(whole_weights[name], split_weights[name]), f"{name} differs after resuming"


def test_resuming_on_another_thread_count_says_the_losses_may_differ_in_the_last_digits(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "num_threads", 2)
    run_pretrain(tiny_model(), tmp_path, quick(steps=2, eval_interval=1))
    monkeypatch.setattr(parallel, "num_threads", 3)

    summary = run_pretrain(tiny_model(), tmp_path, quick(steps=3, eval_interval=1), resume=True)

    assert "saved with 2 threads and resumes with 3" in summary["note"]
    monkeypatch.setattr(parallel, "num_threads", 3)
    assert "note" not in run_pretrain(tiny_model(), tmp_path, quick(steps=4, eval_interval=1), resume=True)


def test_resuming_with_a_different_model_config_names_the_key(tmp_path):
    run_pretrain(tiny_model(), tmp_path, quick(steps=2))

    with pytest.raises(ValueError, match=r"different model config: n_embd: 16 \(saved\) vs 32 \(now\)"):
        run_pretrain(tiny_model(n_embd=32), tmp_path, quick(steps=4), resume=True)


def test_resuming_with_different_training_settings_names_the_key(tmp_path):
    run_pretrain(tiny_model(), tmp_path, quick(steps=2))

    with pytest.raises(ValueError, match=r"different training settings: lr: 0.01 \(saved\) vs 0.02 \(now\)"):
        run_pretrain(tiny_model(), tmp_path, quick(steps=4, lr=0.02), resume=True)


def test_resuming_a_finished_run_asks_for_more_steps(tmp_path):
    run_pretrain(tiny_model(), tmp_path, quick(steps=2))

    with pytest.raises(ValueError, match=r"already finished 2 steps; ask for more with --steps"):
        run_pretrain(tiny_model(), tmp_path, quick(steps=2), resume=True)


# ====================================================================== divergence
def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    # The run saves at step 3; at step 5 the loss turns into NaN (as after an exploding update).
    monkeypatch.setattr(parallel, "num_threads", 1)           # one forward per step (no data-parallel blocks)
    model = tiny_model()
    real_forward = model.forward
    calls = {"train": 0}

    def forward(idx, targets=None, **kwargs):
        logits, loss = real_forward(idx, targets, **kwargs)
        if model.training:
            calls["train"] += 1
            if calls["train"] == 5:
                loss = loss * float("nan")
        return logits, loss
    model.forward = forward

    with pytest.raises(TrainingDiverged, match=r"diverged at step 5: loss nan.*last good checkpoint"):
        run_pretrain(model, tmp_path, quick(steps=10, eval_interval=3))

    restored, _ = load_pretrained(tmp_path)
    optimizer = AdamW(param_groups(restored, 0.1))
    assert load_train_state(tmp_path, optimizer)["step"] == 3
    logged = [(r["kind"], r["step"]) for r in train_records(tmp_path)]
    assert logged[-2:] == [("eval", 3), ("train", 4)]
    assert all(step < 5 for _, step in logged), "the diverged step must not be logged"
    with no_grad():
        _, loss = restored(np.zeros((1, 8), dtype=np.int64), np.zeros((1, 8), dtype=np.int64))
    assert math.isfinite(loss.item())


# ====================================================================== what is logged
def test_evaluate_reports_mean_loss_perplexity_and_token_count():
    model = tiny_model()
    ids = token_ids(41)                 # windows of 8 inputs start at 0, 8, 16, 24, 32: 5 windows, 40 tokens

    result = evaluate(model, ids, batch_size=2, context=8)

    with no_grad():
        losses = [model(ids[s:s + 8][None].astype(np.int64), ids[s + 1:s + 9][None].astype(np.int64))[1].item()
                  for s in range(0, 33, 8)]
    assert result["tokens"] == 40
    assert result["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))


def test_evaluate_with_max_batches_counts_only_those_tokens():
    result = evaluate(tiny_model(), token_ids(401), batch_size=2, context=8, max_batches=3)

    assert result["tokens"] == 3 * 2 * 8


def test_evaluate_restores_the_training_mode():
    model = tiny_model(dropout=0.1)

    evaluate(model, token_ids(100), batch_size=2, context=8)

    assert model.training


def test_learning_rate_warms_up_linearly_then_decays_along_a_cosine(tmp_path):
    config = quick(steps=8, warmup=3, lr=0.01, min_lr=0.001)
    run_pretrain(tiny_model(), tmp_path, config)

    logged = [r["lr"] for r in train_records(tmp_path) if r["kind"] == "train"]

    warmup = [0.01 * 1 / 3, 0.01 * 2 / 3, 0.01]                                     # steps 0, 1, 2
    cosine = [0.001 + 0.5 * (1 + math.cos(math.pi * (s - 3) / 5)) * 0.009 for s in range(3, 8)]
    assert logged == pytest.approx(warmup + cosine)
    assert logged == [warmup_cosine_lr(s, 0.01, 0.001, 3, 8) for s in range(8)]


def test_the_log_has_train_and_eval_records_and_the_run_is_plotted(tmp_path):
    summary = run_pretrain(tiny_model(), tmp_path, quick(steps=4, eval_interval=2))

    records = train_records(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4), ("eval", 4)]
    assert set(records[1]) == {"kind", "step", "loss", "lr", "grad_norm"}
    assert records[0]["val_ppl"] == pytest.approx(math.exp(records[0]["val_loss"]))
    assert summary["first_val"]["loss"] == records[0]["val_loss"]
    assert summary["plot"].endswith("loss.svg") and (tmp_path / "loss.svg").exists()


def test_a_new_run_starts_a_new_log(tmp_path):
    run_pretrain(tiny_model(), tmp_path, quick(steps=3, eval_interval=100))
    run_pretrain(tiny_model(), tmp_path, quick(steps=2, eval_interval=100))

    assert [r["step"] for r in train_records(tmp_path)] == [0, 1, 2, 2]


def test_the_first_training_loss_is_about_ln_vocab(tmp_path):
    run_pretrain(tiny_model(), tmp_path, quick(steps=1))

    first = train_records(tmp_path)[1]

    assert first["loss"] == pytest.approx(math.log(VOCAB), abs=0.1)


def test_two_half_batches_accumulate_to_the_gradient_of_one_full_batch(float64, tmp_path):
    # Each micro-batch's loss is scaled by 1/grad_accum before backward, so the summed gradient is the
    # gradient of the mean over all B·grad_accum windows. The data generator draws the same 4 offsets
    # whether asked for 4 at once or 2 + 2, so both runs see the same windows.
    run_pretrain(tiny_model(), tmp_path / "full", quick(steps=1, batch_size=4))
    run_pretrain(tiny_model(), tmp_path / "accum", quick(steps=1, batch_size=2, grad_accum=2))

    full, accumulated = train_records(tmp_path / "full")[1], train_records(tmp_path / "accum")[1]

    assert accumulated["loss"] == pytest.approx(full["loss"], rel=1e-12)
    assert accumulated["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-12)


def test_weight_decay_applies_to_matrices_only():
    decayed, not_decayed = param_groups(tiny_model(), 0.1)

    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"]) and all(p.ndim == 1 for p in not_decayed["params"])


# ====================================================================== data
def test_a_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no data file or directory at '.*nothing\.txt'"):
        read_text(tmp_path / "nothing.txt")


@pytest.mark.parametrize("contents", [b"", b"  \n\n\t"], ids=["empty", "blank"])
def test_an_empty_data_file_is_an_error(tmp_path, contents):
    path = tmp_path / "empty.txt"
    path.write_bytes(contents)

    with pytest.raises(ValueError, match=r"data '.*empty\.txt' is empty"):
        read_text(path)


def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond line\ncaf\u00e9\n".encode("latin-1"))

    with pytest.raises(ValueError, match=r"data file '.*latin1\.txt' is not valid UTF-8: byte 26 \(line 3\)"):
        read_text(path)


def test_a_directory_of_text_files_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not text data")

    assert read_text(tmp_path) == "first\n\nsecond"


def test_text_shorter_than_one_window_says_both_numbers():
    with pytest.raises(ValueError, match=r"the training split has 10 tokens; one training window needs 17"):
        check_length(np.zeros(10, dtype=np.uint16), 16, "the training split")


def test_pretrain_checks_that_both_splits_hold_a_window(tmp_path):
    ids = token_ids(60)                                 # 48 train / 12 val tokens with a 0.2 split
    with pytest.raises(ValueError, match=r"the validation split has 12 tokens; one training window needs 17"):
        run_pretrain(tiny_model(block_size=16), tmp_path, quick(), ids=ids)


def test_windows_are_inputs_and_targets_shifted_by_one():
    ids = np.arange(20, dtype=np.uint16)

    x, y = TokenWindows(ids, context=4)[1]

    assert x.tolist() == [4, 5, 6, 7] and y.tolist() == [5, 6, 7, 8]


class CountingTokenizer:
    """A character tokenizer that counts how often it is asked to encode."""

    def __init__(self, text):
        self.inner = CharTokenizer.from_text(text)
        self.vocab_size = self.inner.vocab_size
        self.encode_calls = 0

    def encode(self, text, allowed_special="none_raise"):
        self.encode_calls += 1
        return self.inner.encode(text, allowed_special)

    def save(self, path):
        self.inner.save(path)


def test_tokenize_reuses_its_cache_file(tmp_path):
    text = "the cat sat on the mat. " * 20
    tokenizer = CountingTokenizer(text)

    first = tokenize(text, tokenizer, cache_dir=tmp_path)
    second = tokenize(text, tokenizer, cache_dir=tmp_path)

    assert tokenizer.encode_calls == 1, "the second call should load the cached ids instead of encoding"
    assert len(list(tmp_path.glob("tokens-*.npy"))) == 1
    assert np.array_equal(first, second) and second.dtype == np.uint16
    tokenize(text[:-5], tokenizer, cache_dir=tmp_path)      # other text: a new entry, not a stale hit
    assert tokenizer.encode_calls == 2


# ====================================================================== command line
CLI_STEPS = ["--preset", "nano", "--steps", "3", "--context", "16", "--tokenizer", "char", "--sample-tokens", "0",
             "--batch-size", "4", "--eval-iters", "2"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One tiny `tinyllm pretrain` run, shared by the command-line tests below."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data.txt"
    data.write_text(builtin_corpus()[:4000], encoding="utf-8")
    out = root / "run"
    code = main(["pretrain", "--data", str(data), "--out", str(out), *CLI_STEPS])
    assert code == 0
    return data, out


def test_cli_pretrain_writes_a_complete_run_directory(cli_run):
    _, out = cli_run

    written = {p.name for p in out.iterdir()}

    assert written >= {"config.json", "model.safetensors", "tokenizer.json", "train_state.safetensors",
                       "log.jsonl", "loss.svg"}
    model, tokenizer = load_pretrained(out)
    assert (model.config.n_layer, model.config.block_size) == (2, 16)
    assert model.config.vocab_size == tokenizer.vocab_size


def test_cli_pretrain_refuses_to_overwrite_a_run(cli_run, capsys):
    data, out = cli_run
    before = (out / "model.safetensors").read_bytes()

    code = main(["pretrain", "--data", str(data), "--out", str(out), *CLI_STEPS])

    assert code == 2
    assert re.search(r"already holds a run; pass --resume", capsys.readouterr().err)
    assert (out / "model.safetensors").read_bytes() == before


def test_cli_resume_continues_a_run_to_more_steps(cli_run, tmp_path, capsys):
    data, out = cli_run
    run = tmp_path / "run"
    shutil.copytree(out, run)                              # leave the shared run as it is

    code = main(["pretrain", "--data", str(data), "--out", str(run), "--resume", *CLI_STEPS, "--steps", "5"])

    assert code == 0, capsys.readouterr().err
    steps = [r["step"] for r in read_jsonl(run / "log.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5]


def test_cli_eval_prints_loss_and_perplexity(cli_run, capsys):
    data, out = cli_run

    code = main(["eval", "--ckpt", str(out), "--data", str(data), "--max-batches", "2"])

    printed = capsys.readouterr().out
    match = re.search(r"loss (\d+\.\d+) \| perplexity (\d+\.\d+) \| (\d+) tokens evaluated", printed)
    assert code == 0 and match, printed
    assert float(match[2]) == pytest.approx(math.exp(float(match[1])), rel=1e-3)
    assert int(match[3]) == 2 * 8 * 16


def test_cli_eval_val_fraction_scores_only_the_held_out_tail(cli_run, capsys):
    data, out = cli_run
    tokens = {}
    for flags in ([], ["--val-fraction", "0.25"]):
        assert main(["eval", "--ckpt", str(out), "--data", str(data), *flags]) == 0
        tokens[bool(flags)] = int(re.search(r"([\d,]+) tokens evaluated", capsys.readouterr().out)[1].replace(",", ""))
    assert 0 < tokens[True] < tokens[False] / 3             # a quarter of the text, in whole windows


def test_cli_plot_redraws_the_loss_curve(cli_run, capsys, tmp_path):
    _, out = cli_run

    code = main(["plot", str(out), "--out", str(tmp_path / "curve.svg")])

    assert code == 0 and (tmp_path / "curve.svg").read_text().lstrip().startswith("<")


def test_cli_reports_data_errors_without_a_traceback(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short for a window of 16 characters, once the tail is held out")

    code = main(["pretrain", "--data", str(short), "--out", str(tmp_path / "run"), *CLI_STEPS])

    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"tinyllm pretrain: error: the validation split has \d+ tokens; one training window needs 17", err)


def test_cli_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    code = main(["pretrain", "--resume", "--out", str(tmp_path / "none"), *CLI_STEPS])

    assert code == 2 and "cannot resume: there is no run directory" in capsys.readouterr().err


def subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


@pytest.mark.parametrize("command", ["pretrain", "eval", "plot", "demo"])
def test_help_explains_every_flag(command, capsys):
    code = main([command, "--help"])
    text = capsys.readouterr().out

    assert code == 0
    for action in subcommands()[command]._actions:
        for flag in action.option_strings:
            assert flag in text, f"`tinyllm {command} --help` does not mention {flag}"
        assert action.help, f"`tinyllm {command}`: {action.option_strings or action.dest} has no help text"


def test_help_shows_the_defaults():
    help_text = " ".join(subcommands()["pretrain"].format_help().split())

    for shown in ["--steps STEPS training steps (default: 1000)", "(default: mini)", "(default: 12)", "(default: bpe)"]:
        assert shown in help_text or shown.split(" (")[-1] in help_text, f"`tinyllm pretrain --help` lacks {shown!r}"


def test_cli_flags_cover_every_training_setting():
    # pretrain builds TrainConfig from flags of the same names, so a new setting needs a new flag.
    args = subcommands()["pretrain"].parse_args([])

    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(vars(args))


def test_training_matches_pytorch_step_for_step(float64):
    """The same GPT, initial weights, batches, AdamW groups, schedule and clipping in PyTorch: 40 steps of
    tinyllm's training give the same losses and weights (float64, so any difference is a real one)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # tiny tensors: threads only wait on each other
    try:
        _train_both(torch, F)
    finally:
        torch.set_num_threads(threads)


def _train_both(torch, F):
    V, T, C, L, H, B = 20, 8, 16, 2, 2, 4
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, bias=False), seed=0)
    w = {k: torch.tensor(to_numpy(v), requires_grad=True) for k, v in model.state_dict().items()}

    def layer_norm(x, name):
        return F.layer_norm(x, (C,), w[name])

    def torch_loss(x, y):                       # GPT-2 with tanh GELU, pre-norm blocks, tied head, no biases
        h = w["wte.weight"][x] + w["wpe.weight"][torch.arange(T)]
        for i in range(L):
            p = f"blocks.{i}."
            q, k, v = (z.view(B, T, H, C // H).transpose(1, 2)
                       for z in (layer_norm(h, p + "ln_1.weight") @ w[p + "attn.qkv.weight"].T).split(C, 2))
            y_att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            h = h + y_att @ w[p + "attn.proj.weight"].T
            m = F.gelu(layer_norm(h, p + "ln_2.weight") @ w[p + "mlp.fc.weight"].T, approximate="tanh")
            h = h + m @ w[p + "mlp.proj.weight"].T
        logits = layer_norm(h, "ln_f.weight") @ w["wte.weight"].T
        return F.cross_entropy(logits.view(-1, V), torch.from_numpy(y).view(-1))

    optimizer = AdamW(param_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    matrices = [t for t in w.values() if t.dim() >= 2]
    vectors = [t for t in w.values() if t.dim() < 2]
    torch_optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                                        lr=1e-2, betas=(0.9, 0.99))
    rng = np.random.default_rng(0)
    for step in range(40):
        lr = warmup_cosine_lr(step, 1e-2, 1e-3, 5, 40)
        x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
        _, loss = model(x, y)
        loss.backward()
        norm = clip_grad_norm(optimizer.parameters(), 0.5)
        optimizer.lr = lr
        optimizer.step()
        model.zero_grad()

        torch_optimizer.zero_grad()
        expected = torch_loss(torch.from_numpy(x), y)
        expected.backward()
        expected_norm = torch.nn.utils.clip_grad_norm_(list(w.values()), 0.5).item()
        for group in torch_optimizer.param_groups:
            group["lr"] = lr
        torch_optimizer.step()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-10), step
        assert norm == pytest.approx(expected_norm, rel=1e-9), step
    for name, array in model.state_dict().items():
        np.testing.assert_allclose(to_numpy(array), w[name].detach().numpy(), rtol=1e-8, atol=1e-10, err_msg=name)
