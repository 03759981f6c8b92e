"""The Chinese rendering of the word problems: same draws, same math, only the prompt's wording changes."""
import random
import re

import pytest

from r1mega.data.tasks import TaskError
from r1mega.data.tasks import word

SEEDS = range(300)
LEVELS = (1, 2, 3, 4, 5)


def _pairs():
    for s in SEEDS:
        for d in LEVELS:
            yield s, d, word.sample(random.Random(s), d, lang="en"), word.sample(random.Random(s), d, lang="zh")


@pytest.fixture(scope="module")
def pairs():
    return list(_pairs())


def test_zh_is_the_same_problem(pairs):
    for s, d, en, zh in pairs:
        assert (zh["key"], zh["answer"], zh["steps"]) == (en["key"], en["answer"], en["steps"]), (s, d)
        assert en == word.sample(random.Random(s), d), (s, d)  # lang="en" is the default, unchanged


def test_zh_prompts_are_chinese_with_the_same_numbers(pairs):
    for s, d, en, zh in pairs:
        p = zh["prompt"]
        assert not re.search(r"[A-Za-z ]", p), p
        assert p.endswith("？") and p.count("？") == 1, p
        # "...变成了原来的2倍" spells out the factor that English says as "doubles" / "triples".
        nums = sorted(map(int, re.findall(r"\d+", re.sub(r"\d+倍", "", p))))
        assert nums == sorted(map(int, re.findall(r"\d+", en["prompt"]))), (en["prompt"], p)
        assert p.count("。") == en["prompt"].count(".")


def test_zh_strings_cover_every_character(pairs):
    alphabet = {c for s in word.ZH_STRINGS for c in s if ord(c) > 127}
    used = {c for *_, zh in pairs for c in zh["prompt"] if ord(c) > 127}
    assert used <= alphabet, sorted(used - alphabet)
    # and the tuples line up with the English ones they translate
    assert len(word.ZH_NAMES) == len(word.NAMES) and len(word.ZH_OBJECTS) == len(word.OBJECTS)
    assert len(word.ZH_CONTAINERS) == len(word.CONTAINERS)


@pytest.mark.parametrize("seed, difficulty, expected", [
    (6, 3, "佐伊有7袋卡片，每袋装2张。她把11张卡片给了汤姆。佐伊现在有多少张卡片？"),
    (0, 5, "马克斯有588个苹果。他买了4篮苹果，每篮27个。他找到了645个苹果。他把苹果平均分成3堆，留下其中一堆。"
           "马克斯现在有多少个苹果？"),
    (4, 1, "萨姆有2罐笔，每罐装6支。萨姆有多少支笔？"),
])
def test_zh_exact_renderings(seed, difficulty, expected):
    assert word.sample(random.Random(seed), difficulty, lang="zh")["prompt"] == expected


def test_bad_lang():
    with pytest.raises(TaskError, match=r"\('en', 'zh'\), got 'fr'"):
        word.sample(random.Random(0), 1, lang="fr")
