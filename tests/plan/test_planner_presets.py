"""The planner on the dense GQA, Qwen3 and Qwen3-MoE presets, and the R3 routing estimate: hand-computed bytes.

Shapes (public config.json, r1mega.model.presets):
  llama-3.1-8b:  h 4096, 32 layers, 32 heads / 8 KV heads of 128, FFN 14336, vocab 128256, untied, no biases
  qwen2.5-1.5b:  h 1536, 28 layers, 12 heads / 2 KV heads of 128, FFN 8960, vocab 151936, tied, q/k/v biases
  qwen3-30b-a3b: h 2048, 48 MoE layers, 32 heads / 4 KV heads of 128, q/k norms, 128 experts of 768, top-8,
                 no shared expert, vocab 151936, untied
"""
from __future__ import annotations

import pytest

from r1mega.config.base import ConfigError
from r1mega.model.presets import get_preset
from r1mega.plan import GIB, Layout, PlanInputs, evaluate, gen_memory, kv_bytes_per_token_layer, main, stage_memories
from r1mega.plan.generation import rollout_tp_error
from r1mega.plan.memory import layer_activation
from r1mega.plan.routing import routing_cost
from r1mega.plan.throughput import generation_seconds


def inputs(preset: str, gpus: int = 8, **kw) -> PlanInputs:
    base = dict(model=get_preset(preset), gpus=gpus, gpu_mem_gib=80, seq_len=1024, prompts=8, group=8)
    base.update(kw)
    return PlanInputs(**base)


# ---------------------------------------------------------------- llama-3.1-8b (dense GQA, untied)
# per layer: q 4096*4096 = 16,777,216; k, v 4096*1024 = 4,194,304 each (K/V: 8,388,608); o 16,777,216;
#   SwiGLU 3*4096*14336 = 176,160,768; norms 2*4096 = 8,192
# TP-split in vLLM: q + o + FFN = 209,715,200 per layer, x32 = 6,710,886,400, + embedding and head
#   2*128256*4096 = 1,050,673,152 -> 7,761,559,552; replicated: norms 32*8192 + final 4096 = 266,240;
#   K/V 32*8,388,608 = 268,435,456 split over min(TP, 8 KV heads). Total 8,030,261,248.

def test_llama_gqa_generation_weights_and_kv_cache():
    inp = inputs("llama-3.1-8b", gpus=16)
    assert gen_memory(inp, 2).weights == 2 * (7_761_559_552 / 2 + 266_240 + 268_435_456 / 2) == 8_030_527_488
    # TP16 > 8 KV heads: each rank holds one KV head (replicated twice), not 1/16 of them
    assert gen_memory(inp, 16).weights == 2 * (7_761_559_552 / 16 + 266_240 + 268_435_456 / 8) == 1_037_836_288
    # 2 (K and V) x 8 heads x 128 x 2 bytes per layer, split by TP while KV heads allow, then replicated
    m = inp.model
    assert kv_bytes_per_token_layer(m, 1) == 4096
    assert kv_bytes_per_token_layer(m, 8) == 512
    assert kv_bytes_per_token_layer(m, 16) == 512
    g = gen_memory(inp, 2)
    assert g.kv_per_token == 32 * 2048
    assert g.kv_cache == g.concurrency * 1024 * 32 * 2048


def test_llama_training_weights_per_gpu():
    # TP2: attention 4 * 16,777,216 + ... / 2; per layer (16,777,216*2 + 8,388,608 + 176,160,768)/2 + 8,192
    #   = 109,060,096 + 8,192; stage (PP1): 32 layers + embedding/2 + head/2 + final norm
    inp = inputs("llama-3.1-8b")
    lay = Layout(tp=2, pp=1, stages=(32,), recompute="full")
    s = stage_memories(inp, lay, gen_memory(inp, 2))[0]
    per_layer = (2 * 16_777_216 + 8_388_608 + 176_160_768) / 2 + 8_192
    assert s.params_dense == 32 * per_layer + 2 * 128_256 * 4096 / 2 + 4096 == 4_015_263_744
    assert s.params_expert == 0 and s.terms["moe_dispatch"] == 0


