"""The eval runner end to end with a scripted fake engine, the printed table, eval.json, and `r1mega eval`.

The engine here is a fake that returns scripted completions through the rollout engine's interface
(``generate(prompt_token_ids, sampling, n) -> Rollouts``, using the real ``Completion``/``Rollouts`` classes):
the real vLLM and Megatron engines are tested with the rollout code; this file tests what eval does with
their output. Grading is real (rewards with math-verify in the worker pool, HumanEval tests in the sandbox).
"""
from __future__ import annotations

import json

import pytest

from r1mega.eval.benchmark import EvalProblem
from r1mega.eval.report import format_table, read_json, results_table, write_json, write_samples
from r1mega.eval.runner import EvalRunner, aggregate


class CharTokenizer:
    """One token per character (so the fake engine can read the prompt back)."""

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


class FakeEngine:
    """Scripted completions: ``script[question]`` is the list of k responses to that question."""

    name = "fake"

    def __init__(self, script: dict, lengths: dict = None):
        self.script = script
        self.lengths = lengths or {}
        self.calls = []

    def generate(self, prompts, sampling=None, n=None, gather=True):
        from r1mega.rollout.engine import Completion, Rollouts

        self.calls.append((len(prompts), sampling, n))
        comps = []
        for i, ids in enumerate(prompts):
            text = "".join(map(chr, ids))
            question = next(q for q in self.script if q in text)
            responses = self.script[question]
            assert len(responses) == n
            for j, r in enumerate(responses):
                finish = "length" if (question, j) in self.lengths else "stop"
                comps.append(Completion(i, j, [ord(c) for c in r], [0.0] * len(r), r, finish))
        # shuffled, as a sharded engine might return them: the runner must regroup by prompt and sample index
        comps.sort(key=lambda c: (c.sample_index, -c.prompt_index))
        return Rollouts([list(p) for p in prompts], n, comps, 0.0, self.name, sampling)


def ok(a):
    return f"<think>reasoning</think><answer>{a}</answer>"


SCRIPT = {
    # gold 1/2: two correct in different forms, one wrong, one without an answer -> c=2, vote = the 1/2 class
    "Q-half": [ok("0.5"), ok("\\frac{1}{2}"), ok("3"), "I think it is 3"],
    # gold 7: one correct, majority wrong (8) -> cons wrong
    "Q-seven": ["<answer>8</answer>", ok("8"), ok("7"), ok("9")],
    # gold 5: tie 2-2, the correct answer came first -> cons right
    "Q-tie-right": [ok("5"), ok("6"), ok("6"), ok("5")],
    # gold 5: tie 2-2, the wrong answer came first -> cons wrong
    "Q-tie-wrong": [ok("6"), ok("5"), ok("5"), ok("6")],
    # gold 11: all wrong
    "Q-wrong": [ok("1"), ok("2"), ok("3"), ok("1")],
}
PROBLEMS = [
    EvalProblem("half", "bench-a", "Q-half", "1/2", "math", 1),
    EvalProblem("seven", "bench-a", "Q-seven", "7", "math", 2),
    EvalProblem("tie-right", "bench-a", "Q-tie-right", "5", "math", 2),
    EvalProblem("tie-wrong", "bench-b", "Q-tie-wrong", "5", "math", None),
    EvalProblem("wrong", "bench-b", "Q-wrong", "11", "math", None),
]


@pytest.fixture(scope="module")
def results(eval_rewards):
    engine = FakeEngine(SCRIPT, lengths={("Q-seven", 0)})
    runner = EvalRunner(engine, CharTokenizer(), k=4, pass_ks=[2], batch_prompts=2, reward_computer=eval_rewards,
                        max_new_tokens=64)
    res = runner.run(PROBLEMS)
    res.engine_calls = engine.calls
    return res


def test_sampling_defaults_and_batching(results):
    calls = results.engine_calls
    assert [c[0] for c in calls] == [2, 2, 1]             # batch_prompts=2
    s = calls[0][1]
    assert (s.temperature, s.top_p, s.n, s.max_new_tokens) == (0.6, 0.95, 4, 64) and calls[0][2] == 4
    assert "</answer>" in s.stop


