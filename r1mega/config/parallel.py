"""Parallel layout of the Megatron-Core trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigError, check, check_choice, check_int, doc

RECOMPUTE = ("none", "selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")


@dataclass
class ParallelConfig:
    tensor_parallel: int = doc(1, "Tensor-parallel size (TP).")
    pipeline_parallel: int = doc(1, "Pipeline-parallel size (PP).")
    virtual_pipeline: Optional[int] = doc(None, "Virtual pipeline stages per rank for the interleaved schedule (None = plain 1F1B).")
    num_layers_in_first_pipeline_stage: Optional[int] = doc(None, "Uneven pipeline split: decoder layers on the first stage (it also holds the embedding); None = even split.")
    num_layers_in_last_pipeline_stage: Optional[int] = doc(None, "Uneven pipeline split: decoder layers on the last stage (it also holds the head and MTP); None = even split.")
    expert_parallel: int = doc(1, "Expert-parallel size (EP); experts are split across EP ranks.")
    expert_tensor_parallel: Optional[int] = doc(None, "Tensor-parallel size inside experts (ETP; None = same as TP).")
    context_parallel: int = doc(1, "Context-parallel size (CP): each sequence is split over CP ranks in 2 x CP "
                                   "load-balanced chunks (docs/context_parallel.md). Needs Transformer Engine attention "
                                   "(a GPU); refused without it.")
    data_parallel: Optional[int] = doc(None, "Data-parallel size; None = derived as world / (TP*PP*CP). If set, must match.")
    sequence_parallel: bool = doc(False, "Sequence parallelism with TP (required by Megatron for MoE when TP>1).")
    moe_token_dispatcher: str = doc("alltoall", "MoE token dispatcher: 'alltoall' or 'allgather'.")
    distributed_optimizer: bool = doc(True, "Shard optimizer state across data-parallel ranks (ZeRO-1 style).")
    overlap_grad_reduce: bool = doc(False, "Overlap the DP gradient reduce with backward (GPU).")
    recompute: str = doc("none", "Activation recompute of the training forward (Megatron-Core recompute_granularity; "
                                 "r1mega plan --recompute): 'none' keeps every activation; 'selective' recomputes the "
                                 "core attention, the norms, the MLA up-projections and, with grouped-GEMM experts "
                                 "(Transformer Engine), the expert activation; 'full' keeps only the input of each unit "
                                 "of layers and re-runs it in the backward (one more forward). Frozen passes never "
                                 "recompute.")
    recompute_method: str = doc("uniform", "With recompute 'full' (Megatron recompute_method): 'uniform' cuts each "
                                           "pipeline (virtual) stage's layers into units of recompute_num_layers, "
                                           "each recomputed from its input; 'block' recomputes the first "
                                           "recompute_num_layers layers of each stage and keeps the others' activations.")
    recompute_num_layers: int = doc(1, "With recompute 'full' (Megatron recompute_num_layers): layers per unit "
                                       "('uniform': must divide the layers of every pipeline stage) or recomputed "
                                       "layers per stage ('block').")

    @property
    def model_parallel(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    def resolved_dp(self, world_size: int) -> int:
        return world_size // self.model_parallel

    def validate(self, world_size: Optional[int] = None, where: str = "parallel") -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "expert_parallel", "context_parallel"):
            v = getattr(self, name)
            check(isinstance(v, int) and v >= 1, f"{where}.{name}", f"got {v!r}, expected an integer >= 1")
        check_int(self.data_parallel, f"{where}.data_parallel", allow_none=True)
        check_int(self.expert_tensor_parallel, f"{where}.expert_tensor_parallel", allow_none=True)
        check_choice(self.moe_token_dispatcher, ("alltoall", "allgather"), f"{where}.moe_token_dispatcher")
        check_choice(self.recompute, RECOMPUTE, f"{where}.recompute")
        check_choice(self.recompute_method, RECOMPUTE_METHODS, f"{where}.recompute_method")
        check_int(self.recompute_num_layers, f"{where}.recompute_num_layers")
        if self.recompute != "full":
            for name, default in (("recompute_method", "uniform"), ("recompute_num_layers", 1)):
                check(getattr(self, name) == default, f"{where}.{name}",
                      f"got {getattr(self, name)!r}, but it is only read with recompute 'full' (recompute is "
                      f"{self.recompute!r}); remove it or set {where}.recompute=full")
        if self.virtual_pipeline is not None:
            vp = self.virtual_pipeline
            check(isinstance(vp, int) and not isinstance(vp, bool) and vp >= 2, f"{where}.virtual_pipeline",
                  f"got {vp!r}, expected an integer >= 2 (model chunks per pipeline rank; leave it null for "
                  "the plain 1F1B schedule)")
            check(self.pipeline_parallel > 1, f"{where}.virtual_pipeline",
                  f"got {vp}, but pipeline_parallel={self.pipeline_parallel}; the interleaved schedule needs "
                  "pipeline_parallel > 1 (or leave virtual_pipeline null)")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError(f"{where}.sequence_parallel", "needs tensor_parallel > 1")
        if world_size is None:
            return
        tp, pp, cp, mp = self.tensor_parallel, self.pipeline_parallel, self.context_parallel, self.model_parallel
        check(world_size % mp == 0, f"{where}", f"world size {world_size} cannot be split as TP*PP*CP*DP: "
              f"TP*PP*CP = {tp}*{pp}*{cp} = {mp} does not divide it")
        dp = world_size // mp
        if self.data_parallel is not None:
            check(self.data_parallel == dp, f"{where}.data_parallel",
                  f"world size {world_size} != TP*PP*CP*DP = {tp}*{pp}*{cp}*{self.data_parallel} = {mp * self.data_parallel}")
        etp = self.expert_tensor_parallel or tp
        expert_mp = etp * self.expert_parallel * pp
        check(world_size % expert_mp == 0, f"{where}.expert_parallel",
              f"world size {world_size} is not divisible by ETP*EP*PP = {etp}*{self.expert_parallel}*{pp} = {expert_mp}")