# ---------------------------------------------------------------- qwen2.5-1.5b (biases, tied embeddings)
# per layer: q 1536*1536 + bias 1536; k, v 1536*256 each + biases 2*256 (K/V: 786,944); o 1536*1536;
#   SwiGLU 3*1536*8960 = 41,287,680; norms 3,072. TP-split: 46,007,808 per layer, x28 + the one (tied)
#   embedding 151936*1536 = 233,373,696 -> 1,521,592,320; replicated 28*3072 + 1536 = 87,552;
#   K/V 28*786,944 = 22,034,432 over min(TP, 2). Total 1,543,714,304.

def test_qwen25_tied_embeddings_and_kv_biases():
    inp = inputs("qwen2.5-1.5b")
    assert gen_memory(inp, 4).weights == 2 * (1_521_592_320 / 4 + 87_552 + 22_034_432 / 2) == 783_005_696
    assert kv_bytes_per_token_layer(inp.model, 4) == 2 * 128 * 2          # one KV head per rank
    s = stage_memories(inp, Layout(tp=2, pp=1, stages=(28,)), gen_memory(inp, 2))[0]
    # tied and PP1: one vocab matrix (no output head), padded by Megatron to a multiple of 128*TP = 256:
    # 151,936 -> 152,064 rows; attention with biases split over TP
    per_layer = (2 * 1536 * 1536 + 1536 + 786_944 + 41_287_680) / 2 + 3072
    assert s.params_dense == 28 * per_layer + 152_064 * 1536 / 2 + 1536


def test_rollout_tp_follows_vllm_kv_head_rule():
    q7 = get_preset("qwen2.5-7b")                                       # 28 heads, 4 KV heads
    assert rollout_tp_error(q7, 4) is None and rollout_tp_error(q7, 28) is None
    assert "neither divides" in rollout_tp_error(q7, 14)
    assert "attention heads" in rollout_tp_error(get_preset("llama-3.1-8b"), 3)
    with pytest.raises(ConfigError, match="plan.rollout_tp"):
        evaluate(inputs("qwen2.5-7b", gpus=28, prompts=28, group=1, rollout_tp=14), "tp=1,pp=1")


def test_cli_refuses_bad_rollout_tp_and_mean_response(capsys):
    base = ["--preset", "qwen2.5-7b", "--gpus", "28", "--prompts", "28", "--group", "1", "--seq", "1024"]
    assert main(base + ["--rollout-tp", "14", "--layout", "tp=1"]) == 2
    assert "plan.rollout_tp: KV heads 4 and rollout TP 14" in capsys.readouterr().err
    assert main(base + ["--mean-response", "900", "--layout", "tp=1"]) == 2   # cap = 1024 - 256 = 768
    assert "plan.mean_response_len: got 900" in capsys.readouterr().err


# ---------------------------------------------------------------- qwen3-30b-a3b (GQA + q/k norms + MoE)
# per layer: q 2048*4096 = 8,388,608; k, v 2048*512 each (K/V 2,097,152); o 8,388,608 -> 18,874,368;
#   norms 2*2048 + q/k norms 2*128 = 4,352; router 128*2048 = 262,144; experts 128*3*2048*768 = 603,979,776
#   (no shared expert); embedding = head = 151936*2048 = 311,164,928. Total 30,532,122,624.

def test_qwen3_moe_generation_weights_and_kv():
    inp = inputs("qwen3-30b-a3b", gpus=8)
    replicated = 48 * (4_352 + 262_144) + 2_048                         # norms (q/k norms too), routers, final
    kv = 48 * 2_097_152
    rest = 30_532_122_624 - replicated - kv
    assert gen_memory(inp, 2).weights == 2 * (rest / 2 + replicated + kv / 2) == 30_544_916_480
    assert gen_memory(inp, 8).weights == 2 * (rest / 8 + replicated + kv / 4) == 7_680_585_728
    g = gen_memory(inp, 2)
    assert g.kv_per_token == 48 * 2 * 4 * 128 * 2 // 2 == 49_152
    assert g.expert_weights == 2 * 48 * 603_979_776 / 2


