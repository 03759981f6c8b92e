"""Benchmarks are held out: built-in task problems come from the test split (by math key) and never occur in
the train split; reasoning-gym questions are split by the same hash; HumanEval and JSONL loading; EvalConfig."""
from __future__ import annotations

import json

import pytest

from r1mega.config.base import ConfigError
from r1mega.data.tasks import generate_problems, iter_problems, split_of
from r1mega.eval.benchmark import check_benchmark_name, jsonl_problems, load_benchmark, load_benchmarks
from r1mega.eval.config import EvalConfig, eval_config_from, load_eval_config


@pytest.mark.parametrize("task", ["arith", "word"])
def test_task_problems_are_held_out(task):
    probs = load_benchmark(task, 20, [1, 2, 3], seed=0)
    assert len(probs) == 60
    assert [p.difficulty for p in probs] == [1] * 20 + [2] * 20 + [3] * 20
    for d in (1, 2, 3):
        assert len({p.metadata["key"] for p in probs if p.difficulty == d}) == 20
    keys = {p.metadata["key"] for p in probs}
    assert all(split_of(p.metadata["key"]) == "test" and p.metadata["split"] == "test" for p in probs)
    # a large train set of the same task and levels (another seed too) shares no problem
    for seed in (0, 7):
        train = {p.key for d in (1, 2, 3) for p in generate_problems(task, 300, seed=seed, split="train", difficulty=d)}
        assert not keys & train
    # nor does the training prompt stream GRPO draws from
    stream = iter_problems({task: 1.0}, {1: 1.0, 2: 1.0, 3: 1.0}, seed=3, split="train")
    assert not keys & {next(stream).key for _ in range(2000)}
    # the gold is the canonical integer answer and the prompt is the plain question
    assert all(p.task_type == "math" and p.gold.lstrip("-").isdigit() for p in probs)


def test_task_problems_deterministic_and_capped():
    a = load_benchmark("arith", 5, [2], seed=1)
    b = load_benchmark("arith", 5, [2], seed=1)
    assert [p.prompt for p in a] == [p.prompt for p in b]
    # level 1 has fewer unique held-out problems than asked for: all of them, no error
    few = load_benchmark("arith", 500, [1], seed=0)
    assert 20 < len(few) < 500 and len({p.metadata["key"] for p in few}) == len(few)


def test_gym_problems_are_split_by_question_hash():
    pytest.importorskip("reasoning_gym")
    probs = load_benchmark("gym:basic_arithmetic", 6, seed=0)
    assert len(probs) == 6 and len({p.prompt for p in probs}) == 6
    assert all(split_of(p.prompt) == "test" for p in probs)
    assert all(p.task_type == "gym" and p.metadata["gym_task"] == "basic_arithmetic" and "entry" in p.metadata
               for p in probs)
    from r1mega.eval.benchmark import gym_split_problems

    train = gym_split_problems("basic_arithmetic", 30, seed=0, split="train")
    assert all(split_of(g.prompt) == "train" for g in train)
    assert not {g.prompt for g in train} & {p.prompt for p in probs}


def test_humaneval_subset():
    probs = load_benchmark("humaneval", 3)
    assert [p.id for p in probs] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(p.task_type == "code" and "entry_point" in p.gold and "```python" in p.prompt for p in probs)


