"""The parallelism planner: published layouts fit, impossible ones do not, hand-summed terms."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r1mega.config.base import ConfigError
from r1mega.model.presets import get_preset
from r1mega.plan import (GIB, Layout, PlanInputs, candidate_splits, evaluate, gen_memory, kv_bytes_per_token_layer,
                         layout_errors, main, search, split_layers, stage_memories)

ROOT = Path(__file__).resolve().parents[2]


def nemo_rl_inputs(**kw) -> PlanInputs:
    """NeMo-RL's DeepSeek-V3 GRPO run: 256 H100-80GB, gen TP32, seq 1536, 32 prompts x 16."""
    base = dict(model=get_preset("deepseek-v3"), gpus=256, gpu_mem_gib=80, seq_len=1536, prompts=32, group=16,
                micro_batch=1, rollout_tp=32, recompute="full", distributed_optimizer=True, sleep_mode=True)
    base.update(kw)
    return PlanInputs(**base)


def tiny_inputs(gpus: int = 1, **kw) -> PlanInputs:
    base = dict(model=get_preset("tiny"), gpus=gpus, gpu_mem_gib=80, seq_len=256, prompts=4, group=4)
    base.update(kw)
    return PlanInputs(**base)


# ---------------------------------------------------------------- published and impossible layouts

@pytest.mark.parametrize("layout", ["tp=1,pp=16,ep=16", "tp=1,pp=16,ep=16,first=3,last=2"])
def test_nemo_rl_deepseek_v3_layout_fits(layout):
    ev = evaluate(nemo_rl_inputs(), layout)
    assert ev.feasible, ev.reasons
    assert ev.layout.dp(256) == 16 and ev.layout.edp(256) == 1
    assert len(ev.stages) == 16 and sum(ev.layout.stages) == 61
    assert 40 < ev.peak_gib < 80
    w = ev.worst_stage
    # expert-DP is 1: the routed experts' Adam state is not sharded, it dominates the stage
    assert w.terms["optimizer"] > w.terms["grads"] > w.terms["weights"]
    assert ev.stages[0].in_flight == 16 and ev.stages[-1].in_flight == 1
    assert ev.stages[0].has_embedding and ev.stages[-1].has_head and ev.stages[-1].mtp_layers == 1
    # the vLLM engine: 671B / 32 in bf16 plus the replicated pieces, MLA latent KV for 64 seqs
    assert 38 < ev.gen.weights / GIB < 43 and ev.gen.concurrency == 64
    assert ev.time.total > 0 and 0.3 < ev.time.bubble_fraction < 0.33  # 15 / (32 + 15)


def test_nemo_rl_layout_needs_sleep_mode():
    ev = evaluate(nemo_rl_inputs(sleep_mode=False), "tp=1,pp=16,ep=16")
    assert not ev.feasible
    assert ev.reasons[0].startswith("train phase") and "gen_weights" in ev.reasons[0]


def test_deepseek_v3_on_8_gpus_does_not_fit():
    inp = nemo_rl_inputs(gpus=8, rollout_tp=None)
    res = search(inp)
    assert res.ranked == []
    oom = [e for e in res.rejected if e.kind == "oom"]
    assert oom and all("train phase" in e.reasons[0] or "generation phase" in e.reasons[0] for e in oom)
    assert main(["--preset", "deepseek-v3", "--gpus", "8", "--gpu-mem", "80"]) == 1


def test_deepseek_v3_single_replica_on_256_gpus_does_not_fit():
    ev = evaluate(nemo_rl_inputs(), "tp=1,pp=1,ep=1")
    assert not ev.feasible and ev.kind == "oom"
    assert "largest term: grads" in ev.reasons[0]
    assert ev.stages[0].terms["weights"] / GIB > 1000  # 671B bf16 on one GPU


