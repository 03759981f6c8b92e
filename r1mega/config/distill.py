"""Logit distillation in ``distill`` stages: teacher, mixing weight and temperature.

With ``alpha == 0`` (the default) a ``distill`` stage is plain SFT of the student on the
(rejection-sampled) data, exactly as DeepSeek-R1 distilled its dense models. With ``alpha > 0``
a frozen teacher (a Megatron checkpoint, typically an earlier stage) adds a logit-distillation
term on the response tokens::

    loss = (1 - alpha) * CE(student, data) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))

The teacher's architecture is read from its checkpoint (it may differ from the student: a MoE
teacher, a dense student); both must share the tokenizer, so ``model.vocab_size`` must match.
See docs/distill.md.
"""
from __future__ import annotations

from dataclasses import dataclass
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
    # (context_parallel > 1 is refused for every stage by ParallelConfig.validate, which runs first)
    names = top.pipeline.names()
    name = teacher_stage_name(d.teacher, names)
    ref = stage_ref(d.teacher)
    if name is None and ref is not None:
        name_in_path = ref[0]
        check(name_in_path in earlier, "distill.teacher", f"{d.teacher!r} refers to stage {name_in_path!r}, which "
              + ("does not run before this one" if name_in_path in names else "is not in the pipeline"))
        return
    if name is None:
        check(os.path.exists(d.teacher), "distill.teacher",
              f"checkpoint not found: {d.teacher!r} (neither a path nor an earlier stage; stages: {', '.join(names) or 'none'})")
        return
    check(name in earlier, "distill.teacher", f"stage {name!r} does not run before this one"
          + (f"; earlier stages: {', '.join(earlier)}" if earlier else ""))
    tstage = top.stage(name)
    check(tstage.is_training, "distill.teacher", f"stage {name!r} is a {tstage.kind} stage and writes no model checkpoint")
    teacher_model = top.for_stage(tstage).model
    check_vocab(teacher_model, resolved.model, d.teacher)
    try:
        check_layout(teacher_model, par, resolved.data.seq_length, world_size)
    except ConfigError as e:
        raise ConfigError(e.where, f"(for the teacher {d.teacher!r}, {describe_model(teacher_model)}) {e.message}") from None
