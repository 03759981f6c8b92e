"""Eval from users' files: data.eval_sources / eval_paths are benchmarks file:NAME; without them the held-out
split of the training files is benchmark heldout:NAME. Problems render and grade like the built-in ones."""
from __future__ import annotations

import json

import pytest

from r1mega.config.base import ConfigError
from r1mega.config.data import DataConfig
from r1mega.data.mixture import load_sources
from r1mega.eval.benchmark import source_problems


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_eval_files_and_heldout_fallback(tmp_path):
    mcq = _write(tmp_path / "quiz.jsonl", [{"q": f"Q{i}", "a": i % 2, "opts": ["yes", "no"], "task_type": "mcq"}
                                           for i in range(5)])
    data = DataConfig(eval_sources=[{"path": mcq, "prompt_key": "q", "answer_key": "a", "choices_key": "opts"}])
    probs = source_problems(data, n=3)
    assert [(p.benchmark, p.id, p.prompt, p.gold) for p in probs] == [
        ("file:quiz", "quiz-000001", "Q0\n\nA. yes\nB. no", "A"), ("file:quiz", "quiz-000002", "Q1\n\nA. yes\nB. no", "B"),
        ("file:quiz", "quiz-000003", "Q2\n\nA. yes\nB. no", "A")]
    assert probs[0].reward_sample("x").metadata == {"choices": ["yes", "no"], "lang": "en"}
    # no eval file: the training file's held-out rows (the same ones GRPO leaves out)
    train = _write(tmp_path / "train.jsonl", [{"prompt": f"What is {i}+1?", "answer": str(i + 1)} for i in range(200)])
    data = DataConfig(train_paths=[train], heldout_fraction=0.1, seed=3)
    held = source_problems(data)
    (src,) = load_sources(data)
    assert [p.id for p in held] == [r.id for r in src.heldout] and 10 <= len(held) <= 30
    assert {p.benchmark for p in held} == {"heldout:train"}
    assert source_problems(DataConfig(tasks=["arith"])) == []


def test_eval_problems_render_and_grade(tmp_path):
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.eval.runner import EvalRunner
    from r1mega.rewards import RewardComputer

    path = _write(tmp_path / "ev.jsonl", [{"prompt": "What is 6*7?", "answer": "42"},
                                          {"prompt": "Write inc", "tests": ["assert inc(1) == 2"], "task_type": "code"}])
    probs = source_problems(DataConfig(eval_paths=[path]))
    runner = EvalRunner(None, load_tokenizer())
    assert runner.prompt_text(probs[0]).endswith("User: What is 6*7?. Assistant:")
    assert runner.prompt_ids(probs[:1])[0] == list(runner.tokenizer.encode(runner.prompt_text(probs[0])))
    good = ["<think> 6*7=42 </think> <answer> 42 </answer>",
            "<think> ok </think> <answer>\n```python\ndef inc(x):\n    return x + 1\n```\n</answer>"]
    with RewardComputer() as rc:
        out = rc.score([p.reward_sample(g) for p, g in zip(probs, good)])
    assert out.components["accuracy"] == [1.0, 1.0]


def test_evaluate_checks_eval_files_before_the_engine(tmp_path, monkeypatch):
    from r1mega.config import load_config
    from r1mega.eval import entry

    monkeypatch.setattr(entry, "build_engine", lambda *a, **k: pytest.fail("the engine was built before the data check"))
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "Q", "answer": "1"}, {"prompt": "Q2", "answer": "2", "task_type": "essay"}])
    cfg = load_config(None, [f"pipeline.run_dir={tmp_path / 'run'}",
                             f"data.eval_paths=[{bad}]", "eval.benchmarks=[arith]", "eval.n_problems=1",
                             f"pipeline.stages=[{{name: ev, kind: eval, init_from: {tmp_path}}}]"])
    with pytest.raises(ConfigError, match=r"data.eval_paths\[0\]: .*bad.jsonl: row 2: task_type 'essay' is not one"):
        entry.evaluate(cfg, "ev")
