"""Pulling the final answer (or code) out of a response. Pure string scanning, linear time, no eval.

Answer rule: the content of the last complete ``<answer>...</answer>`` pair; if there is none, the content
of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces *after the reasoning* (after the last
``</think>``; nothing while a think block is still open, prefilled or not), unless the response was cut at
the length limit (a box there is a guess in mid-thought, not an answer); else ``None``.
"""
from __future__ import annotations

import re
from typing import Optional

_BOX_OPENERS = ("\\boxed", "\\fbox")
_TAG_RE = re.compile(r"[A-Za-z0-9_+-]*")


def extract_answer_tag(text: str) -> Optional[str]:
    """Content of the last complete <answer>...</answer> pair, stripped; None if there is none."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    return None if start < 0 else text[start + len("<answer>"):end].strip()


def extract_last_boxed(text: str) -> Optional[str]:
    """Content of the last balanced ``\\boxed{...}`` / ``\\fbox{...}`` (also ``\\boxed 5``); None if none."""
    starts = []
    for op in _BOX_OPENERS:
        i = text.find(op)
        while i >= 0:
            starts.append((i, i + len(op)))
            i = text.find(op, i + 1)
    if not starts:
        return None
    starts.sort()
    match = _brace_matches(text)
    n = len(text)
    for _, j in reversed(starts):
        k = j
        while k < n and text[k] == " ":
            k += 1
        if k < n and text[k] == "{":
            close = match.get(k)
            if close is not None:
                return text[k + 1:close].strip()
        elif k > j and k < n:  # "\boxed 5": one token after a space
            m = re.match(r"[^\s$]+", text[k:k + 200])
            if m:
                return m.group(0)
    return None


def _brace_matches(text: str) -> dict:
    """{index of '{': index of its matching '}'} in one linear pass."""
    stack, match = [], {}
    for i, c in enumerate(text):
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
    return match


def extract_answer(text: str, think_prefilled: bool = False, truncated: bool = False) -> Optional[str]:
    """The answer of a response: <answer> content, else the last \\boxed{} content outside the think block
    (none for a ``truncated`` response), else None. ``think_prefilled``: the prompt ended with ``<think>``, so
    the response starts inside the reasoning."""
    if not isinstance(text, str):
        return None
    ans = extract_answer_tag(text)
    if ans is not None or truncated:
        return ans
    after = _after_think(text, think_prefilled)
    return None if after is None else extract_last_boxed(after)


def _after_think(text: str, think_prefilled: bool) -> Optional[str]:
    """The text after the last ``</think>``; the whole text without a think block; None inside an open one."""
    end = text.rfind("</think>")
    if end >= 0:
        return text[end + len("</think>"):]
    return None if think_prefilled or "<think>" in text else text


def extract_think(text: str, think_prefilled: bool = False) -> Optional[str]:
    """Text of the first <think>...</think> block (the reasoning); None if there is none."""
    if think_prefilled and not text.lstrip().startswith("<think>"):
        text = "<think>" + text
    start = text.find("<think>")
    if start < 0:
        return None
    end = text.find("</think>", start)
    return None if end < 0 else text[start + len("<think>"):end]


def reasoning_text(text: str, scope: str = "think", think_prefilled: bool = False) -> str:
    """The chain of thought to judge: the think block, else everything before <answer>, else the whole
    response (scope='think'); or the whole response (scope='response')."""
    if scope == "response":
        return text
    think = extract_think(text, think_prefilled)
    if think is not None:
        return think
    i = text.find("<answer>")
    return text if i < 0 else text[:i]


def extract_code(text: str, language: str = "python") -> Optional[str]:
    """The last fenced code block tagged ``language`` (or untagged, or 'py'); None if there is none.

    Looks inside <answer> first when that holds a block, so code quoted in the reasoning does not win.
    """
    if not isinstance(text, str):
        return None
    ans = extract_answer_tag(text)
    for scope in ((ans, text) if ans else (text,)):
        found = None
        for tag, body in _fenced_blocks(scope):
            if tag in (language, "") or (language == "python" and tag in ("py", "py3", "python3")):
                found = body
        if found is not None:
            return found
    return None


def _fenced_blocks(text: str):
    """(tag, body) of each ```tag ... ``` block, pairing fences in order like Markdown (linear time)."""
    pos = []
    i = text.find("```")
    while i >= 0:
        pos.append(i)
        i = text.find("```", i + 3)
    for a, b in zip(pos[0::2], pos[1::2]):
        nl = text.find("\n", a + 3, b)
        if nl < 0:
            continue
        m = _TAG_RE.match(text, a + 3, nl)
        if text[m.end():nl].strip():
            continue  # not a "```tag" line
        yield m.group(0).lower(), text[nl + 1:b]


def max_nesting_depth(text: str, pairs: str = "{}()[]") -> int:
    """Deepest nesting of brackets (any kind counted together); linear scan."""
    opens = set(pairs[0::2])
    closes = set(pairs[1::2])
    depth = best = 0
    for c in text:
        if c in opens:
            depth += 1
            if depth > best:
                best = depth
        elif c in closes and depth > 0:
            depth -= 1
    return best


__all__ = ["extract_answer", "extract_answer_tag", "extract_last_boxed", "extract_think", "reasoning_text",
           "extract_code", "max_nesting_depth"]
