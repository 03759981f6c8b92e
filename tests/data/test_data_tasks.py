"""Synthetic tasks: correct worked solutions, graded difficulty, disjoint deterministic splits."""
import re

import pytest

from r1mega.config.base import ConfigError
from r1mega.data.jsonl import read_jsonl
from r1mega.data.tasks.arith import fact_step
from r1mega.data.tasks import (TaskError, TaskSetConfig, canonical_int, check_steps, eval_expr, generate_nonreasoning,
                               generate_problems, split_of, worked_step, write_task_splits)

FIELDS = ("id", "task", "difficulty", "prompt", "answer", "solution")
SOLUTION = re.compile(r"^<think> (.*) </think> <answer> (\S+) </answer>$")
STEP = re.compile(r"(?:Step (\d+): |第(\d+)步：)")


def _parse(expr):
    a, op, b = re.fullmatch(r"(\d+)([+\-*/])(\d+)", expr).groups()
    return int(a), op, int(b)


def _all(n=40, seed=0, split="train"):
    return [p for task in ("arith", "word") for d in (1, 2, 3, 4, 5)
            for p in generate_problems(task, n, seed=seed, split=split, difficulty=d)]


@pytest.fixture(scope="module")
def problems():
    return _all()


def test_schema(problems):
    for p in problems:
        row = p.to_dict()
        assert all(k in row for k in FIELDS)
        assert row["answer"] == canonical_int(row["answer"]) and int(row["answer"]) >= 0
        assert isinstance(row["difficulty"], int) and row["split"] == "train"
    assert len({p.id for p in problems}) == len(problems)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_worked_solutions_are_correct(problems, lang):
    for p in problems:
        m = SOLUTION.match(p.solution(lang))
        assert m, p.solution(lang)
        think, answer = m.groups()
        assert answer == p.answer
        checks = check_steps(think)
        assert len(checks) == len(p.steps) and all(ok for _, ok in checks), (p.prompt, think)
        # steps are numbered 1..k and the last one ends with the answer
        numbers = [int(a or b) for a, b in STEP.findall(think)]
        assert numbers == list(range(1, len(p.steps) + 1))
        assert checks[-1][0].endswith("=" + p.answer)
        plain = p.plain_solution(lang)
        assert plain.endswith(f"The answer is {p.answer}." if lang == "en" else f"所以答案是{p.answer}。")


def test_arith_answer_is_the_expression_value(problems):
    for p in problems:
        if p.task == "arith":
            expr = re.search(r"[\d(][\d+\-*()]*", p.prompt).group(0)
            assert eval_expr(expr) == int(p.answer), p.prompt


def test_word_steps_use_numbers_from_the_story(problems):
    for p in problems:
        if p.task != "word":
            continue
        known = {int(x) for x in re.findall(r"\d+", p.prompt)} | {2, 3}  # doubles / triples
        for s in p.steps:
            a, op, b = re.fullmatch(r"(\d+)([+\-*/])(\d+)", s.expr).groups()
            assert int(a) in known and int(b) in known, (p.prompt, s.expr)
            known.add(s.result)
        assert p.steps[-1].result == int(p.answer)


def test_difficulty_ladder(problems):
    def ops(p):
        return len(p.steps)

    def biggest(p):
        return max(int(x) for x in re.findall(r"\d+", p.prompt))

    by = {(t, d): [p for p in problems if p.task == t and p.difficulty == d] for t in ("arith", "word") for d in range(1, 6)}
    for t in ("arith", "word"):
        assert all(ops(p) == 1 and biggest(p) <= 99 for p in by[t, 1])
        assert all(ops(p) == 2 and all(fact_step(*_parse(st.expr)) for st in p.steps) for p in by[t, 2])
        assert max(biggest(p) for p in by[t, 2]) <= 9
        assert all(ops(p) == 2 for p in by[t, 3])
        assert all(ops(p) == 3 for p in by[t, 4])
        assert all(ops(p) in (3, 4) for p in by[t, 5]) and max(biggest(p) for p in by[t, 5]) >= 100
    assert all(biggest(p) >= 100 for p in by["arith", 5])
    mean_len = [sum(len(p.solution()) for p in by["arith", d]) / len(by["arith", d]) for d in range(1, 6)]
    assert mean_len == sorted(mean_len)


