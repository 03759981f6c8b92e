"""Chinese questions: the same problems as the English ones (same keys, answers and steps, same draws), a
Chinese-question share in the RL prompt stream and the corpus, the tokenizer's character set, and the
language reward's per-prompt target."""
from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest

from r1mega.data.corpus import CorpusConfig, iter_corpus_records
from r1mega.data.tasks import TaskError, generate_problems, iter_problems, zh_characters


@pytest.mark.parametrize("task", ["arith", "word"])
def test_a_chinese_question_is_the_english_problem(task):
    en = generate_problems(task, 60, seed=5, split="train", difficulty=[1, 2, 3, 4, 5])
    zh = generate_problems(task, 60, seed=5, split="train", difficulty=[1, 2, 3, 4, 5], lang="zh")
    assert [p.key for p in en] == [p.key for p in zh]
    assert [p.answer for p in en] == [p.answer for p in zh]
    assert [p.thinking("en") for p in en] == [p.thinking("en") for p in zh]
    for e, z in zip(en, zh):
        assert z.lang == "zh" and e.lang == "en"
        assert not re.search(r"[A-Za-z]", z.prompt), z.prompt
        assert z.prompt.endswith("？")
        # the default worked solution is written in the question's language
        assert z.solution().startswith("<think> 第1步：") and e.solution().startswith("<think> Step 1: ")


def test_arith_chinese_phrasings_by_hand():
    import random

    from r1mega.data.tasks import arith

    for seed in range(40):
        en = arith.sample(random.Random(seed), 2)
        zh = arith.sample(random.Random(seed), 2, lang="zh")
        i = [p.format(e=en["expression"]) for p in arith.PHRASINGS].index(en["prompt"])
        assert zh["prompt"] == arith.PHRASINGS_ZH[i].format(e=en["expression"])
    assert arith.PHRASINGS_ZH[2].format(e="(7-3)*2") == "(7-3)*2等于多少？"
    with pytest.raises(TaskError, match="'fr'"):
        arith.sample(random.Random(0), 1, lang="fr")


def test_nonreasoning_pairs_are_english_only():
    with pytest.raises(TaskError, match="English only"):
        generate_problems("nonreasoning", 2, lang="zh")


def test_the_prompt_stream_asks_a_share_in_chinese_without_changing_its_problems():
    tasks, levels = {"arith": 1.0, "word": 1.0, "nonreasoning": 0.5}, {1: 1.0, 2: 1.0}
    plain = list(itertools.islice(iter_problems(tasks, levels, seed=9), 2000))
    mixed = list(itertools.islice(iter_problems(tasks, levels, seed=9, zh_fraction=0.25), 2000))
    assert [p.key for p in plain] == [p.key for p in mixed]
    assert all(p.lang == "en" for p in plain)
    general = [p for p in mixed if p.task.startswith("nonreasoning")]
    assert len(general) > 300 and all(p.lang == "en" for p in general)
    reasoning = [p for p in mixed if not p.task.startswith("nonreasoning")]
    share = sum(p.lang == "zh" for p in reasoning) / len(reasoning)
    assert 0.22 < share < 0.28
    with pytest.raises(TaskError, match="zh_fraction"):
        next(iter_problems(tasks, levels, zh_fraction=1.5))
    # limited to one family: the other stays English, the problems are still the same
    arith_only = list(itertools.islice(iter_problems(tasks, levels, seed=9, zh_fraction=0.25, zh_tasks=["arith"]), 2000))
    assert [p.key for p in arith_only] == [p.key for p in plain]
    assert all(p.lang == "en" for p in arith_only if p.task != "arith")
    arith = [p for p in arith_only if p.task == "arith"]
    assert 0.2 < sum(p.lang == "zh" for p in arith) / len(arith) < 0.3
    with pytest.raises(TaskError, match="zh_tasks"):
        next(iter_problems(tasks, levels, zh_fraction=0.5, zh_tasks=["nonreasoning"]))


def test_the_corpus_asks_in_chinese_and_draws_step_words_independently():
    base = CorpusConfig(zh_fraction=0.2)
    mixed = CorpusConfig(zh_fraction=0.2, zh_prompt_fraction=0.3)
    a = list(itertools.islice(iter_corpus_records(base), 3000))
    b = list(itertools.islice(iter_corpus_records(mixed), 3000))
    assert [r["key"] for r in a] == [r["key"] for r in b]  # the same documents' problems
    assert [r["lang"] for r in a] == [r["lang"] for r in b]  # the same step languages
    worked = [r for r in b if r["kind"] in ("r1", "qa")]
    pairs = Counter((r["prompt_lang"], r["lang"]) for r in worked)
    zh_q = pairs[("zh", "en")] + pairs[("zh", "zh")]
    assert 0.25 < zh_q / len(worked) < 0.35
    # step words do not follow the question: most Chinese questions are worked in English
    assert 0.1 < pairs[("zh", "zh")] / zh_q < 0.3
    assert all(r["prompt_lang"] == "en" for r in b if r["kind"] not in ("r1", "qa"))
    with pytest.raises(Exception, match="zh_prompt_fraction"):
        CorpusConfig(zh_prompt_fraction=-0.1).validate()
    with pytest.raises(Exception, match="zh_prompt_tasks"):
        CorpusConfig(zh_prompt_tasks=["nonreasoning"]).validate()
    only_arith = list(itertools.islice(iter_corpus_records(CorpusConfig(zh_fraction=0.2, zh_prompt_fraction=0.3,
                                                                        zh_prompt_tasks=["arith"])), 3000))
    assert {r["task"] for r in only_arith if r["prompt_lang"] == "zh"} == {"arith"}


def test_the_tokenizer_character_set_covers_every_chinese_question():
    chars = set(zh_characters())
    for task in ("arith", "word"):
        for p in generate_problems(task, 300, seed=2, split="train", difficulty=[1, 2, 3, 4, 5], lang="zh"):
            assert {c for c in p.prompt + p.solution() if ord(c) > 127} <= chars, p.prompt
    assert {"第", "步", "等", "于", "苹", "果"} <= chars


def test_rl_prompts_carry_their_questions_language():
    from r1mega.data.prompts import TaskPrompts
    from r1mega.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    items = TaskPrompts(tok, ["arith", "word"], [2], seed=4, zh_fraction=0.5, zh_tasks=["arith"]).batch(3, 64)
    langs = Counter((i.meta["task"], i.meta["lang"]) for i in items)
    assert langs[("word", "zh")] == 0 and langs[("arith", "zh")] > 5 and langs[("arith", "en")] > 5
    for i in items:
        question = i.text.split("User: ", 1)[1]
        assert bool(re.search(r"[\u4e00-\u9fff]", question)) == (i.meta["lang"] == "zh")
    plain = TaskPrompts(tok, ["arith", "word"], [2], seed=4).batch(3, 64)
    assert [i.gold for i in plain] == [i.gold for i in items] and {i.meta["lang"] for i in plain} == {"en"}
