"""Majority vote over equivalence classes of answers (cons@k).

The answers of one question (the extracted answers of its k samples; ``None`` = no answer, which does not
vote) are grouped into clusters of equivalent answers, and the largest cluster wins.

Clustering, deterministic and greedy:

1. answers are first keyed by :func:`answer_key` (whitespace collapsed, ``$...$`` and a trailing period
   dropped, plain numbers canonicalised: ``"0.50"``, ``"1/2"`` and ``"\\frac{1}{2}"`` share a key); equal keys
   are the same answer without asking anything;
2. the distinct keys, in order of first appearance, are clustered: the first one opens cluster 1 and every
   later key equivalent to it joins; the first key left over opens cluster 2; and so on. Equivalence is asked
   as ``equivalent(representative, candidate)`` where the representative is the answer that opened the
   cluster (math-verify is not guaranteed symmetric or transitive, so the order is fixed).

**Ties** between clusters of the same size go to the cluster whose first member came first in sample order
(the lowest sample index): results never depend on dict or set ordering.

The cluster's answer is its representative, and cons@k of the question is the correctness of that
representative's sample (already scored against the gold by the rewards); all-abstaining questions count
as wrong.

For math, equivalence is math-verify equality of the two extracted answers, run in the rewards'
:class:`~r1mega.rewards.pool.WorkerPool` through its ``math`` function (the first answer plays the gold):
nothing is executed in this process, every call has the pool's hard timeout, and a timeout or error
means "not equivalent". Many questions are clustered together in rounds, one pool batch per round.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Optional, Sequence

BatchEquivalence = Callable[[list], list]

_INT = re.compile(r"[+-]?\d+")
_DEC = re.compile(r"[+-]?\d*\.\d+|[+-]?\d+\.")
_FRAC = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_TEX_FRAC = re.compile(r"(-?)\s*\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def answer_key(answer: str) -> str:
    """A canonical text of ``answer`` under which trivially identical answers coincide."""
    t = " ".join(str(answer).split())
    changed = True
    while changed and t:
        changed = False
        for a, b in _WRAPPERS:
            if len(t) > len(a) + len(b) and t.startswith(a) and t.endswith(b) and a not in t[len(a):-len(b)]:
                t, changed = t[len(a):-len(b)].strip(), True
        if t.endswith(".") and not _DEC.fullmatch(t):
            t, changed = t[:-1].rstrip(), True
    num = _number(t)
    return f"#{num.numerator}/{num.denominator}" if num is not None else t


def _number(t: str) -> Optional[Fraction]:
    """The rational value of a plain number ("42", "-0.5", "3/4", "\\frac{3}{4}"), else None."""
    if len(t) > 200:
        return None
    try:
        if _INT.fullmatch(t) or _DEC.fullmatch(t):
            return Fraction(t)
        m = _FRAC.fullmatch(t)
        if m and int(m.group(2)) != 0:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _TEX_FRAC.fullmatch(t)
        if m and int(m.group(3)) != 0:
            v = Fraction(int(m.group(2)), int(m.group(3)))
            return -v if m.group(1) else v
    except (ValueError, ZeroDivisionError):
        return None
    return None


@dataclass
class Vote:
    """The outcome of one question's vote."""

    answer: Optional[str]                 # representative answer of the winning cluster; None if nobody answered
    sample: Optional[int]                 # the sample whose answer that is (the cluster's first member)
    size: int                             # votes of the winning cluster
    clusters: list = field(default_factory=list)          # [[sample index, ...], ...] in order of first appearance
    representatives: list = field(default_factory=list)   # answer text of each cluster's first member
    abstained: int = 0                    # samples without an answer

    @property
    def sizes(self) -> list:
        return [len(c) for c in self.clusters]


