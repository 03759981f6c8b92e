"""One stage of the R1 pipeline (pretrain, R1-Zero, cold-start SFT, reasoning RL, ...)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .base import check, check_choice, check_int, doc

KINDS = ("pretrain", "sft", "grpo", "rejection_sampling", "reward_model", "distill", "eval")
TRAINING_KINDS = ("pretrain", "sft", "grpo", "reward_model", "distill")
GENERATING_KINDS = ("grpo", "rejection_sampling", "eval")
STAGE_REF = "stage:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def stage_ref(path: Optional[str]) -> Optional[tuple[str, str]]:
    """'stage:NAME/rest' -> (NAME, rest); None for ordinary paths."""
    if not isinstance(path, str) or not path.startswith(STAGE_REF):
        return None
    name, _, rest = path[len(STAGE_REF):].partition("/")
    return name, rest


@dataclass
class StageConfig:
    name: str = doc("", "Stage name: unique in the pipeline, used for its output directory and in 'stage:NAME' references.")
    kind: str = doc("", "What the stage does: pretrain, sft, grpo, rejection_sampling, reward_model, distill or eval.")
    init_from: Optional[str] = doc(None, "Initial weights: an earlier stage's name, a checkpoint directory, or None (random init).")
    steps: Optional[int] = doc(None, "Optimizer steps (GRPO: iterations); required for training kinds, an error on "
                                     "rejection_sampling/eval stages (they train nothing).")
    output_dir: Optional[str] = doc(None, "Where checkpoints, metrics and outputs go (None = <run dir>/<name>).")
    save_interval: Optional[int] = doc(None, "Checkpoint every N steps (None = checkpoint.save_interval); training kinds only.")
    keep_last: Optional[int] = doc(None, "Keep the newest N checkpoints (None = checkpoint.keep_last); training kinds only.")
    after: list = doc([], "With pipeline.max_parallel > 1: earlier stages that must be complete before this one starts, "
                          "besides the ones it reads (e.g. hold a side branch back so it does not compete for the cores).")
    nice: int = doc(0, "With pipeline.max_parallel > 1: the CPU priority of the stage's process (a nice increment, 0-19); "
                       "side work at 10 runs on the cores the critical chain leaves idle instead of slowing it down.")
    processes: int = doc(1, "With pipeline.max_parallel > 1: processes (data-parallel ranks) the scheduler starts for this "
                            "stage, taking as many of the max_parallel slots; the stage's config is checked for that "
                            "world size. E.g. pretraining on a 2-core CPU as 2 ranks of 1 thread each (~25% faster than "
                            "1 rank of 2 threads). Ignored where the scheduler does not run the stages: with max_parallel 1 "
                            "(one process) and under torchrun/srun (the launcher's world).")
    overrides: dict = doc({}, "Config sections changed for this stage only, e.g. {optimizer: {lr: 1e-5}}; a model.preset here starts the model afresh. "
                              "A field the stage's kind does not read is an error (r1mega.config.stage_fields).")

    @property
    def is_training(self) -> bool:
        return self.kind in TRAINING_KINDS

    @property
    def generates(self) -> bool:
        return self.kind in GENERATING_KINDS

    def validate(self, where: str = "stage") -> None:
        check(isinstance(self.name, str) and bool(_NAME.match(self.name)), f"{where}.name",
              f"got {self.name!r}, expected letters, digits, '_', '-' or '.' (usable as a directory name)")
        check_choice(self.kind, KINDS, f"{where}.kind")
        if self.is_training:
            check(self.steps is not None, f"{where}.steps", f"missing: a {self.kind} stage needs a number of steps")
        check_int(self.steps, f"{where}.steps", allow_none=True)
        check_int(self.save_interval, f"{where}.save_interval", minimum=0, allow_none=True)
        check_int(self.keep_last, f"{where}.keep_last", allow_none=True)
        check(isinstance(self.nice, int) and not isinstance(self.nice, bool) and 0 <= self.nice <= 19, f"{where}.nice",
              f"got {self.nice!r}, expected an integer from 0 to 19")
        check(isinstance(self.processes, int) and not isinstance(self.processes, bool) and self.processes >= 1,
              f"{where}.processes", f"got {self.processes!r}, expected an integer >= 1")
        check(self.init_from is None or (isinstance(self.init_from, str) and self.init_from != ""), f"{where}.init_from",
              f"got {self.init_from!r}, expected a stage name, a checkpoint path or null")
