"""RunConfig: the whole configuration of one r1mega run, one section per concern."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Union

from . import grpo as _grpo, rewards as _rewards
from .base import ConfigError, doc
from .checkpoint import CheckpointConfig
from .checks import validate_run
from .data import DataConfig
from .distill import DistillConfig, check_distill_stage
from .logging import LoggingConfig
from .model import ModelConfig
from .optimizer import OptimizerConfig
from .parallel import ParallelConfig
from .pipeline import PipelineConfig, stage_dir
from .rejection import RejectionConfig
from .reward_model import RewardModelConfig
from .eval import EvalConfig
from .rollout import RolloutConfig
from .schema import build, deep_merge, to_dict
from .stage import StageConfig, stage_ref
from .stage_fields import check_stage_fields


def _section_class(module, name: str) -> type:
    cls = getattr(module, name, None)
    if cls is None:  # TODO(lead): drop this fallback once r1mega/config/{grpo,rewards}.py define their classes.
        cls = dataclasses.make_dataclass(name, [])
    return cls


GRPOConfig = _section_class(_grpo, "GRPOConfig")
RewardsConfig = _section_class(_rewards, "RewardsConfig")


@dataclass
class RunConfig:
    name: str = doc("r1mega", "Run name: shown in logs; the default run directory is runs/<name>.")
    device: str = doc("auto", "Where to run: 'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'.")
    cpu_threads: Optional[int] = doc(None, "On CPU: torch intra-op threads of each process (None = torch's default, one per core). "
                                           "Tiny steps gain nothing from a second thread (tiny MoE, 4 x 160 tokens: 243 ms/step on 1 "
                                           "thread, 257 ms on 2), which then stays free for other work; 16 x 160 tokens run ~30% "
                                           "faster on 2 (4,600 vs 3,500 tokens/s). Per stage through its overrides. Ignored on GPU.")
    model: ModelConfig = doc(ModelConfig(), "Model architecture (model.preset loads a named preset; other keys apply on top).")
    parallel: ParallelConfig = doc(ParallelConfig(), "Megatron-Core parallel layout (TP/PP/CP/EP/DP).")
    optimizer: OptimizerConfig = doc(OptimizerConfig(), "Optimizer, learning-rate schedule and batch sizes.")
    data: DataConfig = doc(DataConfig(), "Datasets and tokenizer.")
    rollout: RolloutConfig = doc(RolloutConfig(), "Generation engine and sampling (RL, rejection sampling, eval).")
    grpo: GRPOConfig = doc(GRPOConfig(), "GRPO objective.")
    rewards: RewardsConfig = doc(RewardsConfig(), "Rule-based and model rewards.")
    logging: LoggingConfig = doc(LoggingConfig(), "Metrics and console output.")
    checkpoint: CheckpointConfig = doc(CheckpointConfig(), "Checkpoint saving and resuming.")
    eval: EvalConfig = doc(EvalConfig(), "Evaluation: benchmarks, samples per question (k), sampling (R1: T 0.6, top-p 0.95).")
    rejection: RejectionConfig = doc(RejectionConfig(), "Rejection sampling (R1 stage 3): which RL samples become SFT data.")
    reward_model: RewardModelConfig = doc(RewardModelConfig(), "Bradley-Terry reward model stage (kind reward_model): preference pairs, score tokens, objective.")
    distill: DistillConfig = doc(DistillConfig(), "Logit distillation in distill stages (teacher, alpha, temperature); alpha 0 = plain SFT.")
    pipeline: PipelineConfig = doc(PipelineConfig(), "The ordered stages and the run directory.")

    @property
    def run_dir(self) -> str:
        return self.pipeline.run_dir or os.path.join("runs", self.name)

    def stage(self, name: str) -> StageConfig:
        return self.pipeline.get(name)

    def select_stage(self, name: Optional[str] = None) -> StageConfig:
        """The stage called name; without a name, the only stage (an error when there are several)."""
        if name is not None:
            return self.stage(name)
        stages = self.pipeline.stages
        if not stages:
            raise ConfigError("pipeline.stages", "no stages defined; add one, e.g. "
                              "pipeline.stages=[{name: pre, kind: pretrain, steps: 100}]")
        if len(stages) > 1:
            raise ConfigError("pipeline.stages", f"pick a stage with --stage (stages: {', '.join(self.pipeline.names())})")
        return stages[0]

    def stage_dir(self, stage: Union[str, StageConfig]) -> str:
        return stage_dir(self.run_dir, self.stage(stage) if isinstance(stage, str) else stage)

    def resolve_path(self, path: str) -> str:
        """'stage:NAME/rest' -> '<output dir of NAME>/rest'; other paths unchanged."""
        ref = stage_ref(path)
        return path if ref is None else os.path.join(self.stage_dir(ref[0]), ref[1])

    def for_stage(self, stage: Union[str, StageConfig]) -> "RunConfig":
        """This config as one stage sees it: the stage's overrides and checkpoint settings applied."""
        st = self.stage(stage) if isinstance(stage, str) else stage
        where = f"pipeline.stages[{st.name}].overrides"
        if "pipeline" in st.overrides:
            raise ConfigError(f"{where}.pipeline", "a stage cannot override the pipeline")
        data = to_dict(self)
        model = st.overrides.get("model")
        if isinstance(model, dict) and model.get("preset") is not None:
            data["model"] = {}  # a new preset (e.g. a distillation student) starts the model afresh
        data = deep_merge(data, st.overrides)
        for key in ("save_interval", "keep_last"):
            if getattr(st, key) is not None:
                data["checkpoint"][key] = getattr(st, key)
        return build(RunConfig, data, where)

    def validate(self, world_size: Optional[int] = None) -> None:
        """Check everything, once, before heavy work: each stage's resolved config for the world it runs on
        (:meth:`PipelineConfig.stage_world`), or the top level when there are no stages. world_size=None skips
        the world-size checks."""
        self.pipeline.validate()
        check_stage_fields(self)  # no field set by the user is silently ignored by the stages' kinds
        stages = self.pipeline.stages
        if not stages:
            validate_run(self, world_size)
            self.distill.validate("distill")
            return
        for i, st in enumerate(stages):
            resolved = self.for_stage(st)
            earlier = [s.name for s in stages[:i]]
            world = self.pipeline.stage_world(st, world_size)
            try:
                validate_run(resolved, world, st, earlier)
                resolved.distill.validate("distill")
                if st.kind == "distill":
                    check_distill_stage(self, resolved, st, earlier, world)
            except ConfigError as e:
                raise ConfigError(f"stage '{st.name}': {e.where}", e.message) from None

    def to_dict(self) -> dict:
        return to_dict(self)
