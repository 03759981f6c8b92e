"""Published GRPO runs the step-time model is calibrated on (NeMo-RL v0.6, DGX-H100, BF16, on-policy,
colocated vLLM). ``r1mega plan --anchors`` prints the model's prediction for each next to the
published figure; tests/plan asserts every one within 30% (the first three are fitted, the last two
held out). Sources and assumptions:
docs/planner.md "Calibration".

Every run is NeMo-RL's performance recipe (examples/configs/recipes/llm/performance/*.yaml at r0.6.0,
defaults from grpo_math_1B.yaml): sequence packing on, micro-batch 1, a KL reference (two log-prob
passes), colocated generation with sleep mode and trainer offload, MTP off. The prompt length is an
assumption (128 tokens, OpenMathInstruct-2 problems in the CoT template); the mean response is the
published mean sequence length minus it; the response cap is max_total_sequence_length minus it.
"""
from __future__ import annotations

from dataclasses import dataclass

from r1mega.model.presets import get_preset

from .inputs import PlanInputs

PROMPT = 128  # assumed mean prompt tokens (docs/planner.md "Calibration")


@dataclass(frozen=True)
class Anchor:
    name: str
    preset: str
    gpus: int
    seq: int                 # T-Max sequence length (max_total_sequence_length)
    mean_seq: int            # G-Average Seq len (prompt + response, mean)
    prompts: int
    group: int
    train_batch: int         # T-GBS: sequences per optimizer step
    rollout_tp: int
    layout: str              # train TP/CP/EP/PP (+ the recipe's uneven split)
    recompute: str           # activation_checkpointing true -> full
    logprob_micro_batch: int
    tokens_per_s_per_gpu: float   # published
    step_s: float                 # published
    calibrated: bool = True       # False: held out (a check of the model, not a fit target)

    def inputs(self, **kw) -> PlanInputs:
        model = get_preset(self.preset, **({"num_nextn_predict_layers": 0} if self.preset == "deepseek-v3" else {}))
        base = dict(model=model, gpus=self.gpus, gpu_mem_gib=80, hardware="h100", seq_len=self.seq, prompt_len=PROMPT,
                    mean_response_len=self.mean_seq - PROMPT, prompts=self.prompts, group=self.group,
                    minibatches=self.prompts * self.group // self.train_batch, micro_batch=1,
                    logprob_micro_batch=self.logprob_micro_batch, rollout_tp=self.rollout_tp,
                    recompute=self.recompute)
        base.update(kw)
        return PlanInputs(**base)


ANCHORS = (
    Anchor("DeepSeek-V3, 256 H100", "deepseek-v3", 256, 1536, 701, 32, 16, 512, 32,
           "tp=1,pp=16,ep=16,first=3,last=2", "full", 1, 12.1, 134),
    Anchor("Qwen3-235B-A22B, 128 H100", "qwen3-235b-a22b", 128, 8192, 5698, 16, 32, 512, 16,
           "tp=2,cp=2,pp=8,ep=16,first=11,last=11", "full", 1, 58.9, 395),
    Anchor("Qwen3-30B-A3B, 32 H100", "qwen3-30b-a3b", 32, 4096, 3203, 64, 32, 512, 2,
           "tp=1,pp=1,ep=8", "none", 4, 1102, 192),
    # held out: the same recipes on twice the GPUs
    Anchor("DeepSeek-V3, 512 H100", "deepseek-v3", 512, 1536, 697, 32, 16, 512, 32,
           "tp=1,pp=16,ep=16,first=3,last=2", "full", 1, 7.24, 111, calibrated=False),
    Anchor("Qwen3-235B-A22B, 256 H100", "qwen3-235b-a22b", 256, 8192, 5713, 16, 32, 512, 16,
           "tp=2,cp=2,pp=8,ep=16,first=11,last=11", "full", 1, 37.4, 312, calibrated=False),
)


def predict(anchor: Anchor):
    """The model's Evaluation of one anchor run (its exact layout)."""
    from .search import evaluate

    return evaluate(anchor.inputs(), anchor.layout)


def render() -> str:
    """Predicted vs published, with the predicted step broken down (seconds)."""
    rows = ["| run | published tok/s/GPU | predicted | ratio | published step s | predicted step s | generation "
            "| log-probs | train | refit | swaps | fits |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for a in ANCHORS:
        ev = predict(a)
        t = ev.time
        tag = "" if a.calibrated else " (held out)"
        rows.append(f"| {a.name}{tag} | {a.tokens_per_s_per_gpu:g} | {t.tokens_per_s_per_gpu:.1f} | "
                    f"{t.tokens_per_s_per_gpu / a.tokens_per_s_per_gpu:.2f} | {a.step_s:g} | {t.total:.0f} | "
                    f"{t.generation:.0f} | {t.logprob:.0f} | {t.train:.0f} | {t.refit:.1f} | {t.swap:.0f} | "
                    f"{'yes' if ev.feasible else 'no'} |")
    return "\n".join(rows)
