"""Multiple-choice answers: normalise "(B)", "B)", "B.", "**B**", "\\text{(B)}", "answer is B", "Option B: 42"
to the letter "B". math-verify does not handle these, so choice questions are graded here (no parsing of
math, no eval).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Union

# Wrappers removed before matching: LaTeX text/bold commands, $, markdown emphasis.
_UNWRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|boxed|fbox)\s*\{([^{}]*)\}")
_NOISE = re.compile(r"[$*_`]")


def _clean(text: str) -> str:
    prev = None
    while prev != text:
        prev, text = text, _UNWRAP.sub(r"\1", text)
    return _NOISE.sub("", text).strip()


def normalize_choice(text: Optional[str], letters: str = "ABCDEFGHIJ") -> Optional[str]:
    """The chosen letter in ``text`` (an extracted answer), or None if it names no single choice."""
    if not isinstance(text, str):
        return None
    t = _clean(text)[:500]
    if not t:
        return None
    cls = f"[{re.escape(letters)}]"
    # the whole answer is a letter: "B", "(B)", "B)", "B.", "[B]", "B:"
    m = re.fullmatch(rf"[(\[]?\s*({cls})\s*[)\].:]?", t, re.IGNORECASE)
    if m:
        return m.group(1).upper()
    # "answer is (B)", "answer: B", "option B", "choice (B)", "correct answer is B." (last such phrase wins)
    hits = re.findall(rf"(?i:answer|option|choice)\s*(?i:is|:)?\s*(?i:option|choice)?\s*[(\[]?({cls})(?![A-Za-z])", t)
    if hits:
        return hits[-1]
    # the answer starts with the letter then its text: "(B) 42", "B) 42", "B. 42", "B: 42"
    m = re.match(rf"[(\[]?({cls})(?:[)\]]|[.:](?=\s))\s*\S", t)
    if m:
        return m.group(1)
    return None


def choice_reward(pred: Optional[str], gold: str, letters: str = "ABCDEFGHIJ",
                  choices: Union[Sequence[str], dict, None] = None) -> float:
    """1.0 if ``pred`` selects the gold letter. With ``choices`` (list in letter order, or {letter: text}), an
    answer that restates a choice's text exactly (case/space-insensitive) selects that choice."""
    g = normalize_choice(gold, letters)
    if g is None:
        return 0.0
    p = normalize_choice(pred, letters)
    if p is None and choices is not None and isinstance(pred, str):
        table = dict(choices) if isinstance(choices, dict) else dict(zip(letters, choices))
        want = " ".join(_clean(pred).lower().split())
        matches = [k for k, v in table.items() if " ".join(str(v).lower().split()) == want]
        p = matches[0] if len(matches) == 1 else None
    return 1.0 if p == g else 0.0


def is_choice_gold(gold: object, letters: str = "ABCDEFGHIJ") -> bool:
    """Whether a gold answer is a bare choice letter ("B" or "(B)")."""
    return isinstance(gold, str) and re.fullmatch(rf"\(?[{re.escape(letters)}]\)?", gold.strip()) is not None


__all__ = ["normalize_choice", "choice_reward", "is_choice_gold"]
