"""Prompt sources: users' data files (and the built-in tasks, and reasoning-gym generators) as rows the
rewards can grade.

A source is one entry of ``data.sources`` (or ``data.eval_sources``), a mapping with the fields of
:class:`SourceSpec`. :func:`parse_sources` validates the mappings (no file is opened); :func:`load_rows` reads a
file source and turns every row into a :class:`PromptRow`: the question (a string or chat messages), the gold
the reward of its task type needs, and metadata. Every problem is a :class:`~r1mega.config.base.ConfigError`
naming the source (``data.sources[i]``), the file, the row number (1-based) and what the row does have.

Gold per task type (what :class:`~r1mega.rewards.RewardSample` expects):

* math / gym / general: the answer text (general: optional, a reward model scores it);
* mcq: the choice letter; ``answer`` may be the letter, the 0-based index of the choice, or the choice text;
  ``choices`` (a list in letter order, or {letter: text}) are kept in metadata and, with ``choices_in_prompt``,
  appended to the question as ``A. ...`` lines;
* code: the test spec: HumanEval-style ``test`` (code defining ``check(candidate)``) + ``entry_point``, or
  MBPP-style ``tests`` (a list of assert statements);
* gym: the reasoning-gym entry ``{question, answer, metadata}`` and the gym task (``gym_task`` field of the row,
  the entry's ``metadata.source_dataset``, or the source's ``gym_task``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from r1mega.config.base import ConfigError, check, doc

KINDS = ("file", "tasks", "gym")
LETTERS = "ABCDEFGHIJ"


@dataclass
class SourceSpec:
    kind: str = doc("file", "file (a user data file), tasks (the built-in synthetic tasks) or gym (a reasoning-gym generator).")
    path: Optional[str] = doc(None, "kind file: a .jsonl/.json/.parquet file, a directory of them, a save_to_disk directory, or (format hf) the data file(s) for datasets.load_dataset; 'stage:NAME/file' = an earlier stage's output.")
    name: Optional[str] = doc(None, "Name in metrics, prompt ids and eval benchmark names (default: the file's stem, 'tasks', or gym:TASK).")
    weight: float = doc(1.0, "Mixing weight among the sources (normalised over all of them).")
    format: str = doc("auto", "auto (from the extension / directory), jsonl, json, parquet, disk (save_to_disk) or hf (datasets.load_dataset).")
    builder: Optional[str] = doc(None, "format hf: the load_dataset builder (json, parquet, csv, ...; default from the extension).")
    data_files: Any = doc(None, "format hf: data_files for load_dataset (default: path).")
    split: Optional[str] = doc(None, "Split of a DatasetDict (save_to_disk / hf); default 'train' or the only split.")
    prompt_key: str = doc("prompt", "Field holding the question string.")
    messages_key: str = doc("messages", "Field holding chat messages [{role, content}] (used when the row has no prompt_key).")
    answer_key: str = doc("answer", "Field holding the gold answer.")
    id_key: str = doc("id", "Field holding the row id (default: NAME-ROW).")
    task_type: str = doc("math", "Task type of the rows that have no task_type_key field: math, mcq, code, gym or general.")
    task_type_key: str = doc("task_type", "Field holding a row's own task type (overrides task_type).")
    choices_key: str = doc("choices", "mcq: field holding the choices (a list in letter order, or {letter: text}).")
    choices_in_prompt: bool = doc(True, "mcq: append the choices to the question as 'A. ...' lines.")
    test_key: str = doc("test", "code: field holding HumanEval-style test code (defines check(candidate)).")
    entry_point_key: str = doc("entry_point", "code: field holding the function name HumanEval-style tests call.")
    tests_key: str = doc("tests", "code: field holding MBPP-style tests (a list of assert statements).")
    lang_key: str = doc("lang", "Field holding the question's language (default en), for the language reward.")
    gym_task_key: str = doc("gym_task", "gym: field naming the reasoning-gym task that scores the row.")
    gym_task: Optional[str] = doc(None, "kind gym: the reasoning-gym task to generate; kind file: the gym task of rows that name none.")
    size: int = doc(1000, "kind gym: problems generated (train split of the question hash).")
    tasks: list = doc([], "kind tasks: built-in task names (default data.tasks).")
    max_rows: Optional[int] = doc(None, "Use at most the first max_rows rows (None = all).")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind == "tasks":
            return "tasks"
        if self.kind == "gym":
            return f"gym:{self.gym_task}"
        return Path(str(self.path).rstrip("/")).stem or str(self.path)


@dataclass
class PromptRow:
    id: str
    prompt: Any          # the question: a string, or chat messages [{role, content}]
    gold: Any            # what the reward of task_type grades against (see the module docstring)
    task_type: str
    meta: dict = field(default_factory=dict)   # source, lang, choices (mcq), gym_task + entry (gym)

    def key(self) -> str:
        """The question as text (held-out hashing, duplicates)."""
        return self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt, sort_keys=True, ensure_ascii=False)


def parse_sources(items: Any, where: str = "data.sources") -> list[SourceSpec]:
    """The validated :class:`SourceSpec` of each mapping in ``items`` (no file is opened)."""
    from r1mega.config.rewards import TASK_TYPES
    from r1mega.data.files import FORMATS

    check(isinstance(items, list), where, f"got {items!r}, expected a list of mappings")
    known = {f.name for f in dataclasses.fields(SourceSpec)}
    out, names = [], set()
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        check(isinstance(item, dict), w, f"got {item!r}, expected a mapping (path, weight, prompt_key, ...)")
        for k in item:
            check(k in known, f"{w}.{k}", f"unknown source field; expected one of {sorted(known)}")
        s = SourceSpec(**item)
        check(s.kind in KINDS, f"{w}.kind", f"got {s.kind!r}, expected one of {KINDS}")
        check(isinstance(s.weight, (int, float)) and not isinstance(s.weight, bool) and s.weight > 0,
              f"{w}.weight", f"got {s.weight!r}, expected a positive number")
        check(s.max_rows is None or (isinstance(s.max_rows, int) and not isinstance(s.max_rows, bool) and s.max_rows > 0),
              f"{w}.max_rows", f"got {s.max_rows!r}, expected None or a positive integer")
        if s.kind == "file":
            check(isinstance(s.path, str) and s.path.strip() != "", f"{w}.path", f"got {s.path!r}, expected a file or directory path")
            check(s.format in FORMATS, f"{w}.format", f"got {s.format!r}, expected one of {FORMATS}")
            check(s.task_type in TASK_TYPES, f"{w}.task_type", f"got {s.task_type!r}, expected one of {TASK_TYPES}")
            for k in ("prompt_key", "messages_key", "answer_key", "id_key", "task_type_key", "choices_key", "test_key",
                      "entry_point_key", "tests_key", "lang_key", "gym_task_key"):
                v = getattr(s, k)
                check(isinstance(v, str) and v != "", f"{w}.{k}", f"got {v!r}, expected a field name")
        elif s.kind == "gym":
            check(isinstance(s.gym_task, str) and s.gym_task != "", f"{w}.gym_task", f"got {s.gym_task!r}, expected a reasoning-gym task name")
            check(isinstance(s.size, int) and not isinstance(s.size, bool) and s.size > 0, f"{w}.size",
                  f"got {s.size!r}, expected a positive integer")
        else:
            check(isinstance(s.tasks, list) and all(isinstance(t, str) for t in s.tasks), f"{w}.tasks",
                  f"got {s.tasks!r}, expected a list of built-in task names")
        check(s.label not in names, f"{w}.name", f"two sources are named {s.label!r}; give one a distinct name")
        names.add(s.label)
        out.append(s)
    return out


def heldout(row: PromptRow, seed: int, fraction: float) -> bool:
    """Whether ``row`` is in the held-out split: SHA-256 of (seed, question) in the first ``fraction`` of the
    hash space. Depends only on the seed and the question, not on the file's order."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(f"{seed}:{row.key()}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64 < fraction


