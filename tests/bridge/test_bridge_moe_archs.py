"""Qwen3-MoE and DeepSeek-V2 / V2-Lite through the bridge, on tiny models that transformers itself builds and
initialises here (no download):

* config.json -> ModelConfig -> config.json keeps what transformers reads (experts, routing, dense prefix);
* HF -> Megatron import, then Megatron log-probs == transformers' (fp32, < 1e-4) with the architecture's own
  routing, and the export back to HF is bit-exact; the parameter count equals the built Megatron model;
* routing semantics have teeth: the same weights with the other softmax order (Qwen3-MoE's norm_topk_prob), without
  DeepSeek-V2's routed_scaling_factor, or with greedy instead of group-limited top-k are far off; where Megatron's
  group ranking differs from DeepSeek-V2's (top-(k/topk_group) sum vs best expert) the two pick different experts on
  arranged scores, and such configs are refused naming the key;
* options Megatron cannot express are one ConfigError naming the config.json key.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

from bridge_helpers import check_through_megatron, hf_logprobs, refused, sequences
from r1mega.bridge import from_hf_config, load_hf_weights, read_hf_config, to_hf_config
from r1mega.config.base import ConfigError
from r1mega.config.parallel import ParallelConfig
from r1mega.train.batching import lm_batch

COMMON = dict(vocab_size=500, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=512, rms_norm_eps=1e-6, dtype="float32")
QWEN3_MOE = dict(num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                 norm_topk_prob=True, mlp_only_layers=[0], rope_theta=1e6)
V2 = dict(kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=8,
          n_shared_experts=2, num_experts_per_tok=2, moe_intermediate_size=64, first_k_dense_replace=1, rope_theta=1e4)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
        "mscale": 0.707, "mscale_all_dim": 0.707}
CASES = {
    # case: (config class, model class, fields)
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", QWEN3_MOE),
    "qwen3_moe_unnormalised": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {**QWEN3_MOE, "norm_topk_prob": False}),
    # V2-Lite: no q LoRA, greedy top-k, scaling 1.0 in the real model (2.0 here so that it shows)
    "deepseek_v2_lite": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                         {**V2, "q_lora_rank": None, "topk_method": "greedy", "routed_scaling_factor": 2.0}),
    # V2 layout: q LoRA, group-limited top-k (4 groups, 2 chosen, top-3: 3 // 2 = 1, groups ranked by their best
    # expert both ways; unlike greedy top-3 when the best 3 experts span 3 groups), YaRN
    "deepseek_v2_grouped": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                            {**V2, "num_experts_per_tok": 3, "q_lora_rank": 48, "topk_method": "group_limited_greedy", "n_group": 4,
                             "topk_group": 2, "routed_scaling_factor": 3.0, "rope_scaling": YARN,
                             "max_position_embeddings": 256}),
}
SEQ_LEN = 96


def _hf_config(case: str, **over):
    import transformers

    cls, _, extra = CASES[case]
    kw = {**COMMON, **extra, **over}
    rope = kw.pop("rope_scaling", None)
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": kw.pop("rope_theta"), **(rope or {})}
    return getattr(transformers, cls)(**kw)


@torch.no_grad()
def _hf_model(case: str, path=None, **over):
    """transformers' own model of the case, with unit-scale activations and router logits, saved."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = getattr(transformers, CASES[case][1])(_hf_config(case, **over)).eval()
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        p.copy_(1.0 + 0.2 * noise if p.dim() == 1 else 0.3 * noise if "embed_tokens" in name
                else noise / math.sqrt(p.shape[-1]))
    if path is not None:
        model.save_pretrained(path)
    return model


def _megatron(hf_dir, **replace):
    from r1mega.bridge.local import local_params
    from r1mega.bridge.table import from_hf, mapping_table
    from r1mega.train.engine import TrainEngine

    m = from_hf_config(read_hf_config(hf_dir))
    if not replace:
        engine = TrainEngine(m, ParallelConfig(), None, mtp=False)
        load_hf_weights(engine, m, ParallelConfig(), hf_dir)
        return m, engine
    m = dataclasses.replace(m, **replace)  # the same weights, another setting
    engine = TrainEngine(m, ParallelConfig(), None, mtp=False)
    sd = load_file(str(hf_dir / "model.safetensors"))
    with torch.no_grad():
        for p in local_params(engine, mapping_table(m, include_mtp=False)):
            p.tensor.copy_(from_hf(p.entry, [sd[n] for n in p.entry.hf], m))
    return m, engine


