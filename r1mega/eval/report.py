"""Eval output: ``eval.json`` (settings, summary rows, per-question results), ``eval_samples.jsonl`` (every
completion) and a printed table.

Table: one row per benchmark, indented per-difficulty rows under it, and ``all`` when there are several
benchmarks; columns ``n`` (questions), ``pass@1``, ``pass@k`` (each reported k > 1), ``cons@k``, ``mean len``
(response tokens) and ``format`` (mean format reward). Rates print as percentages with one decimal, as the R1
paper reports them; ``eval.json`` keeps fractions in [0, 1]. A metric that does not apply (cons@k of code)
prints as ``-``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

FORMAT_VERSION = 1


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:.1f}"


def _num(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def table_columns(k: int, ks: Sequence[int]) -> list:
    """[(header, metric key, formatter), ...] of the table."""
    cols = [("n", "n", str), ("pass@1", "pass@1", _pct)]
    cols += [(f"pass@{x}", f"pass@{x}", _pct) for x in sorted(ks) if x != 1]
    cols += [(f"cons@{k}", f"cons@{k}", _pct), ("mean len", "mean_tokens", _num), ("format", "format_rate", _pct)]
    return cols


def format_table(summary: dict, k: int, ks: Sequence[int], title: Optional[str] = None) -> str:
    """The summary rows (``{name: metrics}`` as :func:`r1mega.eval.runner.summarize` makes them) as text."""
    cols = table_columns(k, ks)
    if any(row.get("last_number@1") is not None for row in summary.values()):  # generous, format-blind grading
        cols.append(("last number", "last_number@1", _pct))
    names = [("  " + n) if row.get("difficulty") is not None else n for n, row in summary.items()]
    header = ["benchmark"] + [c[0] for c in cols]
    body = [[name] + [fmt(row.get(key)) for _, key, fmt in cols] for name, row in zip(names, summary.values())]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = []
    if title:
        lines.append(title)
    fmt_row = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])  # noqa: E731
                                  for i, c in enumerate(r))
    lines.append(fmt_row(header))
    lines.append("  ".join("-" * w for w in widths))
    lines += [fmt_row(r) for r in body]
    lines += [f"WARNING {name}: {row['warning']}" for name, row in summary.items() if row.get("warning")]
    return "\n".join(lines)


def results_title(results) -> str:
    s = results.settings
    return (f"eval: k={results.k} samples/question, temperature {s.get('temperature')}, top-p {s.get('top_p')}, "
            f"max {s.get('max_new_tokens')} new tokens, template {s.get('template')} (rates in %)")


def results_table(results) -> str:
    """The printed table of an :class:`~r1mega.eval.runner.EvalResults`."""
    return format_table(results.summary, results.k, results.ks, results_title(results))


def print_table(results, file=None) -> None:
    print(results_table(results), file=file, flush=True)


def eval_json(results, extra: Optional[dict] = None) -> dict:
    d = {"version": FORMAT_VERSION, **(extra or {}), **results.to_dict(with_samples=False)}
    return d


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(results, path: Union[str, os.PathLike], extra: Optional[dict] = None) -> Path:
    """Write ``eval.json``: {version, <extra>, settings, summary, stats, problems}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(eval_json(results, extra), indent=1, default=str) + "\n")
    return path


def write_samples(results, path: Union[str, os.PathLike]) -> Path:
    """Write every completion, one JSON row each: problem id, benchmark, the prompt's language (when known),
    sample index and the sample."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in results.problems:
        for j, s in enumerate(r.samples):
            lang = {"lang": r.problem.metadata["lang"]} if "lang" in r.problem.metadata else {}
            lines.append(json.dumps({"id": r.problem.id, "benchmark": r.problem.benchmark, **lang, "sample": j,
                                     **s.to_dict()}, ensure_ascii=False, default=str))
    _write_atomic(path, "\n".join(lines) + ("\n" if lines else ""))
    return path


def read_json(path: Union[str, os.PathLike]) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


__all__ = ["format_table", "results_table", "print_table", "write_json", "write_samples", "read_json", "eval_json",
           "table_columns"]