def test_tiny_on_one_gpu_fits():
    res = search(tiny_inputs())
    assert len(res.ranked) >= 1 and res.ranked[0].feasible
    assert res.ranked[0].layout.tp == res.ranked[0].layout.pp == 1
    assert res.ranked[0].peak_gib < 10


def test_ranking_puts_a_sane_layout_first_for_v2_lite_on_8_gpus():
    res = search(PlanInputs(model=get_preset("deepseek-v2-lite"), gpus=8, gpu_mem_gib=80, seq_len=1536,
                            prompts=32, group=16))
    assert len(res.ranked) > 5
    best = res.ranked[0].layout
    assert best.pp == 1 and best.tp <= 2 and best.ep > 1, best
    # a full replica per GPU (TP1 PP1 EP1) cannot hold its fp32 grads + Adam state
    ev = evaluate(res.inputs, "tp=1,pp=1,ep=1")
    assert not ev.feasible and "train phase" in ev.reasons[0]
    times = [e.time.total for e in res.ranked]
    assert times == sorted(times)


# ---------------------------------------------------------------- hand-computed terms (tiny preset)
# tiny: h=128, V=512, 4 layers (1 dense + 3 MoE), 4 heads, q_lora 64, kv_lora 512, nope/rope/v
# 32/64/32, dense FFN 384, 8 routed experts of 96 + 1 shared, top-2, MTP 1.
#   attention = q_down 128*64 + q_up 64*4*96 + kv_down 128*576 + kv_up 512*4*64 + out 4*32*128
#             = 8192 + 24576 + 73728 + 131072 + 16384 = 253952; latent down-projections 81920
#   norms per layer = 2*128 + 64 + 512 = 832; dense FFN 3*128*384 = 147456
#   router 8*128 = 1024; shared 3*128*96 = 36864; routed 8*36864 = 294912
# TP2 EP2 ETP1: attention per GPU = (253952-81920)/2 + 81920 = 167936
#   dense layer: 167936 + 832 + 147456/2 = 242496
#   MoE layer:   167936 + 832 + 1024 + 36864/2 = 188224 (+ experts 294912/2 = 147456)
#   embedding = head = 512*128/2 = 32768; MTP extras: eh_proj 2*128*128/2 = 16384, norms 3*128
# PP2 split 2/2: stage 0 = emb + dense + MoE: dense 463488, expert 147456 -> 610944 params
#   stage 1 = 2 MoE + final norm + head + MTP (MoE layer + eh + norms) + embedding copy:
#   dense 2*188224 + 128 + 32768 + 188224 + 16384 + 384 + 32768 = 647104, expert 3*147456 = 442368

def test_weight_bytes_per_gpu_hand_summed():
    inp = tiny_inputs(gpus=4, param_dtype="bf16")
    lay = Layout(tp=2, pp=2, ep=2, etp=1, stages=(2, 2), recompute="full")
    s0, s1 = stage_memories(inp, lay, gen_memory(inp, 1))
    assert (s0.params_dense, s0.params_expert) == (463488, 147456)
    assert (s1.params_dense, s1.params_expert) == (647104, 442368)
    assert s0.terms["weights"] == 2 * 610944
    assert s1.terms["weights"] == 2 * (647104 + 442368)
    assert s0.terms["grads"] == 4 * 610944          # fp32 main grads
    bf16 = stage_memories(inp.replace(grad_dtype="bf16"), lay, gen_memory(inp, 1))
    assert bf16[0].terms["grads"] == 2 * 610944