def _diff(ours, theirs, batch) -> float:
    mask = batch["loss_mask"].bool()
    return (ours - theirs)[mask].abs().max().item()


@pytest.mark.parametrize("case", list(CASES))
def test_hf_config_round_trip(case, tmp_path):
    import transformers

    _hf_config(case).save_pretrained(tmp_path)
    src = read_hf_config(tmp_path)
    m = from_hf_config(src)
    v2 = case.startswith("deepseek")
    assert (m.arch, m.scoring_func, m.n_routed_experts, m.first_k_dense_replace) == (
        "deepseek_v3" if v2 else "qwen3_moe", "softmax", 8, 1)
    assert (m.expert_bias, m.n_shared_experts, m.norm_topk_prob) == (False, 2 if v2 else 0, case == "qwen3_moe")
    out = to_hf_config(m)
    assert out["architectures"] == [CASES[case][1]] and out["model_type"] == src["model_type"]
    assert to_hf_config(from_hf_config(out)) == out
    back = transformers.AutoConfig.for_model(**{k: v for k, v in out.items() if k != "architectures"})
    theirs = _hf_config(case)
    keys = (("n_routed_experts", "n_shared_experts", "topk_method", "routed_scaling_factor", "q_lora_rank",
             "kv_lora_rank", "first_k_dense_replace", "num_experts_per_tok") if v2 else
            ("num_experts", "norm_topk_prob", "mlp_only_layers", "decoder_sparse_step", "head_dim", "num_experts_per_tok",
             "moe_intermediate_size", "num_key_value_heads", "layer_types"))
    for key in keys:
        assert getattr(back, key, None) == getattr(theirs, key, None), key
    rope = [{k: v for k, v in c.rope_parameters.items() if k != "type"} for c in (back, theirs)]  # legacy alias
    assert rope[0] == rope[1]
    if case == "deepseek_v2_grouped":
        assert (back.n_group, back.topk_group) == (4, 2)


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_model_through_megatron(case, tmp_path):
    hf = _hf_model(case, tmp_path / "hf")
    m, engine = _megatron(tmp_path / "hf")
    check_through_megatron(case, hf, tmp_path / "hf", m, engine, SEQ_LEN)


def test_the_routing_checks_have_teeth(tmp_path):
    """The same weights with another routing setting move log-probs far past the parity bound: Qwen3-MoE's
    renormalised top-k vs the top-k of the full softmax (Megatron's pre-softmax switch), DeepSeek-V2 without its
    routed_scaling_factor, and DeepSeek-V2's group-limited top-k replaced by plain greedy top-k."""
    batch = lm_batch(sequences(500, n=2, length=SEQ_LEN))
    off = {}
    for case, change in (("qwen3_moe", dict(norm_topk_prob=False)), ("qwen3_moe_unnormalised", dict(norm_topk_prob=True)),
                         ("deepseek_v2_lite", dict(routed_scaling_factor=1.0)),
                         ("deepseek_v2_grouped", dict(n_group=1, topk_group=1))):
        hf = _hf_model(case, tmp_path / case)
        _, engine = _megatron(tmp_path / case, **change)
        off[f"{case} with {change}"] = _diff(engine.logprobs(batch), hf_logprobs(hf, batch), batch)
    print("max |log-prob diff| with the other routing:", {k: round(v, 3) for k, v in off.items()})
    assert all(v > 0.1 for v in off.values()), off