def test_qwen3_moe_training_stage_and_activations():
    inp = inputs("qwen3-30b-a3b", gpus=8, seq_len=4096)
    s = stage_memories(inp, Layout(tp=1, pp=1, ep=8, stages=(48,), recompute="none"), gen_memory(inp, 2))[0]
    assert s.params_dense == 48 * (18_874_368 + 4_352 + 262_144) + 2 * 311_164_928 + 2_048 == 1_541_093_376
    assert s.params_expert == 48 * 603_979_776 / 8 == 3_623_878_656
    assert s.terms["moe_dispatch"] == 2 * 2 * (8 * 4096) * 2048       # no shared-expert term, top-8 copies
    # one MoE layer's saved tensors, T = 4096, TP1, bf16 (recompute none):
    #   attention: norm in/out 2*2*T*h = 33,554,432; q/k before their norms 2*T*(32+4)*128 = 37,748,736;
    #   q, k, v 2*T*(32+8)*128 = 41,943,040; attention out 2*T*4096 = 33,554,432; log-sum-exp 4*T*32 = 524,288
    #   MoE: norm in/out 33,554,432; router fp32 8*T*128 = 4,194,304; n = 8T routed copies: dispatched
    #   2*n*h = 134,217,728, fc1 out 2*n*1536 = 100,663,296, SwiGLU out 2*n*768 = 50,331,648,
    #   fc2 out 2*n*h = 134,217,728
    full = (33_554_432 + 37_748_736 + 41_943_040 + 33_554_432 + 524_288
            + 33_554_432 + 4_194_304 + 134_217_728 + 100_663_296 + 50_331_648 + 134_217_728)
    assert layer_activation(inp.model, "moe", 4096, 1, 1, 2, "none") == (full, full) == (604_504_064,) * 2


def test_new_presets_all_plan_on_a_node():
    for preset, gpus in (("qwen2.5-1.5b", 8), ("qwen2.5-7b", 8), ("qwen3-8b", 8), ("llama-3.1-8b", 8),
                         ("qwen3-30b-a3b", 8), ("deepseek-v2-lite", 8), ("qwen2.5-32b", 16), ("llama-3.3-70b", 32),
                         ("qwen3-235b-a22b", 64)):
        ev = evaluate(inputs(preset, gpus=gpus, rollout_tp=None), "tp=4,pp=1" if gpus > 8 else "tp=2,pp=1")
        assert ev.kind != "invalid", (preset, ev.reasons)
        assert ev.gen.weights > 0 and ev.time.total > 0


# ---------------------------------------------------------------- decode model, hand-computed

def test_decode_seconds_hand_computed():
    # llama-3.1-8b on 1 GPU: 16 sequences (one engine, all at once), prompt 256, cap 768, mean 512
    inp = inputs("llama-3.1-8b", gpus=1, prompts=4, group=4, prompt_len=256, mean_response_len=512, rollout_tp=1)
    g = gen_memory(inp, 1)
    prefill, decode, steps = generation_seconds(inp, g)
    assert steps == 768                                  # the longest response decides
    weights = 2 * 8_030_261_248
    kv_read = 16 * 512 * (256 + 512 / 2) * 32 * 4096     # token-steps x mean context x KV bytes per token
    memory = (768 * weights + kv_read) / (3.35e12 * 0.6)
    latency = 768 * 32 * 40e-6                           # decode_layer_us per layer per step (no TP all-reduce)
    assert decode == pytest.approx(memory + latency)
    # more sequences than the concurrency cap: full batches, then the tail
    inp2 = inp.replace(prompts=64, group=8, max_num_seqs=256)  # 512 sequences, 256 at once
    assert generation_seconds(inp2, gen_memory(inp2, 1))[2] == 512 * 512 / 256 + (768 - 512)