def test_splits_are_disjoint_and_deterministic():
    train = _all(n=60, seed=0, split="train") + _all(n=60, seed=7, split="train")
    test = _all(n=30, seed=0, split="test") + _all(n=30, seed=99, split="test")
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in test})
    assert {p.key for p in train}.isdisjoint({p.key for p in test})
    assert all(p.split == "test" == split_of(p.key) for p in test)
    again = _all(n=30, seed=0, split="test")
    assert [p.to_dict() for p in again] == [p.to_dict() for p in test[:len(again)]]
    other_seed = _all(n=30, seed=1, split="test")
    assert [p.prompt for p in other_seed] != [p.prompt for p in again]
    # unique within a set
    t1 = generate_problems("arith", 300, seed=0, split="test", difficulty=2)
    assert len({p.key for p in t1}) == 300


def test_worked_step_decompositions():
    assert worked_step(47, "*", 6).text() == "47*6=40*6+7*6=240+42=282"
    assert worked_step(47, "*", 36).text() == "47*36=47*30+47*6=1410+282=1692"
    assert worked_step(378, "+", 465).text() == "378+465=300+400+78+65=700+143=843"
    assert worked_step(843, "-", 465).text() == "843-465=843-400-65=443-65=378"
    assert worked_step(37, "+", 12).text() == "37+12=49"
    assert worked_step(96, "/", 8).text() == "96/8=12"
    with pytest.raises(TaskError):
        worked_step(7, "/", 2)


def test_check_steps_and_eval():
    assert check_steps("Step 1: 3+4=7. Step 2: 7*2=15.") == [("3+4=7", True), ("7*2=15", False)]
    assert eval_expr("(37+12)*3-15") == 132
    for bad in ("__import__('os')", "2**8", "7/2", "1.5+1"):
        with pytest.raises(ValueError):
            eval_expr(bad)
    assert canonical_int(" 1,200 ") == "1200" and canonical_int(-0) == "0" and canonical_int("-07") == "-7"


def test_nonreasoning_answers_verifiable():
    rows = generate_nonreasoning(200, seed=2, difficulty=[1, 2, 3])
    kinds = {p.task for p in rows}
    assert kinds == {f"nonreasoning/{k}" for k in ("repeat", "larger", "smaller", "sort", "successor")}
    words = {"two": 2, "three": 3, "four": 4}
    for p in rows:
        nums = [int(x) for x in re.findall(r"\d+", p.prompt)]
        kind = p.task.split("/")[1]
        expected = {
            "larger": lambda: str(max(nums)), "smaller": lambda: str(min(nums)),
            "sort": lambda: ", ".join(map(str, sorted(nums))), "successor": lambda: str(nums[0] + 1),
            "repeat": lambda: " ".join([p.prompt.split()[3]] * words[p.prompt.split()[4]]),
        }[kind]()
        assert p.answer == p.response == expected, p.prompt
        assert p.solution() == f"<think> </think> <answer> {expected} </answer>"
    test = generate_nonreasoning(50, seed=2, split="test", difficulty=[1, 2, 3])
    assert {p.prompt for p in test}.isdisjoint({p.prompt for p in rows})


def test_errors():
    with pytest.raises(TaskError, match="task must be one of"):
        generate_problems("poetry", 1)
    with pytest.raises(TaskError, match="difficulty"):
        generate_problems("arith", 1, difficulty=9)
    with pytest.raises(TaskError, match="split"):
        generate_problems("arith", 1, split="dev")
    with pytest.raises(TaskError, match="unique"):  # the held-out level-1 space has ~75 problems
        generate_problems("arith", 3000, split="test", difficulty=1, max_stall=500)


def test_write_task_splits(tmp_path):
    cfg = TaskSetConfig(difficulties=[1, 5], n_train=20, n_test=5, seed=3)
    paths = write_task_splits(tmp_path, cfg)
    train, test = read_jsonl(paths["train"], required=FIELDS), read_jsonl(paths["test"], required=FIELDS)
    assert len(train) == 2 * 2 * 20 and len(test) == 2 * 2 * 5
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test})
    with pytest.raises(ConfigError, match="tasks.difficulties"):
        TaskSetConfig(difficulties=[0]).validate()
    with pytest.raises(ConfigError, match="tasks.n_test"):
        TaskSetConfig(n_test=-1).validate()