def test_optimizer_sharding_factor():
    # world 16, TP2 PP2 EP2 ETP2: dense state over DP = 16/(2*2) = 4, expert state over
    # expert-DP = 16/(2*2*2) = 2; stage 0 experts = 294912/(EP2*ETP2) = 73728
    inp = tiny_inputs(gpus=16)
    lay = Layout(tp=2, pp=2, ep=2, etp=2, stages=(2, 2), recompute="full")
    assert lay.dp(16) == 4 and lay.edp(16) == 2
    s0 = stage_memories(inp, lay, gen_memory(inp, 1))[0]
    assert s0.params_expert == 73728
    assert s0.terms["optimizer"] == pytest.approx(12 * (463488 / 4 + 73728 / 2))
    no_dist = stage_memories(inp.replace(distributed_optimizer=False), lay, gen_memory(inp, 1))[0]
    assert no_dist.terms["optimizer"] == pytest.approx(12 * (463488 + 73728))
    off = stage_memories(inp.replace(optimizer_offload=True), lay, gen_memory(inp, 1))[0]
    assert off.terms["optimizer"] == 0 and off.host >= 12 * (463488 / 4 + 73728 / 2)


def test_mla_kv_bytes_per_token():
    v3 = get_preset("deepseek-v3")
    assert kv_bytes_per_token_layer(v3) == (512 + 64) * 2 == 1152
    assert kv_bytes_per_token_layer(v3, rollout_tp=32) == 1152       # the latent is replicated over TP
    assert kv_bytes_per_token_layer(v3, kv_bytes=1) == 576
    g = gen_memory(nemo_rl_inputs(), 32)
    assert g.kv_per_token == 61 * 1152
    assert g.kv_cache == 64 * 1536 * 61 * 1152                        # 64 concurrent sequences
    dense = get_preset("tiny-dense")                                  # GQA: 2 KV heads of 32
    assert kv_bytes_per_token_layer(dense, rollout_tp=1) == 2 * 2 * 32 * 2
    assert kv_bytes_per_token_layer(dense, rollout_tp=2) == 2 * 32 * 2


def test_generation_weights_shard_and_replicate():
    inp = tiny_inputs()
    from r1mega.model.counting import count_parameters
    total = count_parameters(inp.model).total                        # MTP is not loaded by vLLM
    replicated = 4 * 832 + 4 * 81920 + 3 * 1024 + 128                 # norms, latent downs, routers, final norm
    g = gen_memory(inp, 2)
    assert g.weights == pytest.approx(2 * ((total - replicated) / 2 + replicated))
    assert gen_memory(inp.replace(fp8=True), 2).weights == pytest.approx(g.weights / 2)


def test_activation_recompute_modes_and_pipeline_in_flight():
    inp = nemo_rl_inputs()
    acts = {}
    for mode in ("none", "selective", "full"):
        ev = evaluate(inp, f"tp=1,pp=16,ep=16,first=3,last=2,recompute={mode}")
        acts[mode] = ev.stages[1].terms["activations"]
        # 1F1B: stage i holds min(PP - i, microbatches) microbatches (32 microbatches here)
        assert [s.in_flight for s in ev.stages] == [16 - i for i in range(16)]
    assert acts["none"] > acts["selective"] > acts["full"]
    # full recompute keeps only each layer's input, 2*s*h bytes, per in-flight microbatch
    ev = evaluate(inp, "tp=1,pp=16,ep=16,first=3,last=2,recompute=full")
    s1 = ev.stages[1]
    stored = 4 * 15 * 2 * 1536 * 7168
    assert stored < s1.terms["activations"] < stored + 2 * GIB
    # MoE dispatch buffers: 2 * (tokens * top-k) * hidden
    assert s1.terms["moe_dispatch"] == 2 * 2 * 1536 * 8 * 7168


def test_layout_constraints():
    inp = nemo_rl_inputs()
    assert layout_errors(inp, 1, 16, 16, 1, 1) == []
    assert any("heads" in e for e in layout_errors(inp.replace(model=get_preset("deepseek-v2-lite")), 32, 1, 1, 1, 1))
    assert any("routed experts" in e for e in layout_errors(inp, 1, 1, 3, 1, 1))
    assert any("ETP*EP*PP" in e for e in layout_errors(inp, 1, 16, 32, 1, 1))
    assert any("global batch" in e for e in layout_errors(inp.replace(prompts=1, group=1), 1, 1, 1, 1, 1))
    ev = evaluate(inp, "tp=3,pp=1,ep=1")
    assert ev.kind == "invalid" and not ev.feasible
    assert evaluate(inp, "tp=2,pp=16,ep=16").layout.sequence_parallel   # MoE + TP > 1 -> SP on