# ------------------------------------------------------------------------------------------------ rows
def _letter(answer: Any, choices, where: str) -> str:
    table = (list(choices.keys()) if isinstance(choices, dict) else list(LETTERS[:len(choices)])) if choices else []
    texts = (list(choices.values()) if isinstance(choices, dict) else list(choices)) if choices else []
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(table):
        return table[answer]
    a = str(answer).strip()
    if a.strip("()").upper() in LETTERS and len(a.strip("()")) == 1:
        return a.strip("()").upper()
    hits = [table[i] for i, t in enumerate(texts) if str(t).strip().lower() == a.lower()]
    if len(hits) == 1:
        return hits[0]
    raise ValueError(f"{where}: mcq answer {answer!r} is neither a letter, a choice index nor one of the choices")


def _code_gold(r: dict, s: SourceSpec, where: str, prompt) -> dict:
    test, entry, tests = r.get(s.test_key), r.get(s.entry_point_key), r.get(s.tests_key)
    if isinstance(test, str) and test.strip():
        if not (isinstance(entry, str) and entry.strip()):
            raise ValueError(f"{where}: code row with '{s.test_key}' but no '{s.entry_point_key}' (the function check() calls)")
        from r1mega.rewards.humaneval import prompt_imports

        return {"test": test, "entry_point": entry, "prefix": prompt_imports(prompt) if isinstance(prompt, str) else ""}
    if isinstance(tests, str):
        tests = [tests]
    if isinstance(tests, list) and tests and all(isinstance(t, str) and t.strip() for t in tests):
        return {"tests": list(tests)}
    raise ValueError(f"{where}: code row without tests (needs '{s.test_key}' + '{s.entry_point_key}', or "
                     f"'{s.tests_key}': a list of asserts; it has {sorted(r)})")