@torch.no_grad()
def test_group_ranking_differs_whererefused():
    """4 experts in 2 groups, top-2 from 1 group. Scores [0.30, 0.00 | 0.20, 0.20] (after the softmax): DeepSeek-V2
    (transformers) ranks group 0 first by its best expert (0.30 > 0.20) and picks experts {0, 1}; Megatron-Core
    ranks by the sum of the top-(2 // 1) = top-2 (0.30 < 0.40) and picks {2, 3}. So the bridge refuses
    num_experts_per_tok // topk_group != 1 for softmax routing, naming the key; with top-1 per group they agree."""
    import transformers
    from megatron.core.transformer.moe.moe_utils import topk_routing_with_score_function

    probs = torch.tensor([[0.30, 1e-6, 0.20, 0.20]])
    probs = probs / probs.sum()
    logits = probs.log()  # softmax(logits) == probs
    cfg = transformers.DeepseekV2Config(hidden_size=4, num_attention_heads=1, n_routed_experts=4, num_experts_per_tok=2,
                                        n_group=2, topk_group=1, topk_method="group_limited_greedy")
    router = transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2TopkRouter(cfg)
    router.weight.copy_(torch.eye(4))
    _, hf_w, hf_idx = router(logits)
    _, meg_map = topk_routing_with_score_function(logits, 2, use_pre_softmax=True, num_groups=2, group_topk=1,
                                                  score_function="softmax")
    assert sorted(hf_idx[0].tolist()) == [0, 1] and meg_map[0].nonzero().flatten().tolist() == [2, 3]
    d = {**to_hf_config(from_hf_config(_hf_config("deepseek_v2_grouped").to_dict())), "num_experts_per_tok": 4}
    with pytest.raises(ConfigError, match=r"config\.json:topk_group: 2 with num_experts_per_tok=4: .*top-2") as e:
        from_hf_config(d)
    assert "\n" not in str(e.value)
    # top-1 per group (the supported case): the same scores, the same experts both ways
    router.topk_group, router.top_k = 2, 2
    _, _, hf_idx = router(logits)
    _, meg_map = topk_routing_with_score_function(logits, 2, use_pre_softmax=True, num_groups=2, group_topk=2,
                                                  score_function="softmax")
    assert sorted(hf_idx[0].tolist()) == meg_map[0].nonzero().flatten().tolist()


@pytest.mark.parametrize("case,change,key,what", [
    ("qwen3_moe", {"decoder_sparse_step": 2, "mlp_only_layers": []}, "decoder_sparse_step", "not all layers after a dense prefix"),
    ("qwen3_moe", {"mlp_only_layers": [1]}, "mlp_only_layers", "not all layers after a dense prefix"),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window", "sliding-window"),
    ("qwen3_moe", {"attention_bias": True}, "attention_bias", "not supported for qwen3_moe"),
    ("deepseek_v2_lite", {"norm_topk_prob": True}, "norm_topk_prob", "transformers' DeepseekV2 ignores it"),
    ("deepseek_v2_lite", {"scoring_func": "sigmoid"}, "scoring_func", "not supported for deepseek_v2"),
    ("deepseek_v2_lite", {"topk_method": "noaux_tc"}, "topk_method", "not supported for deepseek_v2"),
    ("deepseek_v2_grouped", {"num_experts_per_tok": 4}, "topk_group", "they pick different experts"),
])
def test_unsupported_options_are_one_line_naming_the_key(case, change, key, what):
    refused({**to_hf_config(from_hf_config(_hf_config(case).to_dict())), **change}, key, what)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", ["qwen3_moe", "deepseek_v2_lite"])
