"""The ordered stages of a run, and where their outputs go."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .base import ConfigError, check, doc
from .schema import suggest
from .stage import StageConfig


@dataclass
class PipelineConfig:
    run_dir: Optional[str] = doc(None, "Directory of the whole run; each stage writes to <run_dir>/<stage name> (None = runs/<name>).")
    stages: list[StageConfig] = doc([], "Stages in the order they run.")

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def get(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        have = self.names()
        raise ConfigError("pipeline.stages", f"no stage named {name!r}; " + (suggest(name, have, "stages") if have else "the pipeline has no stages"))

    def validate(self, where: str = "pipeline") -> None:
        seen = set()
        for i, stage in enumerate(self.stages):
            stage.validate(f"{where}.stages[{stage.name or i}]")
            check(stage.name not in seen, f"{where}.stages[{i}].name", f"duplicate stage name {stage.name!r}")
            seen.add(stage.name)


def stage_dir(run_dir: str, stage: StageConfig) -> str:
    return stage.output_dir or os.path.join(run_dir, stage.name)
