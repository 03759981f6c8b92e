"""What carrying R3's routing ids costs in one GRPO step (docs/planner.md "Router replay")."""
from __future__ import annotations

from dataclasses import dataclass

from .inputs import Layout, PlanInputs
from .memory import StageMemory

@dataclass
class RoutingCost:
    """Bytes of carrying routing ids (tokens x MoE layers x top-k) through one GRPO step."""
    bytes_per_token: int            # L x K x id bytes (r1mega.train.router_replay.routing_bytes)
    step_host: float                # the step's rollouts, padded to seq_len, where they are gathered
    per_dp_replica: float           # one data-parallel replica's share
    microbatch_gpu: float           # one microbatch on one GPU: its ids, their int64 copy, the stage's layers

    def to_dict(self) -> dict:
        return {"bytes_per_token": self.bytes_per_token, "step_host_mib": self.step_host / 2 ** 20,
                "per_dp_replica_mib": self.per_dp_replica / 2 ** 20, "microbatch_gpu_mib": self.microbatch_gpu / 2 ** 20}


def routing_cost(inp: PlanInputs, layout: Layout, stages: list[StageMemory]) -> RoutingCost | None:
    """R3's routing bytes for this layout (None for dense models). Host: rollouts * seq_len tokens,
    DP replica: that / DP. GPU, one microbatch b*seq/CP tokens: the ids of all L layers as carried
    (id bytes) + their int64 copy (8 B) + each stage layer's contiguous int64 share (/TP under
    sequence parallelism), as r1mega.train.router_replay.set_replay builds them."""
    m = inp.model
    if not m.is_moe:
        return None
    from r1mega.train.router_replay import moe_layer_count, routing_bytes

    per_tok = routing_bytes(1, m)
    step = routing_bytes(inp.rollouts * inp.seq_len, m)
    T = inp.micro_batch * inp.seq_len / layout.cp
    L, k = moe_layer_count(m), m.num_experts_per_tok
    stage_layers = max(s.moe_layers for s in stages)
    gpu = T * per_tok + T * L * k * 8 + T / layout.tp * stage_layers * k * 8
    return RoutingCost(per_tok, step, step / layout.dp(inp.gpus), gpu)