def test_per_problem_results(results):
    by = {r.problem.id: r for r in results.problems}
    assert [s.answer for s in by["half"].samples] == ["0.5", "\\frac{1}{2}", "3", None]
    assert [s.correct for s in by["half"].samples] == [True, True, False, False]
    assert (by["half"].n, by["half"].c) == (4, 2)
    assert by["half"].vote.answer == "0.5" and by["half"].vote.size == 2 and by["half"].vote.abstained == 1
    assert by["half"].cons is True
    assert (by["seven"].c, by["seven"].vote.answer, by["seven"].cons) == (1, "8", False)
    assert (by["tie-right"].vote.answer, by["tie-right"].cons) == ("5", True)
    assert (by["tie-wrong"].vote.answer, by["tie-wrong"].cons) == ("6", False)
    assert (by["wrong"].c, by["wrong"].pass_at(4), by["wrong"].cons) == (0, 0.0, False)
    assert by["half"].pass_at(2) == pytest.approx(5 / 6) and by["seven"].pass_at(2) == pytest.approx(0.5)
    assert by["half"].pass_at(8) is None                  # fewer samples than k
    # format (strict): "I think it is 3" and "<answer>8</answer>" are malformed
    assert [s.format for s in by["half"].samples] == [1.0, 1.0, 1.0, 0.0]
    assert by["seven"].samples[0].format == 0.0 and by["seven"].samples[0].finish_reason == "length"
    assert by["half"].samples[1].tokens == len(ok("\\frac{1}{2}"))


def test_aggregates_hand_computed(results):
    s = results.summary
    assert list(s) == ["bench-a", "bench-a/d1", "bench-a/d2", "bench-b", "all"]
    a = s["bench-a"]
    assert a["n"] == 3 and a["samples"] == 12
    assert a["pass@1"] == pytest.approx((2 / 4 + 1 / 4 + 2 / 4) / 3)
    assert a["pass@2"] == pytest.approx((5 / 6 + 1 / 2 + 5 / 6) / 3)
    assert a["pass@4"] == pytest.approx(1.0)
    assert a["cons@4"] == pytest.approx(2 / 3)
    assert a["format_rate"] == pytest.approx(10 / 12)
    assert a["truncated_rate"] == pytest.approx(1 / 12)
    assert a["no_answer_rate"] == pytest.approx(1 / 12)
    texts = SCRIPT["Q-half"] + SCRIPT["Q-seven"] + SCRIPT["Q-tie-right"]
    assert a["mean_tokens"] == pytest.approx(sum(map(len, texts)) / 12)
    assert s["bench-a/d1"]["pass@1"] == 0.5 and s["bench-a/d1"]["cons@4"] == 1.0 and s["bench-a/d1"]["n"] == 1
    assert s["bench-a/d2"]["n"] == 2 and s["bench-a/d2"]["cons@4"] == 0.5
    b = s["bench-b"]
    assert (b["n"], b["pass@1"], b["cons@4"]) == (2, pytest.approx(0.25), 0.0)
    assert b["pass@2"] == pytest.approx((5 / 6 + 0) / 2)
    assert s["all"]["n"] == 5 and s["all"]["cons@4"] == pytest.approx(2 / 5)
    assert s["all"]["pass@1"] == pytest.approx((0.5 + 0.25 + 0.5 + 0.5 + 0) / 5)
    assert results.settings["temperature"] == 0.6 and results.settings["ks"] == [1, 2, 4]


def test_printed_table(results):
    text = results_table(results)
    lines = text.splitlines()
    assert lines[0].startswith("eval: k=4 samples/question, temperature 0.6, top-p 0.95")
    assert lines[1].split() == ["benchmark", "n", "pass@1", "pass@2", "pass@4", "cons@4", "mean", "len", "format",
                                "last", "number"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[3:]}
    assert rows["bench-a"][:5] == ["3", "41.7", "72.2", "100.0", "66.7"]
    assert rows["bench-a"][-2] == "83.3"
    assert rows["bench-b"][:5] == ["2", "25.0", "41.7", "50.0", "0.0"]
    assert rows["all"][0] == "5" and rows["all"][4] == "40.0"
    assert lines[4].startswith("  bench-a/d1")                  # difficulty rows are indented under their benchmark
    assert len({len(ln) for ln in lines[1:]}) == 1                # aligned columns


