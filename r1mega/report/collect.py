"""Gather what a run directory holds into one plain dict (the content of ``report.json``).

Sources, per stage directory ``<run dir>/<stage>`` (or the stage's ``output_dir``):

* ``manifest.json`` (:mod:`r1mega.pipeline.manifest`): kind, status, init_from, wall time (``seconds``);
* ``metrics.jsonl`` (:class:`r1mega.train.logger.MetricLogger`) of GRPO stages: one row per step; a step logged
  twice (a resumed stage) keeps its last row, and a torn last line (a killed run) is dropped with a warning; a
  bad line anywhere else is an error naming the file and line (:mod:`r1mega.data.jsonl`), as in the samples;
* ``eval.json`` (:mod:`r1mega.eval.report`) of eval stages: the summary rows, and ``eval_samples.jsonl`` next
  to it for the language score when the summary has none.

With a config the stages are the pipeline's, in order, and a stage without a directory is "not run"; without
one they are the subdirectories holding a manifest, an ``eval.json`` or a ``metrics.jsonl``, in start order.
Rates stay fractions in [0, 1], as in ``eval.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

from r1mega.config.pipeline import REPORT_ROLES

FORMAT_VERSION = 1
ROLE_LABELS = {"base": "base", "r1_zero": "R1-Zero", "r1": "R1", "student": "student (distilled)",
               "student_base": "student (base samples)"}
# GRPO metrics plotted and summarised: key in metrics.jsonl -> label
CURVES = {"reward/total": "reward", "accuracy": "accuracy", "response/length_mean": "response length"}
EXTRA_REWARDS = ("reward/format", "reward/language")  # drawn on the reward panel when logged


# ---- stages ------------------------------------------------------------------------------------
def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _status(m: Optional[dict], d: Path) -> tuple[str, Optional[str]]:
    """(status, note): complete | failed | incomplete | started | not run."""
    if m is None:
        if d.is_dir() and any(d.iterdir()):
            return "started", "files but no manifest.json"
        return "not run", None
    s = m.get("status")
    if s == "complete":
        return "complete", None
    if s in ("failed", "error"):
        return "failed", str(m.get("error") or "") or None
    return "incomplete", f"manifest status {s!r}: running, interrupted or crashed; a rerun resumes it"


def _stage_entries(run_dir: Path, cfg) -> list[dict]:
    """[{name, kind, init_from, dir, cfg}] in pipeline order (config) or start order (directory scan)."""
    if cfg is not None:
        return [{"name": st.name, "kind": st.kind, "init_from": st.init_from, "dir": Path(cfg.stage_dir(st)),
                 "stage": st} for st in cfg.pipeline.stages]
    found = []
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        m = _read_json(d / "manifest.json") or {}
        if m or (d / "eval.json").exists() or (d / "metrics.jsonl").exists():
            found.append((m.get("started") or "~", d.name, {"name": d.name, "kind": m.get("kind"),
                                                           "init_from": m.get("init_from"), "dir": d, "stage": None}))
    return [e for _, _, e in sorted(found, key=lambda t: (t[0], t[1]))]


def _recorded_pipeline(entries: list) -> Optional[list]:
    for e in reversed(entries):  # the latest started stage: its run's pipeline
        names = (_read_json(e["dir"] / "manifest.json") or {}).get("pipeline")
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
    return None


def _seconds(m: Optional[dict]) -> Optional[float]:
    if not m:
        return None
    if isinstance(m.get("seconds"), (int, float)):
        return float(m["seconds"])
    return None


def _stale(cfg, stage, m: Optional[dict]) -> bool:
    """A complete stage whose config changed since (the runner would refuse to reuse it)."""
    if cfg is None or stage is None or not m or m.get("status") != "complete" or not m.get("config_hash"):
        return False
    from r1mega.pipeline.manifest import config_hash

    return config_hash(cfg.for_stage(stage).to_dict(), dataclasses.asdict(stage)) != m["config_hash"]


# ---- GRPO metrics ------------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl, one per step (the last row of a step logged twice wins), by step."""
    from r1mega.data.jsonl import iter_jsonl

    rows: dict[int, dict] = {}
    if not path.is_file():
        return []
    for row in iter_jsonl(path, torn_tail=True):  # a torn last row (a killed run) is dropped; a bad row elsewhere raises
        if isinstance(row.get("step"), (int, float)):
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))
            and math.isfinite(float(r[key]))]