def test_jsonl_problems(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [{"prompt": "What is 1/2 + 0?", "answer": "\\frac{1}{2}", "difficulty": 3},
            {"prompt": "Pick one", "answer": "B", "task_type": "mcq", "id": "q2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    probs = load_benchmark(f"jsonl:{path}", 0)
    assert [p.id for p in probs] == [f"jsonl:{path}-00000", "q2"]
    assert probs[0].gold == "\\frac{1}{2}" and probs[0].difficulty == 3 and probs[1].task_type == "mcq"
    assert len(jsonl_problems(str(path), 1)) == 1
    path.write_text(json.dumps({"prompt": "x", "answer": "1", "task_type": "essay"}) + "\n")
    with pytest.raises(ValueError, match="task_type"):
        jsonl_problems(str(path))


def test_benchmark_names():
    assert check_benchmark_name("arith") is None and check_benchmark_name("gym:leg_counting") is None
    assert check_benchmark_name("aime") is not None and check_benchmark_name("gym:") is not None
    with pytest.raises(ValueError):
        load_benchmark("aime")


def test_load_benchmarks_order():
    cfg = EvalConfig(benchmarks=["word", "arith"], n_problems=2, difficulties=[2])
    assert [p.benchmark for p in load_benchmarks(cfg)] == ["word", "word", "arith", "arith"]


def test_eval_config_defaults_and_validation():
    c = EvalConfig()
    c.validate()
    assert (c.temperature, c.top_p) == (0.6, 0.95)
    assert c.ks() == [1, 16]
    assert EvalConfig(k=8, pass_k=[2, 4]).ks() == [1, 2, 4, 8]
    for bad, where in [({"k": 0}, "eval.k"), ({"pass_k": [32]}, "eval.pass_k[0]"), ({"top_p": 0}, "eval.top_p"),
                       ({"benchmarks": ["aime"]}, "eval.benchmarks[0]"), ({"difficulties": [9]}, "eval.difficulties"),
                       ({"template": "nope"}, "eval.template"), ({"output": "a/b.json"}, "eval.output")]:
        with pytest.raises(ConfigError) as e:
            eval_config_from(bad)
        assert e.value.where == where
    with pytest.raises(ConfigError, match="unknown key"):
        eval_config_from({"kk": 3})


def test_load_eval_config_sources(tmp_path):
    class WithSection:
        eval = {"k": 4, "benchmarks": ["arith"]}

    assert load_eval_config(WithSection(), env={}).k == 4
    path = tmp_path / "eval.yaml"
    path.write_text("k: 2\nn_problems: 3\nbenchmarks: [word]\n")
    c = load_eval_config(object(), env={"R1MEGA_EVAL_CONFIG": str(path)})
    assert (c.k, c.n_problems, c.benchmarks) == (2, 3, ["word"])
    assert load_eval_config(object(), env={}) == EvalConfig()


def test_task_problems_train_split_is_disjoint_from_the_held_out_one():
    from r1mega.eval.benchmark import task_problems

    test = task_problems("arith", 40, [1], seed=3)
    train = task_problems("arith", 40, [1], seed=3, split="train")
    assert {p.metadata["split"] for p in test} == {"test"} and {p.metadata["split"] for p in train} == {"train"}
    assert not {p.metadata["key"] for p in test} & {p.metadata["key"] for p in train}


def test_chinese_benchmarks_ask_the_same_held_out_problems_in_chinese():
    en = load_benchmark("word", 12, [1, 2], seed=4)
    zh = load_benchmark("word_zh", 12, [1, 2], seed=4)
    assert [p.metadata["key"] for p in zh] == [p.metadata["key"] for p in en]
    assert [p.gold for p in zh] == [p.gold for p in en]
    assert {p.benchmark for p in zh} == {"word_zh"} and {p.metadata["lang"] for p in zh} == {"zh"}
    assert {p.metadata["lang"] for p in en} == {"en"}
    assert [p.id for p in zh] == [p.id + "-zh" for p in en]
    assert all(p.prompt.endswith("？") for p in zh) and all(p.prompt.endswith("?") for p in en)
    # the grading sample carries the question's language (the language reward's target 'prompt')
    assert zh[0].reward_sample("x").metadata == {"lang": "zh"}
    assert check_benchmark_name("arith_zh") is None and check_benchmark_name("arith_fr") is not None
    arith_zh = load_benchmark("arith_zh", 5, [2], seed=0)
    assert all(p.prompt.endswith(("是多少？", "等于几？", "等于多少？", "吗？")) for p in arith_zh)