def _question(r: dict, s: SourceSpec, where: str, template: str):
    p = r.get(s.prompt_key)
    if isinstance(p, str) and p.strip():
        return p
    m = r.get(s.messages_key)
    if isinstance(m, list) and m:
        if not all(isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str) for t in m):
            raise ValueError(f"{where}: '{s.messages_key}' must be a list of {{role, content}} strings")
        roles = [t["role"] for t in m]
        if roles[-1] != "user" or any(x not in ("system", "user", "assistant") for x in roles):
            raise ValueError(f"{where}: '{s.messages_key}' roles {roles}: expected chat turns ending with a user turn")
        if template == "hf_chat":
            return [dict(role=t["role"], content=t["content"]) for t in m]
        if roles != ["user"]:
            raise ValueError(f"{where}: '{s.messages_key}' has roles {roles}, but template {template!r} takes one "
                             "question; use data.template hf_chat, or a single user turn")
        return m[0]["content"]
    raise ValueError(f"{where}: no '{s.prompt_key}' (a question string) or '{s.messages_key}' (chat turns); the row "
                     f"has {sorted(r)} (set prompt_key / messages_key of the source)")


def to_prompt_row(r: dict, n: int, s: SourceSpec, path: str, template: str = "r1_zero") -> PromptRow:
    """Row ``n`` (1-based) of ``path`` as a :class:`PromptRow`; ValueError names the file, row and problem."""
    from r1mega.config.rewards import TASK_TYPES

    where = f"{path}: row {n}"
    question = _question(r, s, where, template)
    tt = r.get(s.task_type_key)
    tt = s.task_type if tt is None else tt
    if tt not in TASK_TYPES:
        raise ValueError(f"{where}: task_type {tt!r} is not one the rewards know ({', '.join(TASK_TYPES)})")
    answer = r.get(s.answer_key)
    if answer is None and tt in ("math", "mcq", "gym"):
        raise ValueError(f"{where}: no '{s.answer_key}' (the gold answer of a {tt} row); the row has {sorted(r)} "
                         "(set answer_key of the source)")
    lang = r.get(s.lang_key)
    meta: dict = {"source": s.label, "lang": lang if isinstance(lang, str) and lang else "en"}
    gold: Any = None if answer is None else str(answer)
    if tt == "code":
        gold = _code_gold(r, s, where, question)
    elif tt == "mcq":
        choices = r.get(s.choices_key)
        if choices is not None and not (isinstance(choices, (list, dict)) and choices):
            raise ValueError(f"{where}: '{s.choices_key}' must be a non-empty list or {{letter: text}}")
        gold = _letter(answer, choices, where)
        if choices:
            meta["choices"] = choices
            if s.choices_in_prompt and isinstance(question, str):
                items = choices.items() if isinstance(choices, dict) else zip(LETTERS, choices)
                question = question + "\n\n" + "\n".join(f"{k}. {v}" for k, v in items)
    elif tt == "gym":
        md = r.get("metadata") if isinstance(r.get("metadata"), dict) else {}
        task = r.get(s.gym_task_key) or md.get("source_dataset") or s.gym_task
        if not task:
            raise ValueError(f"{where}: gym row without a gym task ('{s.gym_task_key}', metadata.source_dataset, "
                             "or the source's gym_task)")
        meta["gym_task"] = task
        meta["entry"] = {"question": question if isinstance(question, str) else question[-1]["content"],
                         "answer": gold, "metadata": md}
    rid = r.get(s.id_key)
    return PromptRow(id=str(rid) if rid is not None else f"{s.label}-{n:06d}", prompt=question, gold=gold,
                     task_type=tt, meta=meta)


