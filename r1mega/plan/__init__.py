"""Memory/throughput parallelism planner for colocated GRPO (Megatron trainer + vLLM engine).

Public API::

    from r1mega.plan import PlanInputs, evaluate, search, main
    inp = PlanInputs(model=get_preset("deepseek-v3"), gpus=256, gpu_mem_gib=80, seq_len=1536,
                     prompts=32, group=16, rollout_tp=32, recompute="full")
    ev = evaluate(inp, "tp=1,pp=16,ep=16")     # Evaluation: feasible, reasons, stages, time
    res = search(inp)                          # SearchResult: ranked (fits, best first), rejected

``main(argv)`` is the `r1mega plan` command. Formulas: docs/planner.md.
"""
from __future__ import annotations

from .cli import main
from .inputs import GIB, HARDWARE, Hardware, Layout, LayoutSpec, PlanInputs, candidate_splits, split_layers
from .generation import GenMemory, gen_memory, kv_bytes_per_token_layer
from .memory import StageMemory, bytes_per_param, layer_share, mla_latent_down_params, padded_vocab, stage_memories
from .search import Evaluation, SearchResult, evaluate, layout_errors, search, search_space
from .throughput import StepTime, step_time

__all__ = ["main", "PlanInputs", "Layout", "LayoutSpec", "Hardware", "HARDWARE", "GIB", "Evaluation",
           "SearchResult", "evaluate", "search", "search_space", "layout_errors", "split_layers",
           "candidate_splits", "GenMemory", "StageMemory", "StepTime", "gen_memory", "stage_memories",
           "step_time", "bytes_per_param", "kv_bytes_per_token_layer", "layer_share", "mla_latent_down_params",
           "padded_vocab"]
