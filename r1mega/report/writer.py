"""``write_report(run_dir, cfg=None, out=None) -> Path``: ``report.md``, ``report.json`` and ``plots/*.png``.

Callable at the end of a pipeline (rank 0) or by ``r1mega report``. ``report.json`` holds the numbers of
``report.md`` (rates as fractions in [0, 1]; the GRPO per-step rows are left out: they are in each stage's
``metrics.jsonl``). A plot that cannot be drawn is named in the report instead of failing it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from r1mega.report.collect import collect
from r1mega.report.markdown import render


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: Union[str, os.PathLike], cfg=None, out: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Write the report of ``run_dir`` (with ``cfg``: its pipeline's stages, roles and file names) into
    ``out`` (default: the run directory); returns the path of ``report.md``."""
    data = collect(run_dir, cfg)
    out = Path(out) if out is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    for name, g in data["grpo"].items():
        try:
            from r1mega.report.plots import plot_stage

            plot_stage(name, g["rows"], out / "plots" / f"{name}.png")
            plots[name] = f"plots/{name}.png"
        except Exception as e:  # a broken plot must not lose the rest of the report
            plots[name] = f"{type(e).__name__}: {e}"
    md = out / "report.md"
    _write_atomic(md, render(data, plots))
    js = {**data, "grpo": {n: {**{k: v for k, v in g.items() if k != "rows"}, "plot": plots.get(n)}
                           for n, g in data["grpo"].items()}}
    _write_atomic(out / "report.json", json.dumps(js, indent=1, default=str) + "\n")
    return md


__all__ = ["write_report"]
