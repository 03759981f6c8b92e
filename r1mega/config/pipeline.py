"""The ordered stages of a run, and where their outputs go."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .base import ConfigError, check, doc
from .schema import suggest
from .stage import StageConfig

# Set in the processes the pipeline scheduler (r1mega/pipeline/scheduler.py) starts for a stage.
STAGE_PROCESS_ENV = "R1MEGA_STAGE_PROCESS"
# Report roles (r1mega report): role -> the eval stage whose results stand for it (defaults: the demo's names).
REPORT_ROLES = {"base": "eval_base", "r1_zero": "eval_r1_zero", "r1": "eval_r1", "student": "eval_student",
                "student_base": "eval_student_base"}


@dataclass
class PipelineConfig:
    run_dir: Optional[str] = doc(None, "Directory of the whole run; each stage writes to <run_dir>/<stage name> (None = runs/<name>).")
    stages: list[StageConfig] = doc([], "Stages in the order they run (with max_parallel > 1: in order of priority).")
    max_parallel: int = doc(1, "Stages run at the same time, each in its own process (1 = one after another, in one "
                               "process). Whenever a slot is free, the first stage in list order whose inputs are "
                               "complete starts (init_from, stage: references, its after: list); see "
                               "r1mega/pipeline/scheduler.py. Single-process runs only (under torchrun/srun stages "
                               "run one after another).")
    report: dict = doc({}, "r1mega report: which eval stage stands for each role (base, r1_zero, r1, student, "
                           "student_base), e.g. {base: eval_pretrain}; merged over the defaults eval_base, "
                           "eval_r1_zero, eval_r1, eval_student, eval_student_base; null drops a role.")

    def report_roles(self) -> dict:
        """{role: eval stage name}: the defaults with ``report`` applied (null values drop a role)."""
        roles = {**REPORT_ROLES, **(self.report or {})}
        return {k: v for k, v in roles.items() if v}

    def stage_world(self, stage: StageConfig, world_size: Optional[int]) -> Optional[int]:
        """The world size ``stage`` runs on: its ``processes`` when the scheduler starts the stages (max_parallel > 1
        and a single-process launch, or one of the scheduler's stage processes), else the launcher's ``world_size``
        (None: unknown, skip the world-size checks)."""
        if world_size is None:
            return None
        scheduled = self.max_parallel > 1 and (world_size == 1 or bool(os.environ.get(STAGE_PROCESS_ENV)))
        return stage.processes if scheduled else world_size

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def get(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        have = self.names()
        raise ConfigError("pipeline.stages", f"no stage named {name!r}; " + (suggest(name, have, "stages") if have else "the pipeline has no stages"))

    def validate(self, where: str = "pipeline") -> None:
        check(isinstance(self.max_parallel, int) and not isinstance(self.max_parallel, bool) and self.max_parallel >= 1,
              f"{where}.max_parallel", f"got {self.max_parallel!r}, expected an integer >= 1")
        seen = set()
        for i, stage in enumerate(self.stages):
            stage.validate(f"{where}.stages[{stage.name or i}]")
            check(stage.name not in seen, f"{where}.stages[{i}].name", f"duplicate stage name {stage.name!r}")
            check(isinstance(stage.after, list), f"{where}.stages[{stage.name}].after",
                  f"got {stage.after!r}, expected a list of earlier stage names")
            for name in stage.after:
                check(name in seen, f"{where}.stages[{stage.name}].after",
                      f"{name!r} is not a stage listed before this one; " + suggest(str(name), sorted(seen), "stages"))
            check(self.max_parallel == 1 or stage.processes <= self.max_parallel, f"{where}.stages[{stage.name}].processes",
                  f"{stage.processes} processes need pipeline.max_parallel >= {stage.processes} (the scheduler starts them, "
                  f"each in one of its slots), got max_parallel {self.max_parallel}")
            seen.add(stage.name)
        check(isinstance(self.report, dict), f"{where}.report", f"got {self.report!r}, expected a mapping role: stage")
        for role, name in self.report.items():
            check(role in REPORT_ROLES, f"{where}.report.{role}", "unknown role; " + suggest(str(role), list(REPORT_ROLES), "roles"))
            check(name is None or isinstance(name, str), f"{where}.report.{role}", f"got {name!r}, expected a stage name or null")
            check(name is None or name in seen, f"{where}.report.{role}",
                  f"no stage named {name!r}; " + suggest(str(name), sorted(seen), "stages"))


def stage_dir(run_dir: str, stage: StageConfig) -> str:
    return stage.output_dir or os.path.join(run_dir, stage.name)
