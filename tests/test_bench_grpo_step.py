"""benchmarks/grpo_step.py is a benchmark (run by hand, see benchmarks/README.md); this only checks its
argument parsing and that the r1mega config it writes is valid. No model, engine or TRL is started."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_grpo_step", ROOT / "benchmarks" / "grpo_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_defaults_and_flags():
    b = _bench()
    a = b.parse_args([])
    assert (a.prompts, a.group, a.max_new_tokens, a.kl, a.iters, a.warmup) == (8, 8, 96, 0.001, 8, 2)
    assert a.engines == ["vllm"] and not a.no_trl and a.worker is None
    a = b.parse_args(["--engines", "vllm,megatron", "--max-new-tokens", "64", "--no-trl", "--iters", "3"])
    assert a.engines == ["vllm", "megatron"] and a.max_new_tokens == 64 and a.no_trl and a.iters == 3


def test_processes_and_trl_threads(tmp_path):
    """--processes runs the r1mega rows as data-parallel ranks of --threads threads each; TRL keeps its own thread count."""
    from r1mega.config.loader import load_config
    from r1mega.data.tokenizer import default_tokenizer_dir

    b = _bench()
    a = b.parse_args(["--processes", "2", "--threads", "1", "--trl-threads", "2"])
    assert (a.processes, a.threads, a.trl_threads) == (2, 1, 2)
    assert b.parse_args([]).processes == 1 and b.parse_args([]).trl_threads is None
    assert b.parse_args(["--trl-processes", "2", "--trl-threads", "1"]).trl_processes == 2  # 2 x 16 divides 64
    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(b.r1mega_config(a, tmp_path, "vllm", str(tmp_path / "ckpt"), str(default_tokenizer_dir()))))
    cfg = load_config(str(path), world_size=2)  # one step over the 64 rollouts = 2 ranks x 2 microbatches of 16
    assert cfg.grpo.rollouts_per_step == 64 and cfg.cpu_threads == 1


@pytest.mark.parametrize("argv", [["--engines", "sglang"], ["--micro", "7"], ["--iters", "0"], ["--warmup", "-1"],
                                  ["--threads", "-1"], ["--processes", "2"], ["--processes", "3", "--threads", "1"],
                                  ["--processes", "0"], ["--trl-threads", "0"], ["--trl-processes", "3"]])
def test_bad_flags_are_refused(argv):
    with pytest.raises(SystemExit):
        _bench().parse_args(argv)


def load_config_from(b, a, tmp_path):
    from r1mega.config.loader import load_config
    from r1mega.data.tokenizer import default_tokenizer_dir

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(b.r1mega_config(a, tmp_path, "vllm", str(tmp_path / "ckpt"), str(default_tokenizer_dir()))))
    return load_config(str(path))


def test_r1mega_config_is_valid(tmp_path):
    from r1mega.config.loader import load_config
    from r1mega.data.tokenizer import default_tokenizer_dir

    b = _bench()
    a = b.parse_args(["--engines", "megatron"])
    (tmp_path / "ckpt").mkdir()  # validation checks the path exists; nothing is loaded
    for engine in ("vllm", "megatron"):
        d = b.r1mega_config(a, tmp_path, engine, str(tmp_path / "ckpt"), str(default_tokenizer_dir()))
        path = tmp_path / f"{engine}.yaml"
        path.write_text(yaml.safe_dump(d))
        cfg = load_config(str(path))
        stage = cfg.for_stage(cfg.select_stage("grpo"))
        assert stage.rollout.engine == engine and stage.grpo.rollouts_per_step == 64
        assert stage.grpo.updates_per_step == 1
        assert stage.rollout.max_new_tokens == 96 and stage.grpo.kl_coef == 0.001
        assert stage.cpu_threads is None  # --threads 0: torch's default
    one = load_config_from(b, b.parse_args(["--threads", "1"]), tmp_path)
    assert one.cpu_threads == 1


def test_the_model_comes_from_the_checkpoint(tmp_path):
    b = _bench()
    ck = tmp_path / "step_00000800"
    ck.mkdir()
    model = {"preset": "tiny", "kv_lora_rank": 64, "vocab_size": 640}
    (ck / "r1mega_meta.json").write_text(json.dumps({"step": 800, "model": model}))
    a = b.parse_args([])
    assert b.r1mega_config(a, tmp_path, "vllm", str(ck), "tok")["model"] == model
    assert b.r1mega_config(a, tmp_path, "vllm", str(tmp_path / "none"), "tok")["model"] == {"preset": "tiny"}
