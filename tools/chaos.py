"""Chaos test of `r1mega run`: SIGKILL a random process of a shortened demo pipeline at random moments, rerun the
same command until it completes, and check that nothing was lost or read half-written.

    .venv/bin/python tools/chaos.py --seed 0 --kills 6            # the shortened demo (every stage kind, DP 2)
    .venv/bin/python tools/chaos.py --profile short --kills 2      # the smaller version tests/pipeline/test_chaos.py runs

The pipeline is ``examples/tiny/demo.yaml`` cut down (fewer stages and steps, smaller batches and evaluations;
:func:`pipeline_config`); the uninterrupted reference run is made once per configuration and kept under
``WORK/ref-<config hash>``. Each attempt starts ``r1mega run``, waits a random delay (and, half of the time, then
for the next event: a checkpoint being written, a manifest or output file changing, a new log line), SIGKILLs one
process of the run chosen at random (the scheduler, a stage rank, a reward worker, a fork server, Megatron's
checkpoint writer, ...), records where the kill landed, waits for the run to end and checks the run directory.
After ``--kills`` kills the command is rerun until it completes. Then:

* the final report's held-out table (``report.json`` evals and report.md's section) equals the reference's;
* every stage recorded complete, after every attempt, has its outputs (the files its manifest lists, its checkpoint);
* every data file a stage wrote (rejection samples, eval results and samples) equals the reference's byte for
  byte, and the GRPO metrics equal the reference's step by step: a partial file read as whole would change them;
* no process of a killed run is left behind.

Prints one line per kill and a verdict; exits 0 only when everything is identical.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "tiny" / "demo.yaml"
MARK = "R1MEGA_CHAOS_RUN"  # environment marker every process of a run inherits
TIMING_KEYS = re.compile(r"^(time(/.*)?|tokens_per_s|.*seconds)$")  # metrics that are wall-clock measurements

# Stage entries kept from the demo, with their cut-down steps and overrides (on top of the demo's own).
FULL = {
    "pretrain": {"steps": 12, "overrides": {"checkpoint": {"save_interval": 4}}},
    "r1_zero": {"steps": 4, "overrides": {"checkpoint": {"save_interval": 2}}},
    "pretrain_student": {"steps": 6, "overrides": {"checkpoint": {"save_interval": 3}}},
    "cold_start_data": {"overrides": {"rejection": {"worked_solutions": 32, "num_prompts": 16}}},
    "cold_start_sft": {"steps": 4, "overrides": {"checkpoint": {"save_interval": 2}}},
    "reward_model": {"steps": 4, "init_from": "cold_start_sft", "overrides": {"reward_model": {"num_pairs": 32, "eval_pairs": 8},
                                               "checkpoint": {"save_interval": 2}}},
    "distill": {"steps": 4, "overrides": {"data": {"train_paths": ["stage:cold_start_data/samples.jsonl"]},
                                          "distill": {"teacher": "stage:r1_zero"},
                                          "checkpoint": {"save_interval": 2}}},
    "eval_base": {}, "eval_r1_zero": {}, "eval_student": {},
}
SHORT = {
    "pretrain": {"steps": 4, "overrides": {"checkpoint": {"save_interval": 2}}},
    "r1_zero": {"steps": 3, "overrides": {"checkpoint": {"save_interval": 1}}},
    "eval_r1_zero": {},
}
PROFILES = {"full": FULL, "short": SHORT}
SECTION_KIND = {"grpo": "grpo", "rejection": "rejection_sampling", "eval": "eval", "reward_model": "reward_model",
                "distill": "distill"}
# Settings for every stage: small batches and evaluations (the demo's model, data and recipe otherwise).
COMMON = {"grpo": {"group_size": 4, "prompts_per_step": 4}, "rollout": {"max_new_tokens": 32},
          "eval": {"n_problems": 8, "k": 2, "max_new_tokens": 32},
          "rejection": {"num_prompts": 16, "samples_per_prompt": 2, "max_response_tokens": 32},
          "logging": {"tensorboard": False}}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def pipeline_config(profile: str) -> dict:
    """The demo config cut down to ``profile``'s stages, without a run_dir (the caller sets it)."""
    demo = yaml.safe_load(DEMO.read_text())
    keep = PROFILES[profile]
    cfg = _merge({k: v for k, v in demo.items() if k != "pipeline"}, COMMON)
    stages = []
    for st in demo["pipeline"]["stages"]:
        if st["name"] not in keep:
            continue
        st = _merge(st, keep[st["name"]])
        st["after"] = [a for a in st.get("after", []) if a in keep]
        stages.append(st)
    kinds = {st["kind"] for st in stages}
    for section, kind in SECTION_KIND.items():  # a section no stage reads is a config error
        if kind not in kinds:
            cfg.pop(section, None)
    cfg["pipeline"] = {"max_parallel": demo["pipeline"].get("max_parallel", 1), "stages": stages}
    return cfg


