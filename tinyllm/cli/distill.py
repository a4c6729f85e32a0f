"""``tinyllm distill``: train a small student on a big teacher's next-token distributions
(``tinyllm.distill``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import backend
from .common import non_negative_float, positive_float


def add_commands(sub) -> None:
    from .train import add_data_flags, add_model_flags, add_training_flags
    p = sub.add_parser("distill", help="knowledge distillation: a small student learns a teacher's "
                                       "distributions",
                       description="Train --student on the next-token distributions of --teacher "
                                   "over --data: T²·KL of the temperature-softened distributions "
                                   "plus α × the next-token cross-entropy. The run directory "
                                   "(--out) is a pretraining run of the student (evaluated, saved "
                                   "and resumable the same way; its validation loss is the "
                                   "student's own next-token loss).")
    p.add_argument("--teacher", required=True,
                   help="run directory of the teacher (its tokenizer encodes --data)")
    p.add_argument("--student", default="nano",
                   help="a preset (that shape, with the teacher's vocabulary and, unless "
                        "--context, its context) or a run directory to start from, which must use "
                        "the teacher's tokenizer")
    add_data_flags(p, tokenizer=False)
    add_model_flags(p, preset=False)
    add_training_flags(p)
    g = p.add_argument_group("distillation")
    g.add_argument("--temperature", type=positive_float, default=2.0,
                   help="T: both distributions are softmax(logits / T); above 1 the teacher's "
                        "small probabilities count for more")
    g.add_argument("--alpha", type=non_negative_float, default=0.5,
                   help="weight of the hard-label (next-token) cross-entropy added to T²·KL (0 = "
                        "distillation alone)")
    g.add_argument("--kl", choices=["forward", "reverse"], default="forward",
                   help="forward: KL(teacher ‖ student), the student covers all the teacher finds "
                        "likely (Hinton); reverse: KL(student ‖ teacher), the student may keep to "
                        "the teacher's main modes (MiniLLM)")
    p.add_argument("--out", default="runs/distill", help="run directory to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=run_distill)


def run_distill(args) -> int:
    from ..checkpoint import load_pretrained
    from ..data.tokens import split_train_val, tokenize
    from ..distill import distill
    from ..train import TrainConfig
    from .train import _load_text, _print_summary, run_directory

    backend.set_dtype(args.dtype)
    out = run_directory(args)
    teacher, teacher_tokenizer = load_pretrained(args.teacher)
    if teacher_tokenizer is None:
        raise ValueError(f"the teacher '{args.teacher}' has no tokenizer.json, so --data cannot be "
                         "encoded for it")
    student, tokenizer = _student(args, teacher)
    ids = tokenize(_load_text(args.data), teacher_tokenizer, cache_dir=out / "cache")
    train_ids, val_ids = split_train_val(ids, args.val_fraction)
    train_config = TrainConfig(**{f.name: getattr(args, f.name)
                                  for f in dataclasses.fields(TrainConfig)})
    n_teacher, n_student = teacher.num_parameters(), student.num_parameters()
    print(f"teacher: {args.teacher} ({n_teacher:,} parameters); student: {n_student:,} parameters "
          f"({n_student / n_teacher:.2f}× the teacher), context {student.config.block_size}; "
          f"data: {len(train_ids):,} train / {len(val_ids):,} val tokens")
    divergence = "teacher ‖ student" if args.kl == "forward" else "student ‖ teacher"
    print(f"loss: {args.temperature:g}²·KL({divergence}) + {args.alpha:g}·cross-entropy")
    summary = distill(teacher, student, train_ids, val_ids, train_config, args.temperature,
                      args.alpha, args.kl,
                      run_dir=out, tokenizer=tokenizer or teacher_tokenizer, resume=args.resume,
                      teacher_tokenizer=teacher_tokenizer)
    _print_summary(summary, out)
    return 0


def _student(args, teacher):
    """(student model, its tokenizer or None) from --student: a preset shaped by the model flags
    (with the teacher's vocabulary and context), or a run directory."""
    from ..checkpoint import load_pretrained
    from ..model import GPT, PRESETS
    from .train import _model_config
    shape_flags = [name for name in ("n_layer", "n_head", "n_embd", "context", "bias", "n_kv_head",
                                     "n_expert", "expert_top_k") if getattr(args, name) is not None]
    if args.student in PRESETS:
        args.preset = args.student
        if args.context is None:
            args.context = teacher.config.block_size
        return GPT(_model_config(args, vocab_size=teacher.config.vocab_size), seed=args.seed), None
    if not Path(args.student).exists():
        raise ValueError(f"--student {args.student!r} is neither a preset ({', '.join(PRESETS)}) "
                         "nor a run directory")
    if shape_flags:
        raise ValueError(f"--student {args.student} is a run: its shape is its own, so "
                         f"{', '.join('--' + name.replace('_', '-') for name in shape_flags)} "
                         "cannot change it")
    return load_pretrained(args.student)
