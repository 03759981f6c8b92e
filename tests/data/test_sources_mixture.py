"""The prompt mixture: weighted interleave, epoch shuffles without repeats, resumable position, held-out split."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from r1mega.config.data import DataConfig
from r1mega.data.mixture import PromptMixture, load_sources, make_prompts
from r1mega.data.prompts import TaskPrompts


@pytest.fixture(scope="module")
def tok():
    from r1mega.data.tokenizer import load_tokenizer

    return load_tokenizer()


def _file(tmp_path, name, n, **extra):
    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"{name} question {i}", "answer": str(i), **extra}) + "\n" for i in range(n)))
    return str(p)


def test_weighted_interleave_and_epochs_without_repeats(tmp_path, tok):
    data = DataConfig(sources=[{"path": _file(tmp_path, "reason", 8), "weight": 0.75},
                               {"path": _file(tmp_path, "general", 3), "weight": 0.25, "task_type": "general"}],
                      heldout_fraction=0.0)
    mix = make_prompts(data, tok, load_sources(data), seed=5)
    items = mix.take(24)
    # the source furthest behind its share w*(i+1) - drawn: i=0 R (.75 vs .25), i=1 tie .5/.5 -> R (first),
    # i=2 G (.25 vs .75), i=3 R (1 vs 0); then the same every 4 draws
    assert [i.meta["source"] for i in items] == ["reason", "reason", "general", "reason"] * 6
    reason = [i.meta["id"] for i in items if i.meta["source"] == "reason"]
    assert sorted(reason[:8]) == sorted(reason[8:16]) == [f"reason-{n:06d}" for n in range(1, 9)]  # epochs 0, 1
    assert reason[:8] != reason[8:16]  # reshuffled each epoch
    general = [i.meta["id"] for i in items if i.meta["source"] == "general"]
    assert sorted(general[:3]) == sorted(general[3:6]) == ["general-000001", "general-000002", "general-000003"]
    assert items[2].task_type == "general" and items[0].gold == items[0].text.split("question ")[1].split(".")[0]
    # a pure function of (seed, position): a fresh mixture restored to position 10 continues identically
    again = make_prompts(data, tok, load_sources(data), seed=5)
    again.restore({"cursor": 10, "sources": ["reason", "general"]})
    assert [i.text for i in again.take(14)] == [i.text for i in items[10:]]
    other = make_prompts(data, tok, load_sources(data), seed=6).take(8)
    assert [i.meta["id"] for i in other] != [i.meta["id"] for i in items[:8]]
    with pytest.raises(Exception, match=r"data.sources: the checkpoint's prompt sources \['x'\] differ"):
        again.restore({"cursor": 1, "sources": ["x"]})


def test_tasks_source_mixes_with_files_and_no_source_is_todays_stream(tmp_path, tok):
    data = DataConfig(tasks=["arith", "word"], difficulties=[1, 2], sources=[
        {"path": _file(tmp_path, "f", 5), "weight": 0.5}, {"kind": "tasks", "tasks": ["arith"], "weight": 0.5}],
        heldout_fraction=0.0)
    items = make_prompts(data, tok, load_sources(data), seed=3).take(8)
    assert [i.meta["source"] for i in items] == ["f", "tasks"] * 4
    tasks = TaskPrompts(tok, ["arith"], [1, 2], seed=3).batch(0, 64)[:4]
    assert [i.text for i in items[1::2]] == [t.text for t in tasks]
    assert {i.meta["task"] for i in items[1::2]} == {"arith"}
    # no source configured: TaskPrompts itself, the same draws of (seed, iteration, offset) as before sources
    plain = make_prompts(DataConfig(tasks=["arith", "word"], difficulties=[2]), tok, [], seed=4)
    assert isinstance(plain, TaskPrompts)
    ref = TaskPrompts(tok, ["arith", "word"], [2], seed=4)
    assert [(i.text, i.ids, i.gold) for i in plain.batch(3, 16, offset=1)] == \
           [(i.text, i.ids, i.gold) for i in ref.batch(3, 16, offset=1)]


def test_heldout_split_is_deterministic_and_kept_out_of_training(tmp_path):
    path = _file(tmp_path, "big", 400)
    data = DataConfig(train_paths=[path], heldout_fraction=0.1, seed=7)
    (src,) = load_sources(data)
    held = {r.prompt for r in src.heldout}
    assert 25 <= len(held) <= 55 and len(src.rows) + len(held) == 400 and not held & {r.prompt for r in src.rows}
    (again,) = load_sources(data)
    assert {r.prompt for r in again.heldout} == held
    (reseeded,) = load_sources(DataConfig(train_paths=[path], heldout_fraction=0.1, seed=8))
    assert {r.prompt for r in reseeded.heldout} != held
    # an eval file given: nothing held out of training
    (full,) = load_sources(DataConfig(train_paths=[path], eval_paths=[path], heldout_fraction=0.1, seed=7))
    assert len(full.rows) == 400 and full.heldout == []


def test_gym_source_draws_training_split_problems(tok):
    pytest.importorskip("reasoning_gym")
    data = DataConfig(sources=[{"kind": "gym", "gym_task": "basic_arithmetic", "size": 20}])
    mix = make_prompts(data, tok, load_sources(data), seed=1)
    items = mix.take(20)
    assert len({i.text for i in items}) == 20 and {i.task_type for i in items} == {"gym"}
    md = items[0].reward_metadata()
    assert md["gym_task"] == "basic_arithmetic" and md["entry"]["answer"] == items[0].gold
