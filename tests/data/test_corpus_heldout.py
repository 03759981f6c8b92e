"""The pretraining corpus never contains a held-out expression: no single operation ``a op b`` that is
the math key of a held-out arith or word problem (``arith|12+4``, ``word|12+4``) appears in 20k documents,
neither as an equation side (facts, worked steps, their decomposition chains) nor in prose form."""
import re

import pytest

from r1mega.data.corpus import (CorpusConfig, arithmetic_facts, facts_document, heldout_expression,
                                iter_corpus_records)
from r1mega.data.tasks import generate_problems, split_of

N_DOCS = 20_000
CHAIN = re.compile(r"[\d(][\d+\-*/()]*(?:=[\d+\-*/()]+)+")
PAIRS = re.compile(r"(?=(?<!\d)(\d+[+\-*/]\d+)(?!\d))")  # every a op b in a side, overlapping
# prose forms of one operation in the plain sentences: (regex, expression builder)
PROSE = [
    (r"(\d+) plus (\d+) is", lambda a, b: f"{a}+{b}"),
    (r"(\d+) minus (\d+) is", lambda a, b: f"{a}-{b}"),
    (r"(\d+) times (\d+) is", lambda a, b: f"{a}*{b}"),
    (r"had (\d+) \w+ and bought (\d+) more", lambda a, b: f"{a}+{b}"),
    (r"had (\d+) \w+ and gave (\d+) to", lambda a, b: f"{a}-{b}"),
    (r"(\d+) \w+ with (\d+) \w+ each hold", lambda a, b: f"{a}*{b}"),
    (r"When (\d+) \w+ are split into (\d+) equal piles", lambda a, b: f"{a}/{b}"),
]


def is_heldout(expr: str) -> bool:  # independent of the corpus module's helper
    return split_of(f"arith|{expr}") == "test" or split_of(f"word|{expr}") == "test"


def written_operations(texts) -> set:
    """Every single operation written in an equality chain: whole sides (12+4=16) and the operations inside
    longer sides (4+119=100+4+19=... writes 100+4 and 4+19)."""
    ops = set()
    for t in texts:
        for m in CHAIN.finditer(t):
            for side in m.group(0).split("="):
                ops.update(PAIRS.findall(side))
    return ops


@pytest.fixture(scope="module")
def texts():
    # the default mix and a facts-heavy one (the kind of mix examples/tiny/pretrain.yaml uses)
    out = []
    for cfg, n in ((CorpusConfig(seed=21), N_DOCS // 2), (CorpusConfig(seed=22, facts_weight=0.3), N_DOCS // 2)):
        it = iter_corpus_records(cfg)
        out += [next(it)["text"] for _ in range(n)]
    return out


def test_no_heldout_expression_in_equations(texts):
    sides = written_operations(texts)
    assert len(sides) > 2000  # the check is not vacuous: thousands of distinct operations are written
    leaked = sorted(s for s in sides if is_heldout(s))
    assert not leaked, leaked[:20]


def test_no_heldout_expression_in_prose(texts):
    seen, leaked = 0, []
    for t in texts:
        for pat, expr in PROSE:
            for a, b in re.findall(pat, t):
                seen += 1
                if is_heldout(expr(a, b)):
                    leaked.append(expr(a, b))
    assert seen > 1000 and not leaked, leaked[:20]


def test_heldout_eval_problems_never_appear(texts):
    """The level-1/2 held-out problems the base-model eval uses: neither their expression as an equation
    nor their prompt is anywhere in the corpus."""
    blob = "\n".join(texts)
    ops = written_operations(texts)
    for task in ("arith", "word"):
        for d in (1, 2):
            probs = generate_problems(task, 60, seed=7, split="test", difficulty=d)
            for p in probs:
                assert p.prompt not in blob, p.prompt
                expr = p.key.split("|", 1)[1]
                assert expr not in ops, (task, d, expr)


def test_facts_skip_heldout():
    import random

    rng = random.Random(3)
    exprs = [f.split("=")[0] for _ in range(3000) for f in arithmetic_facts(rng)[len("Facts: "):-1].split(", ")]
    assert not [e for e in exprs if is_heldout(e)]
    assert facts_document(random.Random(0)).startswith("Facts: ")
    assert heldout_expression("2+13") == is_heldout("2+13")
