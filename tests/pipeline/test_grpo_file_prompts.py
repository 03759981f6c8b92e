"""GRPO on prompts from a user's file mixed with the built-in tasks: killed after one iteration and resumed,
it trains on exactly the prompts of an uninterrupted run (dynamic sampling consumes a varying number of
prompts per iteration, so the mixture's position is in the checkpoint). Bad data fails before any model."""
from __future__ import annotations

import json
import zlib
from types import SimpleNamespace

import pytest

from r1mega.config.base import ConfigError

pytestmark = pytest.mark.slow


class PromptOnlyReward:
    """Rewards that depend on the prompt only (not on sampled text): a third of the prompts get equal rewards
    for their whole group (dynamic sampling drops and refills them), the others 0/1 alternating."""

    def __init__(self, group: int):
        self.G = group

    def score(self, samples):
        totals = [0.0 if zlib.crc32(s.prompt.encode()) % 3 == 0 else float(k % 2) for k, s in enumerate(samples)]
        return SimpleNamespace(totals=totals, components={"accuracy": totals}, metrics={})

    def close(self):
        pass


def _cfg(tmp_path, run: str, rows: str, steps: int = 3):
    from r1mega.config import load_config

    return load_config(None, [
        "model.preset=tiny-dense", "model.num_layers=1", "data.seq_length=192", "data.tasks=[arith]",
        "data.difficulties=[1]", "rollout.engine=megatron", "rollout.max_new_tokens=4", "rollout.stop=[]",
        "grpo.group_size=2", "grpo.prompts_per_step=4", "grpo.kl_coef=0.0", "grpo.dynamic_sampling=true",
        "optimizer.micro_batch_size=8", "optimizer.global_batch_size=8", "logging.tensorboard=false",
        "logging.progress_bar=false", "checkpoint.save_interval=1", f"pipeline.run_dir={tmp_path / run}",
        f"data.sources=[{{path: {rows}, weight: 0.75, prompt_key: question}}, {{kind: tasks, weight: 0.25}}]",
        f"pipeline.stages=[{{name: rl, kind: grpo, steps: {steps}}}]"])


def _stage(cfg):
    from r1mega.pipeline.grpo import GRPOStage

    st = cfg.stage("rl")
    stage = GRPOStage(cfg.for_stage(st), st)
    stage.rewards.close()
    stage.rewards = PromptOnlyReward(cfg.grpo.group_size)
    return stage


def _prompts(path):
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out[row["iteration"]] = row["ids"]  # a resumed run rewrites later iterations: keep the last
    return out


def test_killed_and_resumed_run_sees_the_same_prompts(tmp_path):
    from r1mega.platform.distributed import destroy

    rows = tmp_path / "q.jsonl"
    rows.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(10)))
    try:
        full = _stage(_cfg(tmp_path, "full", rows))
        full.run()
        destroy()
        killed = _stage(_cfg(tmp_path, "killed", rows))
        real = killed.iteration
        killed.iteration = lambda it: real(it) if it == 0 else (_ for _ in ()).throw(KeyboardInterrupt("kill"))
        with pytest.raises(KeyboardInterrupt):
            killed.run()
        destroy()
        resumed = _stage(_cfg(tmp_path, "killed", rows))
        assert resumed.start == 1 and resumed.prompts.cursor > 4  # dynamic sampling drew refills
        resumed.run()
    finally:
        destroy()
    want = _prompts(tmp_path / "full" / "rl" / "prompts.jsonl")
    assert sorted(want) == [1, 2, 3] and all(len(v) == 4 for v in want.values())
    assert {i.split("-")[0] for v in want.values() for i in v} >= {"q", "arith"}  # both sources
    assert _prompts(tmp_path / "killed" / "rl" / "prompts.jsonl") == want


def test_bad_file_fails_before_the_model_loads(tmp_path, monkeypatch):
    import r1mega.train.engine as engine

    rows = tmp_path / "bad.jsonl"
    rows.write_text(json.dumps({"question": "Q", "answer": "1"}) + "\n" + json.dumps({"q": "Q2"}) + "\n")
    monkeypatch.setattr(engine, "TrainEngine", lambda *a, **k: pytest.fail("the model was built before the data check"))
    with pytest.raises(ConfigError, match=r"data.sources\[0\]: .*bad.jsonl: row 2: no 'question' .*the row has \['q'\]"):
        _stage(_cfg(tmp_path, "bad", rows))


def test_rejection_sampling_checks_its_sources_before_the_model(tmp_path, monkeypatch):
    from r1mega.config import load_config
    from r1mega.pipeline import rejection
    import r1mega.train.engine as engine

    monkeypatch.setattr(engine, "TrainEngine", lambda *a, **k: pytest.fail("the model was built before the data check"))
    (tmp_path / "code.jsonl").write_text(json.dumps({"prompt": "Write f", "task_type": "code"}) + "\n")
    cfg = load_config(None, ["model.preset=tiny-dense", f"pipeline.run_dir={tmp_path / 'run'}",
                             f"data.train_paths=[{tmp_path / 'code.jsonl'}]",
                             f"pipeline.stages=[{{name: rs, kind: rejection_sampling, init_from: {tmp_path}}}]"])
    with pytest.raises(ConfigError, match=r"data.train_paths\[0\]: .*code.jsonl: row 1: code row without tests"):
        rejection.run_stage(cfg, "rs")