def test_table_dashes_for_missing_metrics():
    summary = {"humaneval": {"n": 2, "pass@1": 0.5, "pass@4": 1.0, "cons@4": None, "mean_tokens": 12.0,
                             "format_rate": 1.0}}
    row = format_table(summary, 4, [1, 4]).splitlines()[2].split()
    assert row == ["humaneval", "2", "50.0", "100.0", "-", "12.0", "100.0"]


def test_json_and_samples_files(results, tmp_path):
    path = write_json(results, tmp_path / "eval.json", {"stage": "x"})
    d = read_json(path)
    assert d["version"] == 1 and d["stage"] == "x"
    assert d["summary"]["bench-a"]["cons@4"] == pytest.approx(2 / 3)
    assert [p["id"] for p in d["problems"]] == ["half", "seven", "tie-right", "tie-wrong", "wrong"]
    p0 = d["problems"][0]
    assert (p0["n"], p0["c"], p0["cons"], p0["vote"]["answer"], p0["vote"]["sizes"]) == (4, 2, True, "0.5", [2, 1])
    assert "samples" not in p0
    sp = write_samples(results, tmp_path / "eval_samples.jsonl")
    rows = [json.loads(x) for x in sp.read_text().splitlines()]
    assert len(rows) == 20 and rows[3] == {**rows[3], "id": "half", "sample": 3, "answer": None, "correct": False}


def test_code_problems_have_no_vote(eval_rewards):
    from r1mega.eval.benchmark import humaneval_problems
    from r1mega.rewards.humaneval import canonical_response, load_humaneval

    prob = humaneval_problems(1)[0]
    good = canonical_response(load_humaneval(1)[0])
    bad = ("<think>no</think><answer>\n```python\ndef has_close_elements(numbers, threshold):\n"
           "    return None\n```\n</answer>")
    engine = FakeEngine({prob.prompt[:60]: [good, bad]})
    res = EvalRunner(engine, CharTokenizer(), k=2, reward_computer=eval_rewards).run([prob])
    r = res.problems[0]
    assert [s.correct for s in r.samples] == [True, False] and r.vote is None and r.cons is None
    assert res.summary["humaneval"]["cons@2"] is None and res.summary["humaneval"]["pass@2"] == 1.0


def test_gym_problems_vote_on_exact_answers(eval_rewards):
    pytest.importorskip("reasoning_gym")
    from r1mega.eval.benchmark import gym_problems

    prob = gym_problems("basic_arithmetic", 1)[0]
    gold = prob.gold
    engine = FakeEngine({prob.prompt: [ok("nope"), ok(gold), ok(gold), ok("nope")]})
    res = EvalRunner(engine, CharTokenizer(), k=4, reward_computer=eval_rewards).run([prob])
    r = res.problems[0]
    assert r.c == 2 and r.vote.answer == "nope" and r.cons is False     # tie: first seen wins


def test_aggregate_of_nothing():
    row = aggregate([], [1, 4], 4)
    assert row["n"] == 0 and row["pass@1"] is None and row["cons@4"] is None


