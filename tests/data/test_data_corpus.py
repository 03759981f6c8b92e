"""The pretraining mix: deterministic, proportions and language mixing as configured, no leaks."""
import re

import pytest

from r1mega.config.base import ConfigError
from r1mega.data.corpus import CorpusConfig, iter_corpus, iter_corpus_records, render_prompt
from r1mega.data.tasks import check_steps, generate_problems, split_of

CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
N = 3000


@pytest.fixture(scope="module")
def records():
    it = iter_corpus_records(CorpusConfig(seed=11))
    return [next(it) for _ in range(N)]


def test_deterministic():
    a = list(iter_corpus(CorpusConfig(seed=4), n=300))
    assert a == list(iter_corpus(CorpusConfig(seed=4), n=300))
    assert a != list(iter_corpus(CorpusConfig(seed=5), n=300))
    assert all(isinstance(t, str) and t for t in a)


def test_proportions(records):
    cfg = CorpusConfig()
    total = sum(cfg.weights().values())
    for kind, w in cfg.weights().items():
        share = sum(r["kind"] == kind for r in records) / N
        assert abs(share - w / total) < 0.03, (kind, share)


def test_language_mix_fraction(records):
    worked = [r for r in records if r["kind"] in ("r1", "qa")]
    share = sum(r["lang"] == "zh" for r in worked) / len(worked)
    assert abs(share - 0.2) < 0.01, share
    for r in worked:
        assert bool(CJK.search(r["text"])) == (r["lang"] == "zh"), r["text"]
    for r in records:
        if r["kind"] in ("plain", "nonreasoning"):
            assert not CJK.search(r["text"])
    # the prompt stays English: only the reasoning is mixed
    for r in worked:
        if r["lang"] == "zh":
            prompt = r["text"].split("Assistant:")[0] if r["kind"] == "r1" else r["text"].split("\nAnswer:")[0]
            assert not CJK.search(prompt)


@pytest.mark.parametrize("frac", [0.0, 0.05, 0.33, 0.5, 1.0])
def test_language_mix_configurable(frac):
    it = iter_corpus_records(CorpusConfig(seed=2, zh_fraction=frac, plain_weight=0, nonreasoning_weight=0))
    recs = [next(it) for _ in range(1000)]
    share = sum(r["lang"] == "zh" for r in recs) / len(recs)
    assert abs(share - frac) < 0.02


def test_formats_and_correctness(records):
    r1 = [r for r in records if r["kind"] == "r1"]
    qa = [r for r in records if r["kind"] == "qa"]
    assert all(r["text"].startswith("A conversation between User and Assistant.") for r in r1)
    assert all(re.search(r"Assistant: <think> .* </think> <answer> \S+ </answer>$", r["text"]) for r in r1)
    assert all(r["text"].startswith("Question: ") and "\nAnswer: " in r["text"] for r in qa)
    for r in r1 + qa:
        assert all(ok for _, ok in check_steps(r["text"].split("Assistant:")[-1])), r["text"]
    levels = {r["difficulty"] for r in r1 + qa}
    assert levels == {1, 2, 3, 4, 5}
    assert {r["task"] for r in r1 + qa} == {"arith", "word"}


def test_direct_answers():
    """direct_fraction of the multi-step problems are bare answers (never a single-step one); the rest of
    the mix is the same as without them."""
    cfg = dict(seed=3, plain_weight=0, nonreasoning_weight=0, facts_weight=0, zh_fraction=0.2,
               difficulty_weights=[0.5, 0.5, 0, 0, 0])
    it = iter_corpus_records(CorpusConfig(**cfg, direct_fraction=0.4))
    recs = [next(it) for _ in range(1500)]
    base = iter_corpus_records(CorpusConfig(**cfg))
    assert [r["key"] for r in recs] == [next(base)["key"] for _ in recs]
    multi = [r for r in recs if r["difficulty"] == 2]
    direct = [r for r in multi if r["direct"]]
    assert abs(len(direct) / len(multi) - 0.4) < 0.05
    assert not any(r["direct"] for r in recs if r["difficulty"] == 1)
    for r in direct:
        answer = r["key"] and re.search(r"(?:The answer is |所以答案是)(\d+)", r["text"]).group(1)
        assert "Step" not in r["text"] and "第1步" not in r["text"]
        if r["kind"] == "r1":
            assert re.search(rf"Assistant: <think> (The answer is {answer}\.|所以答案是{answer}。) </think> "
                             rf"<answer> {answer} </answer>$", r["text"]), r["text"]
        else:
            assert r["text"].endswith(f"\nAnswer: The answer is {answer}.") or r["text"].endswith(f"所以答案是{answer}。")
    worked = [r for r in multi if not r["direct"]]
    assert all(re.search(r"Step 2: |第2步：", r["text"]) for r in worked)


def test_facts_max():
    it = iter_corpus_records(CorpusConfig(seed=4, facts_max=9, plain_weight=0, r1_weight=0, qa_weight=0,
                                          nonreasoning_weight=0, facts_weight=1))
    facts = [f for _ in range(200) for f in re.findall(r"(\d+)[+\-*](\d+)=", next(it)["text"])]
    assert len(facts) > 1000 and max(int(x) for f in facts for x in f) == 9


def test_plain_text_facts_are_true(records):
    plain = [r["text"] for r in records if r["kind"] == "plain"]
    assert all(not re.search(r"<think>|<answer>", t) for t in plain)
    for t in plain:
        for a, b, c in re.findall(r"(\d+) plus (\d+) is (\d+)", t):
            assert int(a) + int(b) == int(c)
        for a, b, c in re.findall(r"(\d+) times (\d+) is (\d+)", t):
            assert int(a) * int(b) == int(c)
        assert all(ok for _, ok in check_steps(t))


def test_no_heldout_problem_in_corpus(records):
    keys = [r["key"] for r in records if r["key"]]
    assert keys and all(split_of(k) == "train" for k in keys)
    heldout = {p.prompt for d, n in ((1, 60), (2, 200)) for p in generate_problems("arith", n, seed=0, split="test", difficulty=d)}
    texts = "\n".join(r["text"] for r in records)
    leaked = [p for p in heldout if f"Question: {p}\n" in texts or f"User: {p}." in texts]
    assert not leaked


def test_render_prompt():
    s = render_prompt("What is 2+3?")
    assert s.startswith("A conversation between User and Assistant.") and s.endswith("User: What is 2+3?. Assistant:")


def test_config_validation():
    for bad, where in [(dict(zh_fraction=1.5), "corpus.zh_fraction"), (dict(plain_weight=-1), "corpus.plain_weight"),
                       (dict(task_weights={"poetry": 1}), "corpus.task_weights"),
                       (dict(difficulty_weights=[1, 2]), "corpus.difficulty_weights"),
                       (dict(direct_fraction=-0.1), "corpus.direct_fraction"), (dict(facts_max=5), "corpus.facts_max"),
                       (dict(plain_weight=0, r1_weight=0, qa_weight=0, nonreasoning_weight=0), "corpus")]:
        with pytest.raises(ConfigError, match=where):
            CorpusConfig(**bad).validate()
