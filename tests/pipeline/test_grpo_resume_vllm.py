"""A GRPO stage with the vLLM engine, stopped after its first iteration and resumed from the checkpoint, samples,
rewards and trains exactly like an uninterrupted run: every completion's seed is a function of (rollout seed,
iteration, prompt, sample), not of the fresh engine's call counter, and the reference (KL on, no init
checkpoint) is the stage's initial weights again. (The stop is deterministic, an exception after the step-1
checkpoint: the same resume path as a kill -9, see tests/train/test_resume.py for the real kill.)"""
from __future__ import annotations

import json
import zlib
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow
STEPS = 3


class ResponseParity:
    """Reward = parity of the response text's hash: depends on what was sampled, so different samples show."""

    def score(self, samples):
        totals = [float(zlib.crc32(s.response.encode()) % 2) for s in samples]
        return SimpleNamespace(totals=totals, components={"accuracy": totals}, metrics={})

    def close(self):
        pass


def _cfg(tmp_path, run: str):
    from r1mega.config import load_config

    return load_config(None, [
        "model.preset=tiny-dense", "model.num_layers=1", "data.seq_length=128", "data.tasks=[arith]",
        "data.difficulties=[1]", "rollout.engine=vllm", "rollout.max_new_tokens=8", "rollout.stop=[]",
        "grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.kl_coef=0.05", "optimizer.lr=1e-2",
        "optimizer.min_lr=1e-3", "optimizer.warmup_steps=1", "optimizer.micro_batch_size=8",
        "logging.tensorboard=false", "logging.progress_bar=false", "checkpoint.save_interval=1",
        f"pipeline.run_dir={tmp_path / run}", f"pipeline.stages=[{{name: rl, kind: grpo, steps: {STEPS}}}]"])


def _stage(cfg, record: dict, stop_at=None):
    from r1mega.pipeline.grpo import GRPOStage

    st = cfg.stage("rl")
    stage = GRPOStage(cfg.for_stage(st), st)
    stage.rewards.close()
    stage.rewards = ResponseParity()
    real_gen, real_it = stage._generate_scored, stage.iteration

    def generate(it):
        out = real_gen(it)
        items, ro, rewards = out[:3]
        record[it + 1] = {"ids": [i.meta.get("id") for i in items], "rewards": rewards,
                          "samples": [(c.prompt_index, c.sample_index, c.token_ids) for c in ro.completions]}
        return out

    def iteration(it):
        if it == stop_at:
            raise KeyboardInterrupt("stopped")
        return real_it(it)

    stage._generate_scored, stage.iteration = generate, iteration
    return stage


def _metrics(run_dir) -> dict:
    rows = {}
    for line in (run_dir / "rl" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run rewrites later steps: keep the last
    return rows


def test_stopped_and_resumed_vllm_run_reproduces_samples_rewards_and_losses(tmp_path):
    from r1mega.platform.distributed import destroy

    full, first, second = {}, {}, {}
    try:
        _stage(_cfg(tmp_path, "full"), full).run()
        destroy()
        with pytest.raises(KeyboardInterrupt):
            _stage(_cfg(tmp_path, "stopped"), first, stop_at=1).run()
        destroy()
        resumed = _stage(_cfg(tmp_path, "stopped"), second)
        assert resumed.start == 1
        resumed.run()
    finally:
        destroy()
    assert sorted(full) == [1, 2, 3] and sorted(first) == [1] and sorted(second) == [2, 3]
    assert first[1] == full[1]
    for step in (2, 3):
        assert second[step] == full[step], step  # the same prompts, token ids and rewards
    assert len({tuple(s[2]) for s in full[2]["samples"]}) > 1 and 0 < sum(full[2]["rewards"]) < 8
    want, got = _metrics(tmp_path / "full"), _metrics(tmp_path / "stopped")
    for step in (2, 3):
        for k in ("reward/total", "train/loss/pg", "train/loss/kl", "train/kl/k3", "train/grad_norm", "train/lr"):
            assert got[step][k] == want[step][k], (step, k, got[step][k], want[step][k])
    assert want[3]["train/kl/k3"] > 0  # the reference was used, and is the same one after the resume


def _cli_cfg(tmp_path, run: str):
    """The same stage as a user runs it (`r1mega run`), real rewards: a random model earns none, so the
    KL term (kl/k3, loss/kl, grad_norm) is what shows whether the samples and the reference are the same."""
    import yaml

    overrides = {"model": {"preset": "tiny-dense", "num_layers": 1},
                 "data": {"seq_length": 128, "tasks": ["arith"], "difficulties": [1]},
                 "rollout": {"engine": "vllm", "max_new_tokens": 8, "stop": []},
                 "grpo": {"group_size": 4, "prompts_per_step": 2, "kl_coef": 0.05},
                 "optimizer": {"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1, "micro_batch_size": 8},
                 "logging": {"tensorboard": False, "progress_bar": False}, "checkpoint": {"save_interval": 1},
                 "pipeline": {"run_dir": str(tmp_path / run), "stages": [{"name": "rl", "kind": "grpo", "steps": STEPS}]}}
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def test_kill9_during_a_vllm_grpo_stage_then_rerun_reproduces_the_run(tmp_path):
    """`r1mega run` of a GRPO stage (vLLM engine, KL on) is SIGKILLed once its step-1 checkpoint exists;
    rerunning the same command resumes and logs exactly the uninterrupted run's step 2 and 3."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "r1mega.cli", "run"]
    full = subprocess.run(cmd + [str(_cli_cfg(tmp_path, "full"))], env=env, capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    cfg = _cli_cfg(tmp_path, "killed")
    latest = tmp_path / "killed" / "rl" / "checkpoints" / "latest"
    proc = subprocess.Popen(cmd + [str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not (latest.exists() and latest.read_text().strip() == "step_00000001"):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its step-1 checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage, its vLLM engine and reward workers at once
    proc.wait()
    rows = _metrics(tmp_path / "killed")
    assert max(rows) < STEPS  # killed before the end
    again = subprocess.run(cmd + [str(cfg)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    want, got = _metrics(tmp_path / "full"), _metrics(tmp_path / "killed")
    assert sorted(got) == [1, 2, 3]
    for step in (2, 3):
        for k in ("reward/total", "train/loss/pg", "train/loss/kl", "train/kl/k3", "train/grad_norm", "train/lr",
                  "response/length_mean"):
            assert got[step][k] == want[step][k], (step, k, got[step][k], want[step][k])
    assert want[3]["train/kl/k3"] > 0