def test_questions_short_of_k_samples_are_counted_and_reported():
    from r1mega.eval.runner import ProblemResult, SampleResult, summarize

    def res(i, correct):
        samples = [SampleResult("t", "1", float(c), bool(c), 1.0, 3, "stop", "ok") for c in correct]
        return ProblemResult(EvalProblem(id=f"q{i}", benchmark="b", prompt="p", gold="1", task_type="math"), samples)

    results = [res(0, [1, 0, 0, 0]), res(1, [1, 1]), res(2, [0, 0, 0, 1]), res(3, [])]
    row = aggregate(results, [1, 2, 4], 4)
    # pass@4 over q0 and q2 only (1 each), pass@2 over q0, q1, q2; pass@1 over the three with samples
    assert row["pass@4"] == 1.0 and row["pass@2"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert row["pass@1"] == pytest.approx((0.25 + 1.0 + 0.25) / 3)
    assert row["too_few_samples"] == {"pass@1": 1, "pass@2": 1, "pass@4": 2}
    assert "2 of 4 questions have fewer than 4 samples" in row["warning"] and "pass@4" in row["warning"]
    table = format_table(summarize(results, [1, 2, 4], 4), 4, [1, 2, 4])
    assert "WARNING b: " in table and "fewer than 4 samples" in table
    full = aggregate([results[0], results[2]], [1, 2, 4], 4)
    assert full["too_few_samples"] == {} and "warning" not in full


def test_runner_argument_errors():
    with pytest.raises(ValueError):
        EvalRunner(None, CharTokenizer(), template="nope")
    with pytest.raises(ValueError):
        EvalRunner(None, CharTokenizer(), k=0)


# ------------------------------------------------------------------------------------------- r1mega eval
def _config(tmp_path, stages, extra=()):
    from r1mega.config import load_config

    return load_config(None, [f"pipeline.run_dir={tmp_path / 'run'}", f"pipeline.stages={json.dumps(stages)}",
                              "logging.tensorboard=false", *extra])


def test_evaluate_stage_writes_eval_json(tmp_path, monkeypatch, capsys, eval_rewards):
    from r1mega.eval import entry
    from r1mega.eval.benchmark import load_benchmarks
    from r1mega.eval.config import load_eval_config

    cfg = _config(tmp_path, [{"name": "pre", "kind": "pretrain", "steps": 1},
                             {"name": "ev", "kind": "eval", "init_from": "pre"}],
                  ["eval.benchmarks=[arith]", "eval.k=2", "eval.n_problems=3", "eval.difficulties=[2]",
                   "eval.max_new_tokens=32"])
    problems = load_benchmarks(load_eval_config(cfg))
    # the first sample of each question is right, the second wrong
    script = {p.prompt: [ok(p.gold), ok(str(int(p.gold) + 1))] for p in problems}
    summary = entry.evaluate(cfg, None, engine=FakeEngine(script), tokenizer=CharTokenizer(),
                             reward_computer=eval_rewards)
    assert summary["arith"]["pass@1"] == 0.5 and summary["arith"]["pass@2"] == 1.0
    assert summary["arith"]["cons@2"] == 1.0                     # 1-1 ties go to the first (correct) sample
    out = tmp_path / "run" / "ev"
    d = json.loads((out / "eval.json").read_text())
    assert d["stage"] == "ev" and d["benchmarks"] == ["arith"] and len(d["problems"]) == 3
    assert d["settings"]["temperature"] == 0.6 and d["settings"]["max_new_tokens"] == 32
    assert len((out / "eval_samples.jsonl").read_text().splitlines()) == 6
    assert "arith/d2" in capsys.readouterr().out


def test_entry_stage_and_checkpoint_resolution(tmp_path):
    from r1mega.config.base import ConfigError
    from r1mega.eval import entry
    from r1mega.eval.config import EvalConfig

    cfg = _config(tmp_path, [{"name": "pre", "kind": "pretrain", "steps": 1},
                             {"name": "ev", "kind": "eval", "init_from": "pre"}])
    assert entry.pick_stage(cfg).name == "ev" and entry.pick_stage(cfg, "pre").name == "pre"
    with pytest.raises(ConfigError, match="run that stage first"):
        entry.resolve_checkpoint(cfg, cfg.stage("ev"), EvalConfig())
    with pytest.raises(ConfigError, match="run that stage first"):
        entry.resolve_checkpoint(cfg, cfg.stage("pre"), EvalConfig())
    two = _config(tmp_path, [{"name": "a", "kind": "pretrain", "steps": 1}, {"name": "b", "kind": "sft", "steps": 1}])
    with pytest.raises(ConfigError, match="--stage"):
        entry.pick_stage(two)
    with pytest.raises(ConfigError, match="eval.checkpoint"):
        entry.resolve_checkpoint(_config(tmp_path, []), None, EvalConfig())
    with pytest.raises(ConfigError, match="exceed"):
        entry.check_lengths([[1] * 100], 64, 128)


def test_cli_eval_without_checkpoint_is_a_config_error(tmp_path, capsys):
    from r1mega.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"pipeline:\n  run_dir: {tmp_path / 'run'}\n  stages:\n"
                   "    - {name: pre, kind: pretrain, steps: 1}\n    - {name: ev, kind: eval, init_from: pre}\n")
    assert main(["eval", str(cfg), "--stage", "ev"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
