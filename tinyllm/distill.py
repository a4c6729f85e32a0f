"""Knowledge distillation: a small student trained on a big teacher's next-token distributions.

    windows x (B, T) ──teacher (frozen)──► logits t (B, T, V) ──┐
                     ──student─────────► logits z (B, T, V) ──┴─► T²·KL(softmax(t/T) ‖ softmax(z/T)) + α·CE(z, y)

Training on the next token alone tells the student, at each position, one right answer. The
teacher's distribution says much more — which other tokens were plausible, and how much — so a
student trained to match it learns from every entry of the vocabulary at every position (Hinton et
al. 2015; DistilBERT, Sanh et al. 2019, for language models). The loss and its derivation are
``functional.distillation_loss``; reverse KL (``kl="reverse"``) is MiniLLM's choice for generative
students (Gu et al. 2024).

The loop is pretraining's: ``distill`` runs ``train.pretrain`` with ``Distillation`` as its
objective, so a distillation run evaluates, logs, saves and resumes like a pretraining run, and what
it reports is the student's own next-token validation loss and perplexity — the number to compare
with a student trained alone. Teacher and student must share a vocabulary (the KL compares them
token by token): ``check_same_vocabulary``.
"""

from __future__ import annotations

from . import functional as F
from .data.tokens import random_batch
from .functional.distillation import KL_DIRECTIONS
from .train import evaluate, pretrain


class Distillation:
    """The distillation objective for ``train.pretrain``: random training windows, the distillation
    loss against the frozen ``teacher``, and the student's plain next-token loss as the
    evaluation."""

    def __init__(self, teacher, train_ids, batch_size: int, context: int, temperature: float = 2.0,
                 alpha: float = 0.5, kl: str = "forward"):
        if kl not in KL_DIRECTIONS:
            raise ValueError(f"distillation: kl must be 'forward' or 'reverse', got {kl!r}")
        if not temperature > 0 or not alpha >= 0:
            raise ValueError("distillation: temperature must be > 0 and alpha >= 0, got "
                             f"{temperature} and {alpha}")
        if context > teacher.config.block_size:
            raise ValueError(f"the student's context ({context}) is longer than the teacher's "
                             f"block_size ({teacher.config.block_size}): the teacher cannot score "
                             "those windows")
        # frozen: its forward builds no graph (no no_grad, which is process-wide,
        for p in teacher.parameters():
            p.requires_grad = False      # while the batch's blocks run on several threads)
        self.teacher = teacher.eval()
        self.train_ids, self.batch_size, self.context = train_ids, batch_size, context
        self.temperature, self.alpha, self.kl = temperature, alpha, kl

    def __call__(self, step, rng):
        """A training batch (x, y): random windows of the training ids."""
        return random_batch(self.train_ids, self.batch_size, self.context, rng)

    @staticmethod
    def targets(x, y) -> int:
        """A block's weight in the batch's mean: its positions (every one has a target)."""
        return int(y.size)

    def loss(self, model, x, y):
        """T²·KL + α·CE of the student ``model`` against the teacher on windows x with next tokens
        y."""
        teacher_logits, _ = self.teacher(x)                           # (B, T, V), no graph
        hidden, balance = model.trunk(x)                              # (B, T, C)
        student_logits = model.logits(hidden)                         # (B, T, V)
        loss = F.distillation_loss(student_logits, teacher_logits, y, self.temperature, self.alpha,
                                   self.kl)
        return balance.added_to(loss)

    def evaluate(self, model, ids, max_batches=None) -> dict:
        """The student's next-token loss and perplexity (``train.evaluate``)."""
        return evaluate(model, ids, self.batch_size, self.context, max_batches)


def distill(teacher, student, train_ids, val_ids, config, temperature: float = 2.0,
            alpha: float = 0.5,
            kl: str = "forward", run_dir=None, tokenizer=None, resume: bool = False, progress=True,
            teacher_tokenizer=None) -> dict:
    """Train ``student`` on ``teacher``'s distributions over windows of ``train_ids`` for ``config``
    (a ``train.TrainConfig``); returns ``pretrain``'s summary. ``tokenizer`` (the student's, saved
    with it) and ``teacher_tokenizer``, when both are given, must agree on every token."""
    check_same_vocabulary(teacher, student, teacher_tokenizer, tokenizer)
    context = student.config.block_size
    objective = Distillation(teacher, train_ids, config.batch_size, context, temperature, alpha, kl)
    record = {"distillation": {"temperature": temperature, "alpha": alpha, "kl": kl,
                               "teacher_parameters": teacher.num_parameters()}}
    if resume and run_dir is not None:
        from .checkpoint import check_resumable, config_differences, load_config
        check_resumable(run_dir)
        differences = config_differences(load_config(run_dir).get("distillation", {}),
                                         record["distillation"])
        if differences:
            raise ValueError(f"cannot resume '{run_dir}' with different distillation settings: "
                             f"{'; '.join(differences)}")
    return pretrain(student, train_ids, val_ids, config, run_dir=run_dir, tokenizer=tokenizer,
                    resume=resume, progress=progress, extra_config=record, objective=objective)


def check_same_vocabulary(teacher, student, teacher_tokenizer=None, student_tokenizer=None) -> None:
    """ValueError unless teacher and student score the same tokens: the same vocabulary size and,
    when both tokenizers are given, the same token at every id."""
    n_teacher, n_student = teacher.config.vocab_size, student.config.vocab_size
    if n_teacher != n_student:
        raise ValueError("teacher and student have different vocabularies: the teacher scores "
                         f"{n_teacher} tokens, the student {n_student}. Distillation compares "
                         "their distributions token by token, so the student must use the "
                         "teacher's tokenizer (a student from a preset takes it)")
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    for token in range(n_teacher):
        ours, theirs = _token_text(teacher_tokenizer, token), _token_text(student_tokenizer, token)
        if ours != theirs:
            raise ValueError(f"teacher and student have different vocabularies: token {token} is "
                             f"{ours!r} for the teacher and {theirs!r} for the student. "
                             "Distillation compares their distributions token by token, so the "
                             "student must use the teacher's tokenizer")


def _token_text(tokenizer, token: int):
    """What one id stands for: its bytes (byte-level BPE) or its text; None for an id it does not
    have."""
    try:
        if hasattr(tokenizer, "token_to_bytes"):
            return tokenizer.token_to_bytes(token)
        return tokenizer.decode([token])
    except (ValueError, KeyError, IndexError):
        return None