def test_converter_round_trip_through_ep2_and_tp2_is_bit_exact(case, tmp_path):
    """transformers' model -> `convert hf-to-megatron --ep 2` (torchrun, 2 processes: 4 experts per rank) ->
    `convert megatron-to-hf --tp 2` (torchrun: Megatron reshards the experts to expert-TP shards, the heads and
    the q/k norms / MLA projections to TP shards, sequence parallel on): every tensor bit-exact, the same model
    config, transformers' logits identical."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import transformers

    root = Path(__file__).resolve().parents[2]
    tool, torchrun = root / "tools" / "convert_checkpoint.py", Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    src_model = _hf_model(case, tmp_path / "hf")
    for args in (["hf-to-megatron", "--hf", tmp_path / "hf", "--out", tmp_path / "ckpt", "--ep", "2"],
                 ["megatron-to-hf", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "back", "--tp", "2"]):
        cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(tool), *map(str, args)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        print(proc.stdout.strip().splitlines()[-1])
    src = load_file(str(tmp_path / "hf" / "model.safetensors"))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(back) == sorted(src)
    assert [k for k in src if not (torch.equal(src[k], back[k]) and src[k].dtype == back[k].dtype)] == []
    cfg = read_hf_config(tmp_path / "back")
    assert cfg["architectures"] == [CASES[case][1]]
    assert to_hf_config(from_hf_config(cfg)) == to_hf_config(from_hf_config(read_hf_config(tmp_path / "hf")))
    transformers.logging.set_verbosity_error()
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(src_model(input_ids=ids).logits, again(input_ids=ids).logits)


# The architecture fields of published config.json files (abridged: token ids, transformers_version etc. left out).
_QWEN3_MOE_PUBLISHED = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "attention_bias": False,
                        "attention_dropout": 0.0, "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu",
                        "initializer_range": 0.02, "max_position_embeddings": 40960, "mlp_only_layers": [],
                        "norm_topk_prob": True, "num_experts": 128, "num_experts_per_tok": 8, "num_key_value_heads": 4,
                        "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": None,
                        "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
                        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_sliding_window": False,
                        "vocab_size": 151936}
PUBLISHED = {
    "qwen3-30b-a3b": {**_QWEN3_MOE_PUBLISHED, "hidden_size": 2048, "intermediate_size": 6144, "max_window_layers": 48,
                      "moe_intermediate_size": 768, "num_attention_heads": 32, "num_hidden_layers": 48},
    "qwen3-235b-a22b": {**_QWEN3_MOE_PUBLISHED, "hidden_size": 4096, "intermediate_size": 12288, "max_window_layers": 94,
                        "moe_intermediate_size": 1536, "num_attention_heads": 64, "num_hidden_layers": 94},
    "deepseek-v2-lite": {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "attention_bias": False,
                         "aux_loss_alpha": 0.001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
                         "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512,
                         "max_position_embeddings": 163840, "moe_intermediate_size": 1408, "moe_layer_freq": 1,
                         "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": False,
                         "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
                         "num_key_value_heads": 16, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                         "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40,
                                                                 "mscale": 0.707, "mscale_all_dim": 0.707,
                                                                 "original_max_position_embeddings": 4096, "type": "yarn"},
                         "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": True,
                         "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
                         "v_head_dim": 128, "vocab_size": 102400},
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_import_as_the_presets(name):
    """The published config.json imports with the preset's architecture and routing fields, exports as the same
    class, and counts within 1% of the published total (activated: the published figure has two digits)."""
    from r1mega.model.counting import count_parameters
    from r1mega.model.presets import PUBLISHED as TOTALS
    from r1mega.model.presets import get_preset

    cfg = PUBLISHED[name]
    m, preset = from_hf_config(cfg), get_preset(name)
    skip = {"preset", "init_std", "expert_bias_update_rate", "mtp_loss_scaling_factor"}
    differ = {f.name: (getattr(m, f.name), getattr(preset, f.name)) for f in dataclasses.fields(m)
              if f.name not in skip and getattr(m, f.name) != getattr(preset, f.name)}
    assert differ == {}, differ
    assert to_hf_config(m)["architectures"] == cfg["architectures"]
    c, want = count_parameters(m), TOTALS[name]
    assert abs(c.total / want["total"] - 1) < 0.01, c.total
    if name.startswith("qwen3"):
        assert abs(c.activated / want["activated"] - 1) < 0.02, c.activated


def test_model_config_refuses_routing_no_hf_architecture_has():
    """Set by hand (a preset plus overrides), routing that no exported class runs is one line naming the field."""
    from r1mega.model.presets import get_preset

    with pytest.raises(ConfigError, match=r"^model\.norm_topk_prob: true with scoring_func='softmax' on MLA"):
        get_preset("deepseek-v2-lite", norm_topk_prob=True).validate()
    with pytest.raises(ConfigError, match=r"^model\.topk_group: group-limited softmax routing .* top-2"):
        get_preset("deepseek-v2-lite", n_group=8, topk_group=3).validate()  # DeepSeek-V2's 6 from 3 of 8 groups
    q = dict(arch="qwen3_moe", qk_norm=True, n_routed_experts=8, n_shared_experts=0, scoring_func="softmax",
             routed_scaling_factor=1.0, n_group=1, expert_bias=False, first_k_dense_replace=1)
    get_preset("tiny-dense", **q).validate()
    for field, value in (("n_shared_experts", 1), ("scoring_func", "sigmoid"), ("routed_scaling_factor", 2.5),
                         ("qk_norm", False), ("n_group", 2)):
        with pytest.raises(ConfigError, match=rf"^model\.{field}: .*qwen3_moe"):
            get_preset("tiny-dense", **{**q, field: value}).validate()
