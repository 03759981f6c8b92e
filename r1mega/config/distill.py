"""Logit distillation in ``distill`` stages: teacher, mixing weight and temperature.

With ``alpha == 0`` (the default) a ``distill`` stage is plain SFT of the student on the
(rejection-sampled) data, exactly as DeepSeek-R1 distilled its dense models. With ``alpha > 0``
a frozen teacher (a Megatron checkpoint, typically an earlier stage) adds a logit-distillation
term on the response tokens::

    loss = (1 - alpha) * CE(student, data) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))

The teacher's architecture is read from its checkpoint (it may differ from the student: a MoE
teacher, a dense student); logit distillation needs both to share the tokenizer: the same
``model.vocab_size`` and the same tokenizer (:func:`check_tokenizers`: token -> id mapping and merges,
not only the size). SFT on the teacher's samples (alpha 0) takes any student tokenizer.
See docs/distill.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .base import ConfigError, check, doc


@dataclass
class DistillConfig:
    teacher: Optional[str] = doc(None, "Teacher weights for logit distillation: 'stage:NAME' (or NAME) for an earlier stage's latest "
                                       "checkpoint, or a checkpoint directory. Required when alpha > 0; ignored when alpha == 0.")
    alpha: float = doc(0.0, "Weight of the distillation term: loss = (1-alpha)*CE + alpha*T^2*KL(teacher||student); "
                            "0 = plain SFT (no teacher is loaded), 1 = pure logit distillation.")
    temperature: float = doc(1.0, "Softmax temperature T of both teacher and student in the KL term (the T^2 factor keeps gradient scale).")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0

    def validate(self, where: str = "distill") -> None:
        for name in ("alpha", "temperature"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool), f"{where}.{name}", f"got {v!r}, expected a number")
        check(0.0 <= self.alpha <= 1.0, f"{where}.alpha", f"got {self.alpha!r}, expected a value in [0, 1]")
        check(self.temperature > 0, f"{where}.temperature", f"got {self.temperature!r}, expected a positive number")
        check(self.teacher is None or (isinstance(self.teacher, str) and self.teacher.strip() != ""), f"{where}.teacher",
              f"got {self.teacher!r}, expected 'stage:NAME', a stage name, a checkpoint path or null")

    def validate_for_stage(self, where: str = "distill") -> None:
        """The checks that apply to a ``distill`` stage only (a teacher when alpha > 0)."""
        self.validate(where)
        if self.enabled and not self.teacher:
            raise ConfigError(f"{where}.teacher", f"missing: distill.alpha={self.alpha} > 0 needs a teacher "
                              "(e.g. distill.teacher: stage:all_scenario_rl), or set distill.alpha: 0 for plain SFT")


def teacher_stage_name(teacher: Optional[str], stage_names) -> Optional[str]:
    """The stage whose latest checkpoint ``teacher`` names ('stage:NAME' or 'NAME'), else None
    (a checkpoint path, or 'stage:NAME/sub/dir' inside a stage's directory)."""
    from .stage import stage_ref

    if not teacher:
        return None
    ref = stage_ref(teacher)
    if ref is not None:
        return ref[0] if not ref[1].strip("/") else None
    return teacher if teacher in stage_names else None


def describe_model(m) -> str:
    return f"preset {m.preset!r}" if m.preset else f"a custom {m.arch} model"


def check_vocab(teacher_model, student_model, teacher: str) -> None:
    """Teacher and student share the tokenizer: the same (unpadded) vocabulary size."""
    if teacher_model.vocab_size != student_model.vocab_size:
        raise ConfigError("distill.teacher", (
            f"teacher {teacher!r} ({describe_model(teacher_model)}, model.vocab_size={teacher_model.vocab_size}) and "
            f"student ({describe_model(student_model)}, model.vocab_size={student_model.vocab_size}) must share the "
            "tokenizer, but their vocabularies differ; logit distillation needs the same vocabulary"))


def _refuse_other_tokenizer(teacher: str, teacher_tok, student_tok) -> None:
    raise ConfigError("distill.teacher", (
        f"teacher {teacher!r} was trained with the tokenizer {teacher_tok} and the student uses {student_tok} "
        "(data.tokenizer_path / data.tokenizer_vocab_size): they are different tokenizers (other tokens or ids, "
        "whatever their sizes), and logit distillation compares the two distributions token id by token id; "
        "use distill.alpha: 0 (SFT on the teacher's text samples, re-tokenised for the student) or give the "
        "student the teacher's tokenizer"))


def stage_tokenizer_dir(data) -> Optional[Path]:
    """The tokenizer directory a stage's ``data`` config uses (the built-in one is built on first use, in
    seconds); None when ``data.tokenizer_path`` names no tokenizer (reported when the stage loads it)."""
    from r1mega.data.tokenizer import run_tokenizer_dir

    try:
        return run_tokenizer_dir(data)
    except FileNotFoundError:
        return None


def check_tokenizers(teacher_data, student_data, teacher: str) -> None:
    """A ``stage:`` teacher's tokenizer (its stage's ``data`` config) is the student's: both the built-in
    tokenizer of one ``tokenizer_vocab_size``, or the same :func:`~r1mega.data.tokenizer.tokenizer_fingerprint`."""
    from r1mega.data.tokenizer import tokenizer_fingerprint

    if not teacher_data.tokenizer_path and not student_data.tokenizer_path:
        if teacher_data.tokenizer_vocab_size != student_data.tokenizer_vocab_size:
            _refuse_other_tokenizer(teacher, f"built-in:{teacher_data.tokenizer_vocab_size}",
                                    f"built-in:{student_data.tokenizer_vocab_size}")
        return
    t, s = stage_tokenizer_dir(teacher_data), stage_tokenizer_dir(student_data)
    if t is not None and s is not None and tokenizer_fingerprint(t) != tokenizer_fingerprint(s):
        _refuse_other_tokenizer(teacher, t, s)


def teacher_tokenizer_dir(checkpoint) -> Optional[Path]:
    """The tokenizer recorded with a checkpoint: ``tokenizer/`` beside its ``step_*`` directories (``r1mega
    convert hf-to-megatron`` writes it) or in the stage directory above ``checkpoints/`` (every stage saves a
    copy of the tokenizer it used); None when neither holds one."""
    from r1mega.data.tokenizer import tokenizer_fingerprint

    p = Path(checkpoint)
    return next((d for d in (p.parent / "tokenizer", p.parent.parent / "tokenizer") if tokenizer_fingerprint(d)), None)


def check_teacher_tokenizer(checkpoint, student_tokenizer, teacher: str) -> None:
    """The teacher checkpoint's recorded tokenizer (:func:`teacher_tokenizer_dir`) is ``student_tokenizer`` (a
    directory); refused, before any weight is read, when they differ or the checkpoint records none."""
    from r1mega.data.tokenizer import tokenizer_fingerprint

    t = teacher_tokenizer_dir(checkpoint)
    if t is None:
        p = Path(checkpoint)
        raise ConfigError("distill.teacher", (
            f"teacher {teacher!r} ({checkpoint}): no tokenizer recorded with the checkpoint (looked for "
            f"{p.parent / 'tokenizer'} and {p.parent.parent / 'tokenizer'}), so logit distillation cannot check "
            "that it shares the student's tokenizer; copy the teacher's tokenizer files into one of them, "
            "or use distill.alpha: 0"))
    if tokenizer_fingerprint(t) != tokenizer_fingerprint(student_tokenizer):
        _refuse_other_tokenizer(teacher, t, student_tokenizer)


def check_distill_stage(top, resolved, stage, earlier, world_size: Optional[int] = None) -> None:
    """Validate a ``distill`` stage's teacher against the whole run (``top``) before heavy work:
    alpha/T/teacher, that a teacher stage runs earlier, the vocabularies match, and the layout."""
    import os

    from .checks import check_layout
    from .stage import stage_ref

    d = resolved.distill
    d.validate_for_stage("distill")
    if not d.enabled:
        return
    par = resolved.parallel
    check(par.pipeline_parallel == 1, "parallel.pipeline_parallel",
          f"got {par.pipeline_parallel}: logit distillation (distill.alpha > 0) runs the teacher inside the "
          "student's loss and supports pipeline_parallel=1 only; use TP/DP, or distill.alpha=0")
    # context_parallel > 1 needs Transformer Engine (checks.validate_run); the teacher is built at the student's
    # layout, so it runs on the same CP chunks of each microbatch as the student
    names = top.pipeline.names()
    name = teacher_stage_name(d.teacher, names)
    ref = stage_ref(d.teacher)
    if name is None and ref is not None:
        name_in_path = ref[0]
        check(name_in_path in earlier, "distill.teacher", f"{d.teacher!r} refers to stage {name_in_path!r}, which "
              + ("does not run before this one" if name_in_path in names else "is not in the pipeline"))
        return
    if name is None:
        from .model_source import checkpoint_meta_path

        check(os.path.exists(d.teacher), "distill.teacher",
              f"checkpoint not found: {d.teacher!r} (neither a path nor an earlier stage; stages: {', '.join(names) or 'none'})")
        meta = checkpoint_meta_path(d.teacher)
        student_tok = stage_tokenizer_dir(resolved.data)
        if meta is not None and student_tok is not None:
            check_teacher_tokenizer(meta.parent, student_tok, d.teacher)
        return
    check(name in earlier, "distill.teacher", f"stage {name!r} does not run before this one"
          + (f"; earlier stages: {', '.join(earlier)}" if earlier else ""))
    tstage = top.stage(name)
    check(tstage.is_training, "distill.teacher", f"stage {name!r} is a {tstage.kind} stage and writes no model checkpoint")
    teacher_model = top.for_stage(tstage).model
    check_vocab(teacher_model, resolved.model, d.teacher)
    check_tokenizers(top.for_stage(tstage).data, resolved.data, d.teacher)
    try:
        check_layout(teacher_model, par, resolved.data.seq_length, world_size)
    except ConfigError as e:
        raise ConfigError(e.where, f"(for the teacher {d.teacher!r}, {describe_model(teacher_model)}) {e.message}") from None
