"""Preference pairs for the reward model: deterministic, train split only, held-out pairs disjoint,
each kind's rejected response wrong in the way its kind says."""
from __future__ import annotations

import collections
import os
import subprocess
import sys

from r1mega.config.rewards import FormatRewardConfig, LanguageRewardConfig
from r1mega.data.preferences import KINDS, build_pairs, kind_counts, read_pairs, write_pairs
from r1mega.data.tasks import split_of
from r1mega.rewards.extract import extract_answer
from r1mega.rewards.format import format_reward
from r1mega.rewards.language import language_consistency


def test_pairs_deterministic_train_only_heldout_disjoint(tmp_path):
    tr, ev = build_pairs(400, 80, seed=5)
    tr2, ev2 = build_pairs(400, 80, seed=5)
    assert [p.to_dict() for p in tr] == [p.to_dict() for p in tr2] and [p.to_dict() for p in ev] == [p.to_dict() for p in ev2]
    assert [p.to_dict() for p in build_pairs(400, 80, seed=6)[0]] != [p.to_dict() for p in tr]
    assert collections.Counter(p.kind for p in tr) == {k: 100 for k in KINDS}
    assert {split_of(p.key) for p in tr + ev} == {"train"}           # the held-out (test) split stays clean
    assert not {p.key for p in tr} & {p.key for p in ev}             # eval problems never used for training
    assert len({p.key for p in ev}) == len(ev)
    assert all(p.chosen != p.rejected for p in tr + ev)
    path = write_pairs(tmp_path / "pairs.jsonl", tr)
    assert read_pairs(path) == [p.to_dict() for p in tr]


def test_pairs_are_the_same_in_every_process():
    """A pure function of the seed across processes too: Python's str hash is salted per process
    (PYTHONHASHSEED), so no seed may be derived from hash() of a string."""
    code = ("import json; from r1mega.data.preferences import build_pairs; "
            "print(json.dumps([p.to_dict() for p in build_pairs(40, 8, seed=5)[0]]))")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(s)}).stdout for s in (1, 2)]
    assert outs[0] == outs[1] and len(outs[0]) > 1000


def test_each_kind_rejects_what_it_says():
    tr, _ = build_pairs(800, 0, seed=1)
    fmt, lang = FormatRewardConfig(), LanguageRewardConfig()
    variants = collections.defaultdict(set)
    for p in tr:
        variants[p.kind].add(p.variant)
        if p.kind == "helpfulness":
            assert p.task.startswith("nonreasoning/")
            assert extract_answer(p.chosen) != extract_answer(p.rejected)
            continue
        assert p.task in ("arith", "word") and p.prompt.endswith(p.question + ". Assistant:")
        assert format_reward(p.chosen, fmt) == 1.0 and language_consistency(p.chosen, lang) == 1.0
        if p.kind == "format":
            assert format_reward(p.rejected, fmt) == 0.0
        elif p.kind == "language":
            assert language_consistency(p.rejected, lang) < 1.0 and extract_answer(p.rejected) == extract_answer(p.chosen)
        elif p.kind == "correctness":
            assert format_reward(p.rejected, fmt) == 1.0 and extract_answer(p.rejected) != extract_answer(p.chosen)
    assert variants["correctness"] == {"wrong_answer", "wrong_step"} and variants["language"] == {"zh", "mixed"}
    assert len(variants["format"]) == 6 and variants["helpfulness"] == {"off_topic", "refusal", "wrong"}


def test_kind_counts_and_prefilled_template():
    assert kind_counts(10, {"format": 1, "language": 2}) == {"language": 7, "format": 3}
    assert sum(kind_counts(7, {k: 1 for k in KINDS}).values()) == 7
    tr, _ = build_pairs(20, 0, kinds={"format": 1}, template="chat", seed=0)
    assert all(p.prompt.endswith("<think>\n") and not p.chosen.startswith("<think>") for p in tr)
    assert "no_think_open" not in {p.variant for p in tr}