def pick_winner(clusters: Sequence[Sequence[int]]) -> Optional[int]:
    """Index of the largest cluster; ties go to the cluster with the smallest first sample index."""
    best = None
    for i, c in enumerate(clusters):
        if not c:
            continue
        if best is None or len(c) > len(clusters[best]) or (len(c) == len(clusters[best])
                                                           and min(c) < min(clusters[best])):
            best = i
    return best


def _exact(pairs: list) -> list:
    """Only equal keys are equivalent (reasoning-gym answers: their scorers define no general equality)."""
    return [False] * len(pairs)


_exact.batch = True


def cluster_many(answer_lists: Sequence[Sequence[Optional[str]]],
                 equivalent: Optional[BatchEquivalence] = None,
                 key: Callable[[str], str] = answer_key) -> list:
    """Cluster the answers of many questions; one ``equivalent`` batch per round for all of them.

    ``equivalent(pairs) -> [bool, ...]`` judges ``(representative, candidate)`` pairs of answers whose keys
    differ (None = only equal keys are equivalent). Returns, per question, its clusters as lists of sample
    indices in order of first appearance.
    """
    equivalent = equivalent or _exact
    # per question: distinct keys in order of first appearance, with their samples and representative text
    states = []
    for answers in answer_lists:
        order: list = []
        members: dict = {}
        text: dict = {}
        for j, a in enumerate(answers):
            if a is None:
                continue
            kk = key(a)
            if kk not in members:
                order.append(kk)
                members[kk] = []
                text[kk] = a
            members[kk].append(j)
        states.append({"left": order, "members": members, "text": text, "clusters": []})
    while True:
        pairs, where = [], []
        for qi, st in enumerate(states):
            left = st["left"]
            if not left:
                continue
            rep = left[0]
            for kk in left[1:]:
                pairs.append((st["text"][rep], st["text"][kk]))
                where.append((qi, kk))
        same = set()
        if pairs:
            verdicts = list(equivalent(pairs))
            if len(verdicts) != len(pairs):
                raise ValueError(f"equivalence returned {len(verdicts)} verdicts for {len(pairs)} pairs")
            same = {w for w, v in zip(where, verdicts) if v}
        progressed = False
        for qi, st in enumerate(states):
            left = st["left"]
            if not left:
                continue
            progressed = True
            rep, rest = left[0], left[1:]
            joined = [rep] + [kk for kk in rest if (qi, kk) in same]
            st["clusters"].append(sorted(j for kk in joined for j in st["members"][kk]))
            st["left"] = [kk for kk in rest if (qi, kk) not in same]
        if not progressed:
            break
    return [st["clusters"] for st in states]


def vote_from_clusters(answers: Sequence[Optional[str]], clusters: list) -> Vote:
    """The :class:`Vote` of one question given its clusters (as :func:`cluster_many` returns them)."""
    reps = [answers[c[0]] for c in clusters]
    abstained = sum(1 for a in answers if a is None)
    w = pick_winner(clusters)
    if w is None:
        return Vote(None, None, 0, [], [], abstained)
    return Vote(reps[w], clusters[w][0], len(clusters[w]), [list(c) for c in clusters], reps, abstained)


def majority_vote(answers: Sequence[Optional[str]], equivalent=None, key: Callable[[str], str] = answer_key) -> Vote:
    """Majority vote of one question's answers.

    ``equivalent`` is either a batch function ``(pairs) -> [bool]`` (an object with ``batch = True``, such as
    :class:`MathEquivalence`) or a plain ``(representative, candidate) -> bool``; None compares keys only.
    """
    if equivalent is not None and not getattr(equivalent, "batch", False):
        pairwise = equivalent
        equivalent = lambda pairs: [bool(pairwise(a, b)) for a, b in pairs]  # noqa: E731
    clusters = cluster_many([answers], equivalent, key)[0]
    return vote_from_clusters(answers, clusters)


# ------------------------------------------------------------------------------------------ equivalences
_PLAIN_INT = re.compile(r"#(-?\d{1,15})/1")