# ---------------------------------------------------------------- router replay (issue 19)
# DeepSeek-V3: 58 MoE layers x top-8 x uint8 = 464 B per token (r1mega.train.router_replay.routing_bytes);
# docs/rollout.md's example: 512 rollouts x 1,536 tokens = 786,432 tokens -> 364,904,448 B = 348 MiB.

def test_router_replay_cost_deepseek_v3():
    from tests.plan.test_planner import nemo_rl_inputs

    ev = evaluate(nemo_rl_inputs(), "tp=1,pp=16,ep=16,first=3,last=2")
    r = ev.routing
    assert r.bytes_per_token == 58 * 8 * 1 == 464
    assert r.step_host == 786_432 * 464 == 364_904_448 and round(r.step_host / 2 ** 20) == 348
    assert r.per_dp_replica == 364_904_448 / 16                       # DP 16: 21.75 MiB
    # one microbatch on a GPU: its ids (1,536 x 464) + their int64 copy (1,536 x 58 x 8 x 8)
    # + the stage's 4 layers' int64 share (1,536 x 4 x 8 x 8 = 393,216)
    assert r.microbatch_gpu == 1536 * 464 + 1536 * 58 * 8 * 8 + 393_216 == 6_807_552
    assert "routing" not in ev.stages[1].terms                        # counted only with --router-replay
    r3 = evaluate(nemo_rl_inputs(router_replay="r3"), "tp=1,pp=16,ep=16,first=3,last=2")
    s1 = r3.stages[1]                                                 # 15 microbatches in flight
    assert s1.terms["routing"] == 712_704 * 15 + 712_704 * 8 + 393_216 == 16_785_408
    assert s1.phases["train"]["routing"] == s1.terms["routing"]
    assert r3.stages[0].terms.get("routing", 0) == 0                  # stage 0: 3 dense layers, no router
    assert evaluate(inputs("llama-3.1-8b"), "tp=1").routing is None


def test_cli_prints_router_replay_estimate(capsys):
    args = ["--preset", "deepseek-v3", "--gpus", "256", "--gpu-mem", "80", "--seq", "1536", "--rollout-tp", "32",
            "--recompute", "full", "--layout", "tp=1,pp=16,ep=16,first=3,last=2"]
    assert main(args + ["--router-replay", "r3"]) == 0
    out = capsys.readouterr().out
    assert "router replay (R3) routing: 464 B/token; 348 MiB per step" in out and "21.8 MiB per DP replica" in out
    assert " routing " in out.split("per-GPU memory")[1].splitlines()[1] + " "


def test_auto_rollout_tp_grows_until_a_layout_fits_with_the_trainer_resident():
    """With the trainer resident the engine alone fitting a GPU (rollout TP 1 on 141 GiB) is not enough: the
    planner takes the next rollout TP while no layout fits (it stopped at TP 1 and found none)."""
    from r1mega.plan import search
    inp = inputs("qwen3-30b-a3b", gpu_mem_gib=141, seq_len=4096, prompts=32, group=16, rollout_tp=None,
                 trainer_offload=False)
    res = search(inp)
    assert res.gen.rollout_tp == 2 and len(res.ranked) > 0
    assert evaluate(inp, "tp=4,pp=1,ep=8").gen.rollout_tp == 2
    assert not search(inputs("qwen3-30b-a3b", gpu_mem_gib=141, seq_len=4096, prompts=32, group=16, rollout_tp=1,
                             trainer_offload=False)).ranked
    # with the trainer offloaded the smallest engine that fits stays the choice
    assert search(inputs("qwen3-30b-a3b", gpu_mem_gib=141, seq_len=4096, prompts=32, group=16,
                         rollout_tp=None)).gen.rollout_tp == 1
