"""The generation engine that produces rollouts (GRPO, rejection sampling, eval)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import check, check_choice, check_int, check_positive, doc

ENGINES = ("vllm", "megatron")
ROUTER_REPLAY = ("none", "r2", "r3")


@dataclass
class RolloutConfig:
    engine: str = doc("vllm", "Generation engine: 'vllm' (colocated vLLM, weights refitted each step) or 'megatron' (the trainer's own model, slow, for tests).")
    tensor_parallel: int = doc(1, "vLLM tensor-parallel size (independent of the trainer's TP).")
    gpu_memory_utilization: float = doc(0.5, "Fraction of GPU memory vLLM may take (weights + KV cache); the trainer shares the GPU.")
    kv_cache_memory_bytes: Optional[int] = doc(None, "KV-cache size in bytes for vLLM (None: on CPU sized for the stage's largest generate batch x max_model_len within cpu_kv_cache_budget_gb; on GPU from gpu_memory_utilization).")
    cpu_kv_cache_budget_gb: Optional[float] = doc(None, "Most GiB the vLLM-CPU KV cache may take when it is sized from the batch (per engine process; None = min(4, 25% of RAM)). Ignored when kv_cache_memory_bytes is set and on GPU.")
    enable_sleep_mode: bool = doc(True, "Let vLLM release its GPU memory while the trainer runs (GPU only).")
    offload_trainer: bool = doc(True, "GRPO: while vLLM generates, park the trainer's weights and optimizer state in (pinned) host memory and free its gradient buffers; the optimizer state goes before the refit, the weights after it, and the KL reference model stays in host memory outside its log-prob pass (docs/rollout.md, Trainer offload during generation; the planner's default, --no-trainer-offload = false). Skipped on the CPU, where the host is the device, and with rollout.engine 'megatron', which generates with the trainer's model.")
    enforce_eager: bool = doc(False, "Disable CUDA graphs in vLLM (slower; easier debugging).")
    max_model_len: Optional[int] = doc(None, "Longest prompt + completion vLLM accepts (None = data.seq_length).")
    max_new_tokens: int = doc(256, "Most tokens generated per completion.")
    temperature: float = doc(1.0, "Sampling temperature (0 = greedy). In GRPO stages it must equal grpo.temperature.")
    top_p: float = doc(1.0, "Nucleus sampling: keep the smallest token set with this much probability (1 = off).")
    top_k: int = doc(-1, "Sample among the k most likely tokens (-1 or 0 = off).")
    stop: list[str] = doc(["</answer>"], "Strings that end a completion.")
    include_stop_str_in_output: bool = doc(True, "Keep the matched stop string in the completion (format rewards look for '</answer>').")
    seed: int = doc(1234, "Sampling seed.")
    refit_bucket_mb: int = doc(256, "Size of the buckets weights are sent to vLLM in during a refit, in MiB.")
    mismatch_threshold: Optional[float] = doc(0.1, "Fail when the mean |rollout logprob - trainer logprob| of sampled tokens exceeds this (a broken refit); None = no check.")
    router_replay: str = doc("none", "MoE routing replay in GRPO (docs/rollout.md, Router replay). 'none': every forward routes by itself. 'r2': the trainer's old-log-prob forward records each token's experts and the policy updates (and the reference forward) replay them (nothing to replay when a step makes one update from the training forward itself). 'r3': the rollout engine returns the experts it routed every prompt and sampled token to, and every trainer forward of the step replays them (vLLM on GPU; on CPU only rollout.engine='megatron'). MoE models only.")

    def validate(self, where: str = "rollout") -> None:
        check_choice(self.engine, ENGINES, f"{where}.engine")
        check_choice(self.router_replay, ROUTER_REPLAY, f"{where}.router_replay")
        check_int(self.tensor_parallel, f"{where}.tensor_parallel")
        check(isinstance(self.gpu_memory_utilization, (int, float)) and 0 < self.gpu_memory_utilization <= 1,
              f"{where}.gpu_memory_utilization", f"got {self.gpu_memory_utilization!r}, expected 0 < value <= 1")
        check_int(self.kv_cache_memory_bytes, f"{where}.kv_cache_memory_bytes", allow_none=True)
        if self.cpu_kv_cache_budget_gb is not None:
            check_positive(self.cpu_kv_cache_budget_gb, f"{where}.cpu_kv_cache_budget_gb")
        check_int(self.max_model_len, f"{where}.max_model_len", allow_none=True)
        check_int(self.max_new_tokens, f"{where}.max_new_tokens")
        check_positive(self.temperature, f"{where}.temperature", allow_zero=True)
        check(0 < self.top_p <= 1, f"{where}.top_p", f"got {self.top_p!r}, expected 0 < value <= 1")
        check_int(self.top_k, f"{where}.top_k", minimum=-1)
        for i, s in enumerate(self.stop):
            check(isinstance(s, str) and s != "", f"{where}.stop[{i}]", f"got {s!r}, expected a non-empty string")
        check_int(self.seed, f"{where}.seed", minimum=0)
        check_int(self.refit_bucket_mb, f"{where}.refit_bucket_mb")
        if self.mismatch_threshold is not None:
            check_positive(self.mismatch_threshold, f"{where}.mismatch_threshold")
