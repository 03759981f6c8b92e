"""Format reward: ``<think> reasoning </think> <answer> answer </answer>`` and nothing else.

Four checks, each 0 or 1 (tags are found with plain string search, linear time):

1. ``think``: exactly one ``<think>`` and one ``</think>``, in that order (content non-blank if required);
2. ``answer``: exactly one ``<answer>`` and one ``</answer>``, in that order (content non-blank if required);
3. ``order``: 1 and 2 hold and ``</think>`` comes before ``<answer>``;
4. ``clean``: 3 holds and only whitespace is outside the two blocks.

``strict`` mode returns check 4 (the whole response is exactly the pattern); ``partial`` mode returns the mean of
the four, so e.g. a response with a correct think block and no answer block scores 0.25.
"""
from __future__ import annotations

from r1mega.config.rewards import FormatRewardConfig

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_checks(response: str, require_nonempty: bool = True, think_prefilled: bool = False) -> dict[str, bool]:
    """The four checks above for ``response``."""
    text = response
    if think_prefilled and not text.lstrip().startswith("<think>"):
        text = "<think>" + text
    counts = {t: text.count(t) for t in _TAGS}
    pos = {t: text.find(t) for t in _TAGS}
    t_open, t_close, a_open, a_close = (pos[t] for t in _TAGS)

    think = counts["<think>"] == 1 and counts["</think>"] == 1 and t_open < t_close
    if think and require_nonempty:
        think = bool(text[t_open + len("<think>"):t_close].strip())
    answer = counts["<answer>"] == 1 and counts["</answer>"] == 1 and a_open < a_close
    if answer and require_nonempty:
        answer = bool(text[a_open + len("<answer>"):a_close].strip())
    order = think and answer and t_close < a_open
    clean = order and not (text[:t_open].strip() or text[t_close + len("</think>"):a_open].strip()
                           or text[a_close + len("</answer>"):].strip())
    return {"think": think, "answer": answer, "order": order, "clean": clean}


def format_reward(response: str, cfg: FormatRewardConfig) -> float:
    """1.0/0.0 (strict) or the mean of the four checks (partial)."""
    checks = format_checks(response, cfg.require_nonempty, cfg.think_prefilled)
    if cfg.mode == "strict":
        return 1.0 if checks["clean"] else 0.0
    return sum(checks.values()) / len(checks)


__all__ = ["format_reward", "format_checks"]
