"""Math accuracy with math-verify (runs inside a pool worker: math-verify's timeouts use SIGALRM).

math-verify never executes the text it parses: LaTeX goes through its ANTLR grammar (latex2sympy2_extended)
and plain expressions are only handed to sympy when they match its regex of digits, operators and
parentheses. Answers are also pre-filtered in the trainer process (length, nesting depth) and every call has
a hard timeout in the pool (``\\boxed{9^{9^{9^{9}}}}`` only ends that way).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

from r1mega.rewards.choice import choice_reward, is_choice_gold
from r1mega.rewards.extract import max_nesting_depth

_DELIMS = ("$", "\\(", "\\[", "\\boxed", "\\fbox")
# Plain numbers skip the (slow, ~30 ms) ANTLR LaTeX parser: "42", "-3.5", "7/8", "x = 42".
_PLAIN_NUMBER = re.compile(r"\s*(?:[A-Za-z]\s*=\s*)?(-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?)\s*")
_SIMPLE_FRAC = re.compile(r"\s*(-?)\s*\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}\s*")
_extraction = None
_expr_only = None


def _config():
    global _extraction
    if _extraction is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        _extraction = [LatexExtractionConfig(), ExprExtractionConfig()]
    return _extraction


@lru_cache(maxsize=4096)
def _parse_cached(text: str, timeout_s: int) -> tuple:
    return tuple(parse_answer(text, timeout_s))


def parse_answer(text: str, timeout_s: int = 3) -> list:
    """math-verify parse of an answer string. Bare answers ("\\frac12", "(1, 2]") are read as LaTeX math
    first (wrapped in $...$); text that already has delimiters is parsed as it is."""
    global _expr_only
    from math_verify import ExprExtractionConfig, parse

    f = _SIMPLE_FRAC.fullmatch(text)
    if f:  # "\\frac{3}{4}" -> "3/4"
        text = f"{f.group(1)}{f.group(2)}/{f.group(3)}".replace("--", "")
    m = _PLAIN_NUMBER.fullmatch(text)
    if m:
        if _expr_only is None:
            _expr_only = [ExprExtractionConfig()]
        parsed = parse(m.group(1), extraction_config=_expr_only, parsing_timeout=timeout_s)
        if parsed:
            return parsed
    cfg = _config()
    if not any(d in text for d in _DELIMS):
        parsed = parse(f"${text}$", extraction_config=cfg, parsing_timeout=timeout_s)
        if parsed:
            return parsed
    return parse(text, extraction_config=cfg, parsing_timeout=timeout_s)


def math_accuracy(pred: Optional[str], gold: str, verify_timeout_s: int = 3, numeric_precision: int = 15,
                  mcq_letters: str = "ABCDEFGHIJ", choices=None) -> float:
    """1.0 if the extracted answer ``pred`` equals ``gold`` (math-verify; choice letters compared as letters)."""
    if pred is None or gold is None:
        return 0.0
    gold = str(gold)
    if is_choice_gold(gold, mcq_letters):
        return choice_reward(pred, gold, mcq_letters, choices)
    from math_verify import verify

    gold_parsed = list(_parse_cached(gold, verify_timeout_s))   # a GRPO group shares its gold
    if not gold_parsed:
        return 0.0
    pred_parsed = parse_answer(pred, verify_timeout_s)
    if not pred_parsed:
        return 0.0
    ok = verify(gold_parsed, pred_parsed, numeric_precision=numeric_precision, timeout_seconds=verify_timeout_s)
    return 1.0 if ok else 0.0


def prefilter(pred: Optional[str], max_chars: int, max_depth: int) -> Optional[str]:
    """Why ``pred`` is refused without parsing ('too_long', 'too_deep'), or None if it may be parsed."""
    if pred is None:
        return None
    if len(pred) > max_chars:
        return "too_long"
    if max_nesting_depth(pred) > max_depth:
        return "too_deep"
    return None


__all__ = ["math_accuracy", "parse_answer", "prefilter"]