def test_layer_splits_follow_megatron_rules():
    assert split_layers(61, 16, 3, 2) == (3,) + (4,) * 14 + (2,)
    assert split_layers(8, 4) == (2, 2, 2, 2)
    with pytest.raises(ConfigError):
        split_layers(61, 16)                    # uneven needs first/last
    with pytest.raises(ConfigError):
        split_layers(61, 16, 4, 4)              # 53 middle layers over 14 stages
    cands = candidate_splits(61, 16)
    assert (3,) + (4,) * 14 + (2,) in cands and all(sum(c) == 61 and len(c) == 16 for c in cands)
    assert candidate_splits(61, 32)             # far from balanced, but valid


# ---------------------------------------------------------------- command line

ARGS = ["--preset", "deepseek-v3", "--gpus", "256", "--gpu-mem", "80", "--seq", "1536", "--prompts", "32",
        "--group", "16", "--rollout-tp", "32", "--recompute", "full"]


def test_cli_layout_table_and_json(capsys):
    assert main(ARGS + ["--layout", "tp=1,pp=16,ep=16"]) == 0
    out = capsys.readouterr().out
    assert "FITS" in out and "optimizer" in out and "kv_cache" in out
    assert main(ARGS + ["--layout", "tp=1,pp=1,ep=1"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert main(ARGS + ["--layout", "tp=1,pp=16,ep=16", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["evaluation"]["feasible"] and d["evaluation"]["dp"] == 16
    assert main(ARGS + ["--top", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["ranked"]) == 3 and d["counts"]["fit"] >= 3
    assert main(ARGS + ["--layout", "tp=1,bogus=2"]) == 2


def test_tools_script_runs():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "plan_parallelism.py"), "--preset", "tiny",
                        "--gpus", "1", "--gpu-mem", "16", "--seq", "256", "--prompts", "4", "--group", "4"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "1 fit" in r.stdout


def test_a_plan_is_a_config():
    """`--recompute` takes parallel.recompute's values, and a planned layout's `r1mega config` overrides are a
    config that passes the check at that world size and gives Megatron the recompute the plan assumed."""
    from r1mega.config import load_config
    from r1mega.config.parallel import RECOMPUTE
    from r1mega.model.builder import transformer_config
    from r1mega.plan import cli

    assert cli.build_parser()._option_string_actions["--recompute"].choices == [*RECOMPUTE, "auto"]
    for layout, mode in (("tp=1,pp=2,ep=4", "full"), ("tp=4,pp=1,ep=8,etp=1", "none")):
        inp = PlanInputs(model=get_preset("qwen3-30b-a3b"), gpus=8, gpu_mem_gib=80, seq_len=4096, minibatches=4,
                         recompute=mode, rollout_tp=2)
        ev = evaluate(inp, layout)
        assert ev.feasible, ev.reasons
        overrides = ev.layout.config_overrides()
        assert overrides[-1] == f"parallel.recompute={mode}"
        cfg = load_config(None, ["model.preset=qwen3-30b-a3b", "data.seq_length=4096", *overrides])
        cfg.validate(8)
        tc = transformer_config(cfg.model, cfg.parallel)
        want = ev.layout.megatron_args(8)
        assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == (
            want.get("recompute_granularity"), want.get("recompute_method"), want.get("recompute_num_layers"))
        assert (tc.pipeline_model_parallel_size, tc.num_layers_in_first_pipeline_stage, tc.expert_model_parallel_size) == (
            want["pipeline_model_parallel_size"], want.get("num_layers_in_first_pipeline_stage"),
            want["expert_model_parallel_size"])
