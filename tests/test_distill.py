"""Tests of knowledge distillation: the fused loss (tinyllm.functional.distillation) and the training stage
(tinyllm.distill, ``tinyllm distill``).

The promises: the loss is T²·KL + α·CE as written, in both KL directions, and its hand-derived backward
matches finite differences for the student's and the teacher's logits; a student learns from a frozen
teacher; a teacher and a student that do not share a vocabulary are refused with a message that says so.
"""


import numpy as np
import pytest

from tinyllm import Tensor, backend
from tinyllm.autograd import fused_op
from tinyllm.checkpoint import save_model
from tinyllm.distill import Distillation, check_same_vocabulary, distill
from tinyllm.functional import distillation_loss
from tinyllm.functional.distillation import distillation_backward, distillation_forward
from tinyllm.model import GPT, GPTConfig
from tinyllm.testing import gradcheck
from tinyllm.tokenizer import CharTokenizer
from tinyllm.train import TrainConfig



def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("kl", ["forward", "reverse"])
@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.0), (2.5, 0.0), (4.0, 0.7)])
def test_distillation_gradients_match_finite_differences(float64, rng, kl, temperature, alpha):
    student = Tensor(rng.standard_normal((2, 3, 7)), requires_grad=True)
    teacher = Tensor(2 * rng.standard_normal((2, 3, 7)), requires_grad=True)
    targets = rng.integers(0, 7, size=(2, 3))
    targets[1, 2] = -100                                     # an ignored position counts for nothing
    error = gradcheck(lambda z, t: distillation_loss(z, t, targets, temperature, alpha, kl), [student, teacher])
    assert error < 1e-6

    def pair(z, t):                                          # the raw forward/backward pair on its own
        valid = backend.asarray(targets.reshape(-1) != -100)
        y = backend.asarray(np.where(targets.reshape(-1) == -100, 0, targets.reshape(-1)))
        out, cache = distillation_forward(z.data.reshape(6, 7), t.data.reshape(6, 7), y, valid, 5, temperature,
                                          alpha, kl == "reverse")
        return fused_op(lambda d, c, needs: [g.reshape(2, 3, 7) for g in distillation_backward(d, c, needs)],
                        out, cache, z, t)

    assert gradcheck(pair, [student, teacher]) < 1e-6


@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_distillation_loss_is_the_formula(rng, kl):
    z, t = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    y, temperature, alpha = rng.integers(0, 6, size=4), 3.0, 0.4
    log_q, log_p = log_softmax(z / temperature), log_softmax(t / temperature)
    divergence = (np.exp(log_p) * (log_p - log_q)).sum(1) if kl == "forward" else (np.exp(log_q) * (log_q - log_p)).sum(1)
    cross_entropy = -log_softmax(z)[np.arange(4), y]
    expected = (temperature ** 2 * divergence + alpha * cross_entropy).mean()
    loss = distillation_loss(Tensor(z, dtype=np.float64), Tensor(t, dtype=np.float64), y, temperature, alpha, kl)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_a_student_equal_to_its_teacher_has_zero_loss_and_gradient(float64, rng):
    z = Tensor(rng.standard_normal((5, 9)), requires_grad=True)
    loss = distillation_loss(z, Tensor(z.data.copy()), temperature=2.0, alpha=0.0)
    loss.backward()
    assert abs(loss.item()) < 1e-14 and np.abs(backend.to_numpy(z.grad)).max() < 1e-14


def test_t_squared_keeps_the_gradient_scale_as_the_temperature_grows(float64, rng):
    """The softened gradients shrink as 1/T²; T² puts them back, so the gradient hardly changes with T."""
    t = rng.standard_normal((8, 50))
    norms = []
    for temperature in (4.0, 8.0, 16.0):
        z = Tensor(t + 0.3 * rng.standard_normal((8, 50)), requires_grad=True)
        distillation_loss(z, Tensor(t), temperature=temperature, alpha=0.0).backward()
        norms.append(np.linalg.norm(backend.to_numpy(z.grad)))
    assert max(norms) / min(norms) < 1.2, norms


def test_different_vocabularies_are_a_clear_error(rng):
    with pytest.raises(ValueError, match="must share one vocabulary .*student has 7 tokens, the teacher 9"):
        distillation_loss(Tensor(rng.standard_normal((2, 7))), Tensor(rng.standard_normal((2, 9))), alpha=0.0)
    with pytest.raises(ValueError, match="alpha > 0 .* needs targets"):
        distillation_loss(Tensor(rng.standard_normal((2, 7))), Tensor(rng.standard_normal((2, 7))))
    with pytest.raises(ValueError, match="kl must be 'forward' or 'reverse'"):
        distillation_loss(Tensor(rng.standard_normal((2, 7))), Tensor(rng.standard_normal((2, 7))), alpha=0.0, kl="js")


