"""Qwen3-MoE (GQA with q/k norms, softmax top-k renormalised, no shared expert) and DeepSeek-V2-Lite (MLA without q
LoRA, softmax top-k of the full softmax times routed_scaling_factor, shared experts) through the vLLM-CPU refit.

The engine starts from the config.json the bridge writes (Qwen3MoeForCausalLM / DeepseekV2ForCausalLM) with dummy
weights; every refit streams the trainer's weights (experts, routers, norms) in vLLM's checkpoint names, and the
probe check (VllmEngine.check_probe) compares the engine with the trainer. Here: engine == trainer == transformers
after the start-up refit and after a refit of changed weights, and the routing setting is worth far more than the
parity bound on these texts (an engine that routed the other way would fail).
"""
from __future__ import annotations

import pytest

from rollout_support import HostClient, check_refits, max_abs_diff

pytestmark = pytest.mark.slow

PARITY = 1e-3
QWEN3_MOE = ["model.arch=qwen3_moe", "model.qk_norm=true", "model.rope_theta=1000000.0", "model.n_routed_experts=8",
             "model.n_shared_experts=0", "model.moe_intermediate_size=96", "model.num_experts_per_tok=2",
             "model.scoring_func=softmax", "model.norm_topk_prob=true", "model.routed_scaling_factor=1.0",
             "model.n_group=1", "model.topk_group=1", "model.expert_bias=false", "model.first_k_dense_replace=1",
             "model.aux_loss_type=aux_loss", "model.seq_aux_loss_coeff=0.001"]
V2_LITE = ["model.q_lora_rank=null", "model.scoring_func=softmax", "model.norm_topk_prob=false",
           "model.expert_bias=false", "model.routed_scaling_factor=2.0", "model.n_group=1", "model.topk_group=1",
           "model.n_shared_experts=2", "model.num_nextn_predict_layers=0"]
CASES = {
    # case: (preset, overrides, HF architecture, config.json change that drops the routing feature)
    "qwen3_moe": ("tiny-dense", QWEN3_MOE, "Qwen3MoeForCausalLM", {"norm_topk_prob": False}),
    "deepseek_v2_lite": ("tiny", V2_LITE, "DeepseekV2ForCausalLM", {"routed_scaling_factor": 1.0}),
}
TEXTS = ["The quick brown fox jumps over the lazy dog, twice.", "What is 12+7? <think> 12+7 = 19 </think>",
         " ".join(f"Step {i}: {i} + {i} = {2 * i}." for i in range(1, 16))]


@pytest.fixture(scope="module", params=list(CASES))
def host(request, tmp_path_factory):
    client = HostClient(tmp_path_factory.mktemp(f"host-{request.param}"))
    try:
        client.case = request.param
        preset, overrides = CASES[request.param][:2]
        client.info = client("setup", preset, overrides)
        client.seqs = [ids[:160] for ids in client("encode", TEXTS)]
        yield client
    finally:
        client.close()


def test_refit_parity_and_probe(host):
    check_refits(host, CASES[host.case][2], PARITY)


def test_the_routing_matters_on_these_texts(host):
    """The same weights with the other routing setting (Qwen3-MoE without norm_topk_prob, DeepSeek-V2 without its
    routed_scaling_factor) give log-probs far outside the parity bound."""
    trainer = host("trainer_logprobs", host.seqs)
    off = max_abs_diff(host("hf_logprobs", host.seqs, CASES[host.case][3]), trainer)
    print(f"{host.case}: max |log-prob diff| with the other routing {off:.3f}")
    assert off > 50 * PARITY