class MathEquivalence:
    """math-verify equality of two extracted answers, in the rewards' worker pool (see module docstring).

    Pairs whose keys are two different plain integers (<= 15 digits) are unequal without a call; answers the
    rewards would refuse to parse (too long, nested too deep) are unequal to everything else. Verdicts are
    cached per instance. ``stats`` counts calls, timeouts and errors.
    """

    batch = True

    def __init__(self, pool, math_cfg=None):
        from r1mega.config.rewards import MathRewardConfig

        self.pool = pool
        self.cfg = math_cfg or MathRewardConfig()
        self.cache: dict = {}
        self.stats = {"calls": 0, "timeouts": 0, "errors": 0, "skipped": 0}

    def _quick(self, a: str, b: str) -> Optional[bool]:
        from r1mega.rewards.math_accuracy import prefilter

        ka, kb = answer_key(a), answer_key(b)
        if ka == kb:
            return True
        if _PLAIN_INT.fullmatch(ka) and _PLAIN_INT.fullmatch(kb):
            return False
        m = self.cfg
        if prefilter(a, m.max_answer_chars, m.max_brace_depth) or prefilter(b, m.max_answer_chars,
                                                                            m.max_brace_depth):
            return False
        return None

    def __call__(self, pairs: list) -> list:
        from r1mega.rewards.pool import Task

        out: list = [None] * len(pairs)
        tasks, slots = [], {}
        m = self.cfg
        for i, (a, b) in enumerate(pairs):
            if (a, b) in self.cache:
                out[i] = self.cache[(a, b)]
                continue
            q = self._quick(a, b)
            if q is not None:
                self.stats["skipped"] += 1
                out[i] = self.cache[(a, b)] = q
                continue
            if (a, b) not in slots:
                slots[(a, b)] = len(tasks)
                tasks.append(Task("math", (b, a, m.verify_timeout_s, m.numeric_precision, m.mcq_letters, None),
                                  m.timeout_s))
        if tasks:
            outcomes = self.pool.run(tasks)
            self.stats["calls"] += len(tasks)
            for (a, b), t in slots.items():
                o = outcomes[t]
                if o.status == "timeout":
                    self.stats["timeouts"] += 1
                elif not o.ok:
                    self.stats["errors"] += 1
                self.cache[(a, b)] = bool(o.ok and o.value == 1.0)
            for i, p in enumerate(pairs):
                if out[i] is None:
                    out[i] = self.cache[p]
        return out


class ChoiceEquivalence:
    """Multiple-choice answers are equivalent when they name the same letter ("B", "(B)", "answer is B")."""

    batch = True

    def __init__(self, letters: str = "ABCDEFGHIJ"):
        self.letters = letters

    def __call__(self, pairs: list) -> list:
        from r1mega.rewards.choice import normalize_choice

        out = []
        for a, b in pairs:
            la, lb = normalize_choice(a, self.letters), normalize_choice(b, self.letters)
            out.append(la is not None and la == lb)
        return out


def equivalence_for(task_type: str, pool=None, math_cfg=None):
    """The equivalence used to cluster answers of ``task_type``: math -> :class:`MathEquivalence` (needs the
    pool), mcq -> :class:`ChoiceEquivalence`, gym -> equal keys only; code -> None (no vote: cons@k is not
    defined for programs)."""
    if task_type == "math":
        if pool is None:
            raise ValueError("math answers are compared with math-verify in the rewards pool: pass pool")
        return MathEquivalence(pool, math_cfg)
    if task_type == "mcq":
        return ChoiceEquivalence(math_cfg.mcq_letters if math_cfg is not None else "ABCDEFGHIJ")
    if task_type == "gym":
        return _exact
    return None


__all__ = ["Vote", "answer_key", "pick_winner", "cluster_many", "vote_from_clusters", "majority_vote",
           "MathEquivalence", "ChoiceEquivalence", "equivalence_for"]