# ---------------------------------------------------------------- processes of a run (by the environment marker)

def run_processes(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if f"{MARK}={marker}".encode() in (p / "environ").read_bytes().split(b"\0"):
                out.append(int(p.name))
        except OSError:
            continue
    return sorted(out)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _proc(pid: int) -> tuple[str, int, str | None, int | None]:
    """(cmdline, parent pid, stage, rank) of ``pid``; stage and rank from its stdout, which the scheduler points at
    the stage's log (``stage.log``, ``stage.rank<r>.log``) and its children inherit."""
    cmd = _read(Path(f"/proc/{pid}/cmdline")).replace("\0", " ").strip()
    stat = _read(Path(f"/proc/{pid}/stat"))
    ppid = int(stat.rsplit(")", 1)[1].split()[1]) if ")" in stat else 0
    try:
        out = Path(os.readlink(f"/proc/{pid}/fd/1"))
    except OSError:
        return cmd, ppid, None, None
    if out.suffix != ".log" or not out.name.startswith("stage"):
        return cmd, ppid, None, None
    m = re.match(r"stage\.rank(\d+)\.log", out.name)
    return cmd, ppid, out.parent.name, int(m.group(1)) if m else 0


def describe(pid: int, top: int, run_dir: Path) -> dict:
    """Which process of the run ``pid`` is: {pid, role, stage}."""
    cmd, ppid, stage, rank = _proc(pid)
    pcmd, pppid, pstage, _ = _proc(ppid)
    if pid == top:
        role = "r1mega run (scheduler)"
    elif stage is None:
        role = ("fork server of the scheduler" if "forkserver" in cmd else
                "resource tracker of the scheduler" if "resource_tracker" in cmd else "helper: " + cmd[:60])
    elif pstage is None:  # forked by the scheduler's fork server
        role = f"stage process (rank {rank})"
    elif "resource_tracker" in cmd:
        role = f"resource tracker of rank {rank}"
    elif "spawn_main" in cmd:
        role = f"spawned helper of rank {rank} (Megatron checkpoint writer's Manager)"
    elif cmd != pcmd:
        role = f"fork server of rank {rank} (reward pool)" if "forkserver" in cmd else f"helper of rank {rank}: {cmd[:60]}"
    elif _proc(pppid)[2] is None:  # a fork of the stage process itself
        role = f"forked child of rank {rank} (Megatron's checkpoint writer)"
    else:
        role = f"reward worker of rank {rank}"
    return {"pid": pid, "role": role, "stage": stage}


def stage_state(run_dir: Path, stage: str | None) -> str:
    """What ``stage`` was doing: its manifest status, files being written, its log's last line."""
    if not stage:  # the scheduler or one of its helpers: what every running stage was doing
        running = []
        for m in sorted(run_dir.glob("*/manifest.json")):
            try:
                if json.loads(m.read_text()).get("status") == "running":
                    running.append(f"{m.parent.name} ({stage_state(run_dir, m.parent.name)})")
            except (OSError, ValueError):
                pass
        return "running stages: " + ("; ".join(running) or "none")
    d = run_dir / stage
    try:
        status = json.loads((d / "manifest.json").read_text()).get("status")
    except (OSError, ValueError):
        status = "no manifest"
    writing = sorted(str(p.relative_to(d)) for p in d.rglob("*") if ".tmp" in p.name)[:3]
    lines = [ln for ln in _read(d / "stage.log").splitlines() if ln.strip()]
    last = lines[-1].strip()[:110] if lines else "(no log yet)"
    return f"{status}" + (f"; writing {', '.join(writing)}" if writing else "") + f"; log: {last}"


# ---------------------------------------------------------------- one attempt

def snapshot(run_dir: Path) -> dict:
    """{file: (size, mtime)} of the run directory (the event watcher compares two)."""
    out = {}
    for p in run_dir.rglob("*"):
        try:
            s = p.stat()
            out[str(p)] = (s.st_size, s.st_mtime_ns)
        except OSError:
            pass
    return out


LINGER_S = 30  # a process of the run still there this long after `r1mega run` ended is reported (and killed)
STARTUP_S = 15  # seconds `r1mega run` takes to start its first stage (imports), roughly
EVENTS = ("checkpoint", "manifest", "output", "log")


def _event_seen(kind: str, before: dict, now: dict) -> bool:
    changed = [p for p, v in now.items() if before.get(p) != v]
    if kind == "checkpoint":
        return any("/.tmp_step_" in p for p in now)
    if kind == "manifest":
        return any(p.endswith(("manifest.json", "manifest.tmp")) for p in changed)
    if kind == "output":
        return any(p.endswith((".jsonl", "eval.json", ".tmp")) and not p.endswith("metrics.jsonl") for p in changed)
    return any(p.endswith(".log") for p in changed)


def attempt(cfg_path: Path, run_dir: Path, log: Path, rng: random.Random, kill_after: float | None,
            timeout: float) -> dict:
    """Start ``r1mega run``; with ``kill_after``, SIGKILL one of its processes then (or at the next event). Returns
    what happened: rc, the kill (process, stage, what it was doing), leftovers, hang."""
    marker = uuid.uuid4().hex
    env = {**os.environ, MARK: marker, "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "r1mega.cli", "run", str(cfg_path)], cwd=ROOT, env=env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    res = {"kill": None, "leftovers": [], "hung": False, "log": str(log)}
    start = time.time()
    if kill_after is not None:
        event = rng.choice(EVENTS) if rng.random() < 0.5 else None
        first = snapshot(run_dir)  # the delay counts from the first stage's start (after the scheduler's imports)
        while proc.poll() is None and not any(p.endswith(".log") and first.get(p) != v
                                              for p, v in snapshot(run_dir).items()):
            time.sleep(0.1)
        began = time.time()
        while proc.poll() is None and time.time() - began < kill_after:
            time.sleep(0.05)
        if event is not None and proc.poll() is None:
            before, t0 = snapshot(run_dir), time.time()
            while proc.poll() is None and time.time() - t0 < 60:
                time.sleep(0.02)
                if _event_seen(event, before, snapshot(run_dir)):
                    break
        pids = run_processes(marker) if proc.poll() is None else []
        if pids:
            victim = rng.choice(pids)
            who = describe(victim, proc.pid, run_dir)
            doing = stage_state(run_dir, who["stage"])
            try:
                os.kill(victim, signal.SIGKILL)
                res["kill"] = {**who, "at_s": round(time.time() - start, 1), "event": event, "doing": doing}
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=max(1.0, timeout - (time.time() - start)))
    except subprocess.TimeoutExpired:
        res["hung"] = True
    ended, deadline = time.time(), time.time() + LINGER_S
    res["after_3s"] = []  # the processes still there 3 s after the top one ended (slow to end, not left behind)
    while run_processes(marker) and time.time() < deadline and not res["hung"]:
        if not res["after_3s"] and time.time() - ended > 3:
            res["after_3s"] = [describe(p, proc.pid, run_dir)["role"] for p in run_processes(marker)]
        time.sleep(0.2)
    res["last_exit_s"] = round(time.time() - ended, 1)  # how long the run's last process took to end after the top one
    left = run_processes(marker)
    res["leftovers"] = [describe(p, proc.pid, run_dir) for p in left]
    for p in left:  # the run's own processes, by pid: a hang or a survivor is reported, then ended
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    res["rc"] = proc.returncode
    res["seconds"] = round(time.time() - start, 1)
    return res


# ---------------------------------------------------------------- checks

def _manifest(d: Path) -> dict | None:
    try:
        return json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def complete_without_outputs(run_dir: Path, cfg: dict) -> list[str]:
    """Stages recorded complete whose outputs are missing (manifest outputs, checkpoint, kind's result files)."""
    bad = []
    for st in cfg["pipeline"]["stages"]:
        d = run_dir / st["name"]
        m = _manifest(d)
        if not m or m.get("status") != "complete":
            continue
        missing = [o for o in m.get("outputs", []) if not (d / o).exists()]
        need = {"eval": ["eval.json", "eval_samples.jsonl"], "rejection_sampling": ["samples.jsonl"]}.get(st["kind"])
        if need is None:  # a training stage: a complete checkpoint
            latest = d / "checkpoints" / "latest"
            step = latest.read_text().strip() if latest.is_file() else "?"
            need = ["checkpoints/latest", f"checkpoints/{step}/r1mega_meta.json"]
        missing += [o for o in need if not (d / o).exists()]
        if missing:
            bad.append(f"{st['name']}: complete but missing {', '.join(sorted(set(missing)))}")
    return bad


def _held_out(report_md: Path) -> str:
    text = _read(report_md)
    m = re.search(r"## Held-out evaluation\n(.*?)(\n## |\Z)", text, re.S)
    return m.group(1).strip() if m else ""


def _metric_rows(path: Path) -> dict:
    rows = {}
    for ln in _read(path).splitlines():
        try:
            r = json.loads(ln)
        except ValueError:
            continue
        step = r.get("step", r.get("iteration"))
        rows.setdefault(step, []).append({k: v for k, v in r.items() if not TIMING_KEYS.search(k)})
    return rows


def _untimed(value):
    """``value`` without its wall-clock entries (keys matching TIMING_KEYS), recursively."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not TIMING_KEYS.search(str(k))}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


def compare(ref: Path, run: Path, cfg: dict) -> list[str]:
    """Differences between the reference run and the chaos run (empty: identical)."""
    diffs = []
    a, b = _read(ref / "report.json"), _read(run / "report.json")
    ea = _untimed(json.loads(a).get("evals")) if a else None
    eb = _untimed(json.loads(b).get("evals")) if b else None
    if ea != eb or not ea:
        diffs.append("report.json held-out evals differ" + ("" if ea else " (reference has none)"))
    if _held_out(ref / "report.md") != _held_out(run / "report.md"):
        diffs.append("report.md held-out table differs")
    for st in cfg["pipeline"]["stages"]:
        name, kind = st["name"], st["kind"]
        files = {"eval": ["eval_samples.jsonl"], "rejection_sampling": ["samples.jsonl"]}.get(kind, [])
        for f in files:
            if _read(ref / name / f) != _read(run / name / f) or not _read(ref / name / f):
                diffs.append(f"{name}/{f} differs from the reference")
        if kind == "eval":
            sa = json.loads(_read(ref / name / "eval.json") or "{}").get("summary")
            sb = json.loads(_read(run / name / "eval.json") or "{}").get("summary")
            if sa != sb:
                diffs.append(f"{name}/eval.json summary differs")
        if kind == "grpo":  # a step logged again after a resume: its last row is the one the report reads
            ra, rb = _metric_rows(ref / name / "metrics.jsonl"), _metric_rows(run / name / "metrics.jsonl")
            other = sorted(str(s) for s in set(ra) | set(rb) if ra.get(s, [None])[-1] != rb.get(s, [None])[-1])
            if other or not ra:
                diffs.append(f"{name}/metrics.jsonl differs from the reference at steps {', '.join(other)}")
    return diffs


# ---------------------------------------------------------------- driver

def write_config(cfg: dict, run_dir: Path, path: Path) -> None:
    c = copy.deepcopy(cfg)
    c["pipeline"]["run_dir"] = str(run_dir)
    path.write_text(yaml.safe_dump(c, sort_keys=False))


def reference(cfg: dict, work: Path, timeout: float) -> tuple[Path, float]:
    """The uninterrupted run of ``cfg``, made once and cached under WORK/ref-<hash>; (run dir, wall seconds).
    The hash covers the configuration and r1mega's source: a reference made by other code is never compared."""
    h = hashlib.sha256(yaml.safe_dump(cfg, sort_keys=True).encode())
    for src in sorted((ROOT / "r1mega").rglob("*.py")):
        h.update(str(src.relative_to(ROOT)).encode() + b"\0" + src.read_bytes())
    h = h.hexdigest()[:12]
    ref = work / f"ref-{h}"
    done = ref / "chaos_reference.json"
    if done.is_file():
        return ref / "run", json.loads(done.read_text())["seconds"]
    shutil.rmtree(ref, ignore_errors=True)
    ref.mkdir(parents=True)
    write_config(cfg, ref / "run", ref / "config.yaml")
    print(f"chaos: reference run (uninterrupted) in {ref} ...", flush=True)
    r = attempt(ref / "config.yaml", ref / "run", ref / "run.log", random.Random(0), None, timeout)
    if r["rc"] != 0 or complete_without_outputs(ref / "run", cfg):
        raise SystemExit(f"chaos: the reference run failed (rc {r['rc']}); see {ref / 'run.log'}")
    for what in r["leftovers"]:
        print(f"chaos: PROBLEM: reference run: process left running {LINGER_S} s after the run ended: {what}")
    done.write_text(json.dumps({"seconds": r["seconds"]}))
    return ref / "run", r["seconds"]


def remaining(ref: Path, run: Path, cfg: dict, ref_s: float) -> float:
    """Seconds of the reference run left to do, roughly: its wall time (less the start-up) in proportion to the
    reference stage times of the stages not complete yet."""
    secs = {st["name"]: float((_manifest(ref / st["name"]) or {}).get("seconds") or 0) for st in cfg["pipeline"]["stages"]}
    left = sum(v for k, v in secs.items() if ((_manifest(run / k) or {}).get("status")) != "complete")
    return max(2.0, (ref_s - STARTUP_S) * left / max(1e-9, sum(secs.values())))


def one_round(cfg: dict, ref: Path, ref_s: float, run: Path, kills: int, rng: random.Random, timeout: float,
              max_reruns: int, first: int) -> dict:
    """Kill-and-rerun a fresh run in ``run`` until it completes: up to ``kills`` kills, then up to ``max_reruns``
    reruns without one. {landed, findings, differences, attempts, completed}."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cfg_path = run / "config.yaml"
    write_config(cfg, run / "run", cfg_path)
    landed, findings, attempts, reruns = [], [], 0, 0
    completed = False
    while not completed:
        killing = len(landed) < kills
        if not killing:
            if reruns == max_reruns:
                findings.append(f"{run.name}: the run did not complete in {max_reruns} reruns after the last kill")
                break
            reruns += 1
        # a random moment of what is left of the run (finished stages are skipped on a rerun), spread so that the
        # k kills still to come land in about the first half of it
        left = remaining(ref, run / "run", cfg, ref_s)
        delay = rng.uniform(0.0, left / (kills - len(landed) + 1)) if killing else None
        attempts += 1
        r = attempt(cfg_path, run / "run", run / f"attempt{attempts}.log", rng, delay, timeout)
        where = f"{run.name} attempt {attempts}"
        if r["kill"]:
            k = {**r["kill"], "rc": r["rc"], "last_exit_s": r["last_exit_s"], "after_3s": r["after_3s"]}
            landed.append(k)
            print(f"chaos: kill {first + len(landed)} ({where}) at {k['at_s']} s"
                  + (f" (after a {k['event']} event)" if k["event"] else "")
                  + f": pid {k['pid']} {k['role']}" + (f" of stage {k['stage']}" if k["stage"] else "")
                  + f" -- {k['doing']}; then: exit {r['rc']}, its last process gone {r['last_exit_s']} s later"
                  + (f" (after 3 s: {', '.join(r['after_3s'])})" if r["after_3s"] else ""), flush=True)
        elif killing:
            print(f"chaos: {where} ended (exit {r['rc']}) before its kill", flush=True)
        for what in r["leftovers"]:
            findings.append(f"{where}: process left running {LINGER_S} s after the run ended: {what}")
        if r["hung"]:
            findings.append(f"{where}: the run did not end within {timeout:.0f} s ({r['log']})")
        for bad in complete_without_outputs(run / "run", cfg):
            findings.append(f"{where}: {bad}")
        if r["rc"] == 0:  # every stage complete (a kill the run survived, or none)
            completed = True
        elif not r["kill"]:
            findings.append(f"{where}: a rerun without a kill failed (exit {r['rc']}): {r['log']}")
    diffs = [f"{run.name}: {d}" for d in compare(ref, run / "run", cfg)] if completed else []
    return {"landed": landed, "findings": findings, "differences": diffs, "attempts": attempts, "completed": completed}


def chaos(seed: int, kills: int, profile: str, work: Path, timeout: float | None = None, max_reruns: int = 3) -> dict:
    """Run the chaos test; returns the result (also printed): kills, findings, identical. Rounds of fresh runs until
    ``kills`` kills landed (a run can complete before its share). An attempt that takes longer than ``timeout``
    (default: 3x the reference run + 2 min) counts as hung."""
    cfg = pipeline_config(profile)
    work.mkdir(parents=True, exist_ok=True)
    ref, ref_s = reference(cfg, work, timeout or 3600)
    timeout = timeout or 3 * ref_s + 120
    print(f"chaos: reference {ref} ({ref_s:.0f} s uninterrupted)", flush=True)
    root = work / f"chaos-{profile}-seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    landed, findings, diffs, attempts, rounds = [], [], [], 0, 0
    while len(landed) < kills and rounds < 2 * kills:
        rounds += 1
        r = one_round(cfg, ref, ref_s, root / f"round{rounds}", kills - len(landed), rng, timeout, max_reruns,
                      len(landed))
        landed += r["landed"]
        findings += r["findings"]
        diffs += r["differences"] if r["completed"] else [f"round{rounds}: the run never completed"]
        attempts += r["attempts"]
        if not r["completed"]:
            break
    torn = [f"{p.parent.name}/{p.name}: {ln.strip()[:160]}" for p in sorted(root.glob("round*/run/*/stage*.log"))
            for ln in _read(p).splitlines() if "torn last line" in ln]
    result = {"seed": seed, "profile": profile, "kills": len(landed), "rounds": rounds, "attempts": attempts,
              "landed": landed, "findings": findings, "differences": diffs, "torn_lines_dropped": torn,
              "identical": len(landed) > 0 and not diffs and not findings, "work": str(root), "reference": str(ref)}
    (root / "chaos.json").write_text(json.dumps(result, indent=1))
    print(f"chaos: {len(landed)} kills tried in {rounds} runs ({attempts} attempts); reference {ref_s:.0f} s", flush=True)
    for t in torn:
        print(f"chaos: torn line dropped on resume (allowed for append-only logs): {t}")
    for f in findings + diffs:
        print(f"chaos: PROBLEM: {f}")
    print("chaos: " + ("every run completed identical to the uninterrupted one" if result["identical"]
                       else "NOT identical"), flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "chaos", help="work dir (the reference is cached here)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds one attempt may take before it counts as hung (default: 3x the reference run + 2 min)")
    a = p.parse_args(argv)
    return 0 if chaos(a.seed, a.kills, a.profile, a.work.resolve(), a.timeout)["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