def load_rows(spec: SourceSpec, where: str, resolve_path=None, template: str = "r1_zero") -> list[PromptRow]:
    """The rows of a file source (``where``: its config name for errors, e.g. data.sources[0])."""
    from r1mega.data.files import DataFileError, read_rows

    path = resolve_path(spec.path) if resolve_path else spec.path
    try:
        raw = read_rows(path, spec.format, spec.split, spec.builder, spec.data_files)
        if spec.max_rows:
            raw = raw[:spec.max_rows]
        if not raw:
            raise ValueError(f"{path}: the dataset is empty")
        rows = [to_prompt_row(r, n, spec, path, template) for n, r in enumerate(raw, 1)]
        gym = {r.meta["gym_task"] for r in rows if r.task_type == "gym"}
        if gym:
            from r1mega.rewards.gym import gym_tasks

            unknown = sorted(gym - set(gym_tasks()))
            if unknown:
                raise ValueError(f"{path}: gym task(s) {unknown} are not reasoning-gym tasks")
    except (DataFileError, ValueError) as e:
        raise ConfigError(where, str(e)) from None
    return rows


def gym_rows(spec: SourceSpec, seed: int, where: str) -> list[PromptRow]:
    """A gym source's ``size`` problems (training split of the question hash, see
    :func:`r1mega.eval.benchmark.gym_split_problems`; held-out questions never appear)."""
    from r1mega.eval.benchmark import gym_split_problems
    from r1mega.rewards.gym import gym_tasks

    if spec.gym_task not in gym_tasks():
        raise ConfigError(f"{where}.gym_task", f"got {spec.gym_task!r}, not a reasoning-gym task")
    out = []
    for i, gp in enumerate(gym_split_problems(spec.gym_task, spec.size, seed=seed, split="train")):
        out.append(PromptRow(id=f"{spec.label}-{i:06d}", prompt=gp.prompt, gold=gp.answer, task_type="gym",
                             meta={"source": spec.label, "lang": "en", **gp.metadata}))
    if not out:
        raise ConfigError(where, f"gym task {spec.gym_task!r} generated no training-split problems")
    return out


__all__ = ["SourceSpec", "PromptRow", "parse_sources", "load_rows", "gym_rows", "to_prompt_row", "heldout", "KINDS"]