def grpo_summary(rows: list[dict]) -> dict:
    """{steps, last_step, metrics: {key: {first, last, mean}}} over the curves' keys present."""
    out = {"steps": len(rows), "last_step": int(rows[-1]["step"]) if rows else None, "metrics": {}}
    for key in (*CURVES, *EXTRA_REWARDS):
        s = _series(rows, key)
        if s:
            vals = [v for _, v in s]
            out["metrics"][key] = {"first": vals[0], "last": vals[-1], "mean": sum(vals) / len(vals)}
    return out


def _metrics_path(cfg, stage, d: Path) -> Path:
    if cfg is not None and stage is not None:
        p = cfg.for_stage(stage).logging.jsonl_path
        if p:
            return Path(p)
    return d / "metrics.jsonl"


# ---- evals -------------------------------------------------------------------------------------
def overall_row(summary: dict) -> Optional[dict]:
    """The row over all benchmarks: ``all`` when there are several, else the only benchmark's row."""
    if not isinstance(summary, dict) or not summary:
        return None
    if isinstance(summary.get("all"), dict):
        return summary["all"]
    tops = [r for r in summary.values() if isinstance(r, dict) and r.get("difficulty") is None]
    return tops[0] if len(tops) == 1 else None


def language_scores(samples_path: Path, template: Optional[str], rewards_cfg=None,
                    think_prefilled: Optional[bool] = None) -> tuple[Optional[float], dict, Optional[float]]:
    """Language consistency (R1 stage 2) of the eval samples' chains of thought, computed here (eval grading
    leaves the language reward out): ``(overall, {benchmark: mean}, no_word)``. A score is the share of the
    chain of thought's words in the target language, averaged over the chains of thought that have a word;
    one with no word at all (only numbers or math: ``14 + 13 = 27``) has no language and is counted in
    ``no_word`` (its share of all samples) instead (the training reward gives it
    ``rewards.language.empty_value``). A mean is None where no chain of thought had a word; ``(None, {}, None)``
    without samples. With target 'prompt' each sample is scored against its question's language (the row's
    ``lang``). ``think_prefilled``: as the eval's renderer derived it (eval.json settings; None for older files:
    from the built-in template's name)."""
    if not samples_path.exists():
        return None, {}, None
    from r1mega.config.rewards import LanguageRewardConfig
    from r1mega.data.templates import PREFILLS_THINK
    from r1mega.rewards.extract import reasoning_text
    from r1mega.rewards.language import for_prompt, unit_counts

    lcfg = getattr(rewards_cfg, "language", None) or LanguageRewardConfig()
    prefilled = template in PREFILLS_THINK if think_prefilled is None else think_prefilled
    sums: dict = {}
    samples = no_word = 0
    from r1mega.data.jsonl import iter_jsonl

    for row in iter_jsonl(samples_path):  # written whole (atomically): a bad line is an error naming it
        text, lang, bench = row.get("text"), row.get("lang"), row.get("benchmark")
        if not isinstance(text, str):
            continue
        samples += 1
        score = 0.0  # an unscorable sample counts as 0, as a failed reward does
        try:
            cfg = for_prompt(lcfg, lang)
            target, other = unit_counts(reasoning_text(text, cfg.scope, prefilled), cfg)
            if target + other == 0:
                no_word += 1
                continue
            score = target / (target + other)
        except Exception:  # noqa: BLE001
            pass
        for key in ("",) + ((bench,) if isinstance(bench, str) else ()):
            t, n = sums.get(key, (0.0, 0))
            sums[key] = (t + score, n + 1)
    if not samples:
        return None, {}, None
    overall = sums.pop("", None)
    return ((overall[0] / overall[1] if overall else None), {b: t / n for b, (t, n) in sums.items()},
            no_word / samples)


