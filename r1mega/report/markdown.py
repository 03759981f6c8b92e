"""``report.md`` from the data :func:`r1mega.report.collect.collect` gathers.

Sections: stages (status and wall time), held-out evaluation (one row per model: base, R1-Zero, R1, the
distilled student, the student trained on base samples, then any other eval stage), pass@1 per benchmark,
learning targets (PASS / FAIL / N/A with the numbers) and the GRPO training curves. Rates print as
percentages with one decimal, as the R1 paper (and ``r1mega eval``) reports them; ``-`` means not available.
"""
from __future__ import annotations

import math
import re
from typing import Optional

from r1mega.report.collect import CURVES, EXTRA_REWARDS, ROLE_LABELS


def pct(v) -> str:
    return "-" if not isinstance(v, (int, float)) or math.isnan(v) else f"{100.0 * v:.1f}"


def num(v, digits: int = 1) -> str:
    return "-" if not isinstance(v, (int, float)) or math.isnan(v) else f"{v:.{digits}f}"


def duration(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _table(header: list, rows: list, right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _k(key: str) -> int:
    m = re.search(r"@(\d+)$", key)
    return int(m.group(1)) if m else 0


def eval_order(data: dict) -> list[tuple[str, str]]:
    """[(label, stage name)]: the roles in order (also those not run), then the other eval stages."""
    roles, out = data["roles"], []
    in_run = set(data["evals"]) | set(data.get("pipeline") or ())
    # the R1 recipe's roles (all of them, run or not), or -- another pipeline -- only the roles it has
    r1 = data.get("pipeline") is None or any(roles.get(r) in in_run for r in ROLE_LABELS if r != "base")
    for role, label in ROLE_LABELS.items():
        if roles.get(role) and (r1 or roles[role] in in_run):
            out.append((label, roles[role]))
    named = {s for _, s in out}
    init = {s["name"]: s.get("init_from") for s in data.get("stages") or ()}
    # another eval: labelled with what it evaluates (its init stage, or the last part of a checkpoint path)
    out += [(_model_label(init.get(name)), name) for name in data["evals"] if name not in named]
    return out


def _sampling(settings: dict) -> tuple:
    return tuple(settings.get(k) for k in ("k", "temperature", "top_p", "max_new_tokens", "template"))


def _column_heads(shown: list) -> list:
    """A column per eval: its model label where that names one eval only, else the stage name."""
    labels = [label for label, _ in shown]
    return [label if label != "-" and labels.count(label) == 1 else name for label, name in shown]


def _model_label(init_from) -> str:
    if not init_from:
        return "-"
    return str(init_from).rstrip("/").rsplit("/", 1)[-1] or "-"


def _status_of(data: dict, name: str) -> str:
    for s in data["stages"]:
        if s["name"] == name:
            return s["status"]
    return "not in pipeline"


def render(data: dict, plots: dict) -> str:
    """The markdown text; ``plots``: {GRPO stage: path of its PNG relative to report.md, or an error text}."""
    L = [f"# r1mega report: {data['name']}", "",
         f"Run directory `{data['run_dir']}`, generated {data['generated']}. Rates in %.", ""]

    # stages
    L += ["## Stages", ""]
    rows = []
    for s in data["stages"]:
        status = s["status"] if not s["note"] else f"{s['status']} ({s['note']})"
        if s["status"] == "failed":
            status = "**FAILED**" + (f": {s['note']}" if s["note"] else "")
        rows.append([s["name"], s["kind"] or "-", s["init_from"] or "-", status, duration(s["seconds"])])
    L += _table(["stage", "kind", "init from", "status", "wall time"], rows, right_from=4)
    L += ["", f"Total wall time of the completed stages: {duration(data['total_seconds'])}.", ""]

    # evals
    L += ["## Held-out evaluation", ""]
    evals = data["evals"]
    if not evals:
        L += ["No eval results yet.", ""]
    first = next(iter(evals.values()), None)
    if first:
        st = first["settings"]
        others = [(name, e["settings"]) for name, e in evals.items() if _sampling(e["settings"]) != _sampling(st)]
        L += [f"k = {st.get('k')} samples per question, temperature {st.get('temperature')}, top-p {st.get('top_p')}, "
              f"at most {st.get('max_new_tokens')} new tokens, template {st.get('template')}" +
              "".join(f" ({name}: k = {o.get('k')}, temperature {o.get('temperature')}, top-p {o.get('top_p')}, at "
                      f"most {o.get('max_new_tokens')} new tokens, template {o.get('template')})" for name, o in others) +
              ". pass@1 and cons@k over "
              "all benchmarks; format: mean format reward; language: share of the chain of thought's words in the "
              "target language, over the chains of thought that have a word" +
              ("; no-word CoT: share of chains of thought with no word at all (only numbers or math), which have no "
               "language" if any(e["overall"].get("no_word_cot") for e in evals.values()) else "") + ("; last number: the last number anywhere in the reply equals the answer (format "
                                    "ignored: how a base model that never uses the tags is scored generously)"
                                    if any(e["overall"].get("last_number") is not None for e in evals.values())
                                    else "") + ".", ""]
    keys = sorted({k for e in evals.values() for k in e["overall"] if k.startswith("pass@") and k != "pass@1"}, key=_k)
    cons = sorted({k for e in evals.values() for k in e["overall"] if k.startswith("cons@")}, key=_k)
    loose = any(e["overall"].get("last_number") is not None for e in evals.values())
    wordless = any(e["overall"].get("no_word_cot") for e in evals.values())
    header = ["model", "stage", "n", "pass@1", *keys, *cons, "format", "language"] + \
        (["no-word CoT"] if wordless else []) + ["mean len"] + (["last number"] if loose else [])
    rows = []
    order = eval_order(data)
    for label, name in order:
        e = evals.get(name)
        if e is None:
            rows.append([label, name, _status_of(data, name)] + ["-"] * (len(header) - 3))
            continue
        o = e["overall"]
        rows.append([label, name, o.get("n", "-"), pct(o.get("pass@1")), *[pct(o.get(k)) for k in keys],
                     *[pct(o.get(k)) for k in cons], pct(o.get("format")), pct(o.get("language"))] +
                    ([pct(o.get("no_word_cot"))] if wordless else []) + [num(o.get("mean_tokens"))] +
                    ([pct(o.get("last_number"))] if loose else []))
    if evals or order:
        L += _table(header, rows, right_from=2) + [""]
    benches = list(dict.fromkeys(b for e in evals.values() for b in e["benchmarks"]))
    if len(benches) > 1:
        shown = [(label, name) for label, name in order if name in evals]
        L += ["pass@1 per benchmark:", ""]
        heads = _column_heads(shown)
        L += _table(["benchmark"] + heads,
                    [[b] + [pct(evals[name]["benchmarks"].get(b)) for _, name in shown] for b in benches]) + [""]
        if any(evals[name].get("benchmark_language") for _, name in shown):
            zh = "; `_zh`: the same problems asked in Chinese" if any(b.endswith("_zh") for b in benches) else ""
            L += ["Language consistency per benchmark (share of the chain of thought in the language the question "
                  f"was asked in{zh}):", ""]
            L += _table(["benchmark"] + heads,
                        [[b] + [pct((evals[name].get("benchmark_language") or {}).get(b)) for _, name in shown]
                         for b in benches]) + [""]

    # a few responses of each evaluated model
    shown = [(label, name) for label, name in order if evals.get(name, {}).get("examples")]
    if shown:
        L += ["## Sample responses", "", "The first sample of the first questions of each evaluation.", ""]
        for label, name in shown:
            L += [f"### {name}" + (f" ({label})" if label != "-" else ""), ""]
            for ex in evals[name]["examples"]:
                verdict = "correct" if ex.get("correct") else "wrong"
                fmt = ex.get("format")
                L += [f"`{ex.get('id')}` ({verdict}, format {num(100 * fmt, 0) if fmt is not None else '-'}):", "",
                      "```", (ex.get("text") or "").strip()[:600], "```", ""]

    # checks
    if data["checks"]:
        L += ["## Learning targets", ""]
        for c in data["checks"]:
            L.append(f"- **{c['status']}** {c['name']}: {c['detail']}")
        L += [""]

    # GRPO
    L += ["## GRPO training curves", ""]
    grpo_stages = [s["name"] for s in data["stages"] if s["kind"] == "grpo" or s["name"] in data["grpo"]]
    if not grpo_stages:
        L += ["No GRPO stage.", ""]
    for name in grpo_stages:
        g = data["grpo"].get(name)
        L += [f"### {name}", ""]
        if g is None:
            L += [f"No metrics logged ({_status_of(data, name)}).", ""]
            continue
        L += [f"{g['steps']} step{'s' if g['steps'] != 1 else ''} logged (last step {g['last_step']})."]
        p = plots.get(name)
        if p and p.endswith(".png"):
            L += ["", f"![{name}]({p})"]
        elif p:
            L += ["", f"(plot not written: {p})"]
        L += [""]
        rows = []
        for key in (*CURVES, *EXTRA_REWARDS):
            m = g["metrics"].get(key)
            if m:
                d = 1 if key == "response/length_mean" else 3
                rows.append([key, num(m["first"], d), num(m["last"], d), num(m["mean"], d)])
        L += _table(["metric", "first step", "last step", "mean"], rows) + [""]
    return "\n".join(L).rstrip() + "\n"


__all__ = ["render", "pct", "num", "duration", "eval_order"]