def test_teacher_and_student_vocabularies_are_checked_token_by_token():
    small = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    large = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="the teacher scores 12 tokens, the student 10"):
        check_same_vocabulary(large, small)
    with pytest.raises(ValueError, match="token 0 is 'a' for the teacher and 'b' for the student"):
        check_same_vocabulary(small, small, CharTokenizer.from_text("abcdefghij"), CharTokenizer.from_text("bcdefghijk"))
    check_same_vocabulary(small, small, CharTokenizer.from_text("abcdefghij"), CharTokenizer.from_text("jihgfedcba"))


# ---------------------------------------------------------------------------------------------- training

def peaked_teacher(vocab=12):
    """A random GPT with its weights scaled up, so its next-token distributions are far from uniform."""
    teacher = GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=1)
    for p in teacher.parameters():
        if p.ndim >= 2:
            p.data *= 10
    return teacher


def test_a_student_learns_its_teacher():
    teacher, rng = peaked_teacher(), np.random.default_rng(0)
    ids = rng.integers(0, 12, size=2000)
    student = GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=8), seed=2)
    objective = Distillation(teacher, ids, 8, 16, temperature=2.0, alpha=0.0)
    x, y = objective(0, np.random.default_rng(5))
    before = objective.loss(student, x, y).item()
    config = TrainConfig(steps=30, batch_size=8, lr=1e-2, min_lr=1e-3, warmup=0, eval_interval=30, eval_iters=1)
    summary = distill(teacher, student, ids[:1800], ids[1800:], config, temperature=2.0, alpha=0.0, progress=False)
    assert objective.loss(student, x, y).item() < 0.6 * before
    assert set(summary["last_val"]) == {"loss", "ppl", "tokens"}, "the evaluation is the student's own next-token loss"
    assert not any(p.requires_grad for p in teacher.parameters()), "the teacher stays frozen"


def test_a_teacher_with_a_shorter_context_is_refused():
    with pytest.raises(ValueError, match="longer than the teacher's block_size"):
        Distillation(peaked_teacher(), np.arange(100) % 12, 4, context=32)


# ---------------------------------------------------------------------------------------------- command line

@pytest.fixture
def teacher_run(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("abcdefghij" * 50)
    save_model(tmp_path / "teacher", GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)),
               CharTokenizer.from_text("abcdefghij"))
    save_model(tmp_path / "other", GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)),
               CharTokenizer.from_text("abcdefghijk"))
    return ["distill", "--teacher", tmp_path / "teacher", "--data", text, "--out", tmp_path / "out", "--steps", "2"]


def test_cli_distill_refuses_a_student_with_another_vocabulary_without_a_traceback(teacher_run, tmp_path, run_cli):
    result = run_cli(*teacher_run, "--student", tmp_path / "other")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "different vocabularies: the teacher scores 10 tokens, the student 11" in result.stderr
    assert not (tmp_path / "out").exists(), "a refused run leaves no --out folder behind"


@pytest.mark.parametrize("flags, message", [
    (["--student", "tiny"], "--student 'tiny' is neither a preset"),
    (["--student", "{other}", "--n-layer", "2"], "its shape is its own, so --n-layer cannot"),
    (["--temperature", "0"], "argument --temperature: expected a number > 0"),
])
def test_cli_distill_bad_flags_are_clear_errors(teacher_run, tmp_path, capsys, flags, message):
    from tinyllm.cli import main
    flags = [flag.format(other=tmp_path / "other") for flag in flags]
    assert main([str(a) for a in teacher_run] + flags) == 2
    assert message in capsys.readouterr().err


def test_cli_distill_trains_a_student_from_a_preset(teacher_run, tmp_path, capsys):
    from tinyllm.checkpoint import load_config
    from tinyllm.cli import main
    assert main([str(a) for a in teacher_run] + ["--n-layer", "1", "--n-embd", "8", "--n-head", "2", "--batch-size", "2",
                                                 "--eval-iters", "1", "--sample-tokens", "0"]) == 0
    config = load_config(tmp_path / "out")
    assert config["distillation"]["kl"] == "forward" and config["model"]["block_size"] == 8, "the teacher's context"
    assert "2²·KL(teacher ‖ student) + 0.5·cross-entropy" in capsys.readouterr().out
    resumed = [str(a) for a in teacher_run[:-1]] + ["4", "--n-layer", "1", "--n-embd", "8", "--n-head", "2",
                                                    "--batch-size", "2", "--eval-iters", "1", "--sample-tokens", "0",
                                                    "--resume"]
    assert main(resumed + ["--temperature", "3"]) == 2
    assert "different distillation settings: temperature: 2.0 (saved) vs 3.0 (now)" in capsys.readouterr().err
    assert main(resumed) == 0 and "resuming from step 2 of 4" in capsys.readouterr().err