def eval_entry(data: dict, samples_path: Optional[Path], rewards_cfg=None) -> dict:
    """{settings, overall: {n, pass@1, pass@K.., cons@K, format, language, no_word_cot, mean_tokens, last_number},
    benchmarks: {name: pass@1}}."""
    summary = data.get("summary") or {}
    row = overall_row(summary) or {}
    overall = {k: v for k, v in row.items() if k == "n" or k.startswith(("pass@", "cons@"))}
    overall["format"] = row.get("format_rate")
    overall["mean_tokens"] = row.get("mean_tokens")
    overall["last_number"] = row.get("last_number@1")
    lang = row.get("language_rate", row.get("language"))
    source = "eval.json" if lang is not None else None
    by_bench: dict = {}
    no_word = None
    if lang is None and samples_path is not None:
        settings = data.get("settings") or {}
        lang, by_bench, no_word = language_scores(samples_path, settings.get("template"), rewards_cfg,
                                                  settings.get("think_prefilled"))
        source = samples_path.name if no_word is not None else None
    overall["language"] = lang
    overall["no_word_cot"] = no_word
    benchmarks = {name: r.get("pass@1") for name, r in summary.items()
                  if isinstance(r, dict) and r.get("difficulty") is None and name != "all"}
    return {"settings": data.get("settings") or {}, "overall": overall, "benchmarks": benchmarks,
            "benchmark_language": by_bench, "language_source": source, "examples": example_samples(samples_path),
            "wall_seconds": (data.get("stats") or {}).get("wall_seconds")}


def example_samples(samples_path: Optional[Path], n: int = 3) -> list:
    """The first sample of the first ``n`` questions of an eval (``[{id, text, correct, format}]``)."""
    out, seen = [], set()
    if samples_path is None or not samples_path.exists():
        return out
    from r1mega.data.jsonl import iter_jsonl

    for row in iter_jsonl(samples_path):
        if row.get("id") in seen or not isinstance(row.get("text"), str):
            continue
        seen.add(row.get("id"))
        out.append({k: row.get(k) for k in ("id", "text", "correct", "format")})
        if len(out) == n:
            break
    return out


# ---- learning targets --------------------------------------------------------------------------
def _p1(evals: dict, roles: dict, role: str) -> Optional[float]:
    e = evals.get(roles.get(role) or "")
    return None if e is None else e["overall"].get("pass@1")


def _missing(roles: dict, evals: dict, *need: str) -> Optional[str]:
    gone = [f"{ROLE_LABELS[r]} ({roles.get(r) or 'no stage mapped'})" for r in need
            if _p1(evals, roles, r) is None]
    return f"no eval results for {', '.join(gone)}" if gone else None


def learning_checks(evals: dict, roles: dict, present: Optional[set] = None) -> list[dict]:
    """The R1 recipe's learning targets: [{name, status PASS|FAIL|N/A, detail, values}]; with ``present`` (the
    pipeline's stage names) only the targets for which the pipeline has at least one of the stages compared
    (another pipeline, e.g. GRPO of an imported model, gets none)."""
    checks = []
    needs = {"R1-Zero pass@1": ("base", "r1_zero"), "R1 pass@1": ("r1_zero", "r1"),
             "distilled student": ("student", "student_base")}
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731

    name = "R1-Zero pass@1 >= base pass@1 + 20 points"
    why = _missing(roles, evals, "base", "r1_zero")
    if why:
        checks.append({"name": name, "status": "N/A", "detail": why, "values": {}})
    else:
        b, z = _p1(evals, roles, "base"), _p1(evals, roles, "r1_zero")
        gain = 100 * (z - b)
        checks.append({"name": name, "status": "PASS" if gain >= 20 - 1e-9 else "FAIL",
                       "detail": f"R1-Zero {pct(z)} vs base {pct(b)} ({gain:+.1f} points)",
                       "values": {"base": b, "r1_zero": z, "gain_points": gain}})

    name = "R1 pass@1 >= R1-Zero pass@1, with higher format and language scores"
    why = _missing(roles, evals, "r1_zero", "r1")
    if why:
        checks.append({"name": name, "status": "N/A", "detail": why, "values": {}})
    else:
        z, r = evals[roles["r1_zero"]]["overall"], evals[roles["r1"]]["overall"]
        parts = [f"pass@1 R1 {pct(r['pass@1'])} vs R1-Zero {pct(z['pass@1'])}"]
        ok = r["pass@1"] >= z["pass@1"] - 1e-12
        values = {"r1_pass@1": r["pass@1"], "r1_zero_pass@1": z["pass@1"]}
        for key in ("format", "language"):
            a, b = r.get(key), z.get(key)
            values[f"r1_{key}"], values[f"r1_zero_{key}"] = a, b
            if a is None or b is None:
                parts.append(f"{key} not available (not checked)")
                continue
            # "higher": strictly, except that both at the ceiling (100%) cannot be higher and pass
            ceiling = a >= 1 - 5e-4 and b >= 1 - 5e-4
            better = a > b + 1e-12 or ceiling
            ok = ok and better
            note = " (both at the 100% ceiling: not shown higher)" if ceiling else ("" if better else " (not higher)")
            parts.append(f"{key} R1 {pct(a)} vs R1-Zero {pct(b)}" + note)
        checks.append({"name": name, "status": "PASS" if ok else "FAIL", "detail": "; ".join(parts), "values": values})

    name = "distilled student pass@1 > student trained on base samples"
    why = _missing(roles, evals, "student", "student_base")
    if why:
        checks.append({"name": name, "status": "N/A", "detail": why, "values": {}})
    else:
        s, sb = _p1(evals, roles, "student"), _p1(evals, roles, "student_base")
        checks.append({"name": name, "status": "PASS" if s > sb + 1e-12 else "FAIL",
                       "detail": f"distilled {pct(s)} vs base-sample student {pct(sb)} ({100 * (s - sb):+.1f} points)",
                       "values": {"student": s, "student_base": sb}})
    if present is not None:
        keep = [any(roles.get(r) in present for r in roles_) for roles_ in needs.values()]
        if not any(keep[1:]) and not (keep[0] and roles.get("r1_zero") in present):
            return []  # not an R1 pipeline: its only shared role would be 'base'
        checks = [c for c, k in zip(checks, keep) if k]
    return checks


# ---- everything --------------------------------------------------------------------------------
def collect(run_dir, cfg=None) -> dict:
    """The report's data (see the module docstring). Raises FileNotFoundError for a missing run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist"
                                + ("" if cfg is None else " (no stage of this config has run yet)"))
    stages, evals, grpo = [], {}, {}
    entries = _stage_entries(run_dir, cfg)
    for e in entries:
        d, st = e["dir"], e["stage"]
        m = _read_json(d / "manifest.json")
        status, note = _status(m, d)
        kind = e["kind"] or (m or {}).get("kind")
        if status == "complete" and _stale(cfg, st, m):
            note = "stale: its config changed since it ran"
        stages.append({"name": e["name"], "kind": kind, "init_from": e["init_from"] or (m or {}).get("init_from"),
                       "status": status, "note": note, "seconds": _seconds(m) if status == "complete" else None,
                       "started": (m or {}).get("started"), "updated": (m or {}).get("updated")})
        scfg = cfg.for_stage(st) if cfg is not None and st is not None else None
        out_name = scfg.eval.output if scfg is not None else "eval.json"
        if kind == "eval" or (d / out_name).exists():
            data = _read_json(d / out_name)
            if data is not None and isinstance(data.get("summary"), dict):
                samples = d / (Path(out_name).stem + "_samples.jsonl")
                evals[e["name"]] = eval_entry(data, samples, scfg.rewards if scfg is not None else None)
        if kind == "grpo" or (kind is None and (d / "metrics.jsonl").exists()):
            rows = read_metrics(_metrics_path(cfg, st, d))
            if rows:
                grpo[e["name"]] = {**grpo_summary(rows), "rows": rows}
    roles = cfg.pipeline.report_roles() if cfg is not None else dict(REPORT_ROLES)
    # without a config: the pipeline a stage's manifest recorded (None for older runs: every R1 role and target)
    names = cfg.pipeline.names() if cfg is not None else _recorded_pipeline(entries)
    done = [s["seconds"] for s in stages if s["seconds"] is not None]
    return {"version": FORMAT_VERSION, "name": getattr(cfg, "name", None) or run_dir.name,
            "run_dir": str(run_dir), "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "stages": stages, "total_seconds": sum(done) if done else None,
            "pipeline": names,
            "roles": roles, "evals": evals, "grpo": grpo,
            "checks": learning_checks(evals, roles, set(names) if names is not None else None)}


__all__ = ["collect", "example_samples", "read_metrics", "grpo_summary", "overall_row", "eval_entry", "learning_checks",
           "language_scores", "ROLE_LABELS", "CURVES", "FORMAT_VERSION"]
