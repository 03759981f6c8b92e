"""`r1mega report`: a hand-written run directory (manifests, GRPO metrics.jsonl, eval.json) -> report.md,
report.json and PNG curves with exactly the numbers put in; stages not run, interrupted or failed; the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from r1mega import cli
from r1mega.config import load_config
from r1mega.config.base import ConfigError
from r1mega.report import write_report

STAGES = [
    {"name": "pretrain", "kind": "pretrain", "steps": 2},
    {"name": "eval_base", "kind": "eval", "init_from": "pretrain"},
    {"name": "r1_zero", "kind": "grpo", "init_from": "pretrain", "steps": 3},
    {"name": "eval_r1_zero", "kind": "eval", "init_from": "r1_zero"},
    {"name": "reasoning_rl", "kind": "grpo", "init_from": "pretrain", "steps": 4},
    {"name": "all_scenario_rl", "kind": "grpo", "init_from": "reasoning_rl", "steps": 2},
    {"name": "eval_r1", "kind": "eval", "init_from": "reasoning_rl"},
    {"name": "eval_student", "kind": "eval", "init_from": "pretrain"},
    {"name": "eval_student_base", "kind": "eval", "init_from": "pretrain"},
    {"name": "eval_extra", "kind": "eval", "init_from": "pretrain"},
]
ENGLISH = "<think>add three and one to get four</think><answer>4</answer>"
CHINESE = "<think>我们把三和一加起来得到四</think><answer>4</answer>"


def _manifest(d: Path, **fields) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps(fields))


def _row(p1, p4, cons, fmt, tokens, n=4, difficulty=None) -> dict:
    return {"benchmark": "x", "difficulty": difficulty, "n": n, "samples": 4 * n, "pass@1": p1, "pass@4": p4,
            "cons@4": cons, "mean_score": p1, "mean_tokens": tokens, "format_rate": fmt}


def _eval(d: Path, arith: dict, word: dict, all_: dict, texts=()) -> None:
    _manifest(d, stage=d.name, kind="eval", status="complete", seconds=12.5, init_from="x")
    summary = {"arith": arith, "arith/d1": {**arith, "difficulty": 1}, "word": word, "all": all_}
    (d / "eval.json").write_text(json.dumps({
        "version": 1, "stage": d.name, "settings": {"k": 4, "ks": [1, 4], "temperature": 0.6, "top_p": 0.95,
                                                     "max_new_tokens": 64, "template": "r1_zero"},
        "summary": summary, "stats": {"wall_seconds": 3.0}, "problems": []}))
    if texts:
        (d / "eval_samples.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))


def _metrics(d: Path, rows: list, torn: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows) + ('{"step": 9, "reward/to' if torn else "")
    (d / "metrics.jsonl").write_text(text)


@pytest.fixture
def run(tmp_path):
    """A run directory with a config: some stages complete, one interrupted, one failed, one not run."""
    run_dir = tmp_path / "run"
    _manifest(run_dir / "pretrain", stage="pretrain", kind="pretrain", status="complete", seconds=125.0)
    _eval(run_dir / "eval_base", _row(0.25, 0.5, 0.25, 0.5, 20.0), _row(0.15, 0.3, 0.1, 0.4, 30.0),
          _row(0.2, 0.4, 0.175, 0.45, 25.0, n=8))
    _manifest(run_dir / "r1_zero", stage="r1_zero", kind="grpo", status="complete", seconds=3725.0)
    step = lambda s, r, a, n: {"step": s, "time": 1.0, "reward/total": r, "accuracy": a,  # noqa: E731
                               "response/length_mean": n, "reward/format": r / 2}
    # step 2 logged twice (a resumed stage): the later row wins; a torn last line is skipped
    _metrics(run_dir / "r1_zero", [step(1, 0.5, 0.25, 40.0), step(2, 0.0, 0.0, 1.0), step(2, 0.75, 0.5, 30.0),
                                   step(3, 1.0, 0.75, 20.0)], torn=True)
    _eval(run_dir / "eval_r1_zero", _row(0.5, 0.75, 0.5, 0.8, 30.0), _row(0.4, 0.6, 0.4, 0.8, 31.0),
          _row(0.45, 0.675, 0.45, 0.8, 30.5, n=8), texts=[ENGLISH, CHINESE])
    _manifest(run_dir / "reasoning_rl", stage="reasoning_rl", kind="grpo", status="running", seconds=None)
    _metrics(run_dir / "reasoning_rl", [step(1, 0.5, 0.5, 10.0)])
    _eval(run_dir / "eval_r1", _row(0.6, 0.8, 0.6, 0.95, 25.0), _row(0.5, 0.7, 0.5, 0.85, 26.0),
          _row(0.55, 0.75, 0.55, 0.9, 25.5, n=8), texts=[ENGLISH, ENGLISH])
    _eval(run_dir / "eval_student", _row(0.3, 0.5, 0.3, 0.7, 22.0), _row(0.2, 0.4, 0.2, 0.7, 22.0),
          _row(0.25, 0.45, 0.25, 0.7, 22.0, n=8))
    _manifest(run_dir / "eval_student_base", stage="eval_student_base", kind="eval", status="failed",
              error="RuntimeError: out of memory")
    _eval(run_dir / "eval_extra", _row(0.1, 0.2, 0.1, 0.1, 5.0), _row(0.1, 0.2, 0.1, 0.1, 5.0),
          _row(0.1, 0.2, 0.1, 0.1, 5.0, n=8))
    cfg_path = tmp_path / "pipe.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "synthetic", "pipeline": {"run_dir": str(run_dir), "stages": STAGES}}))
    return run_dir, cfg_path


def _is_png(p: Path) -> bool:
    return p.stat().st_size > 100 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_numbers_status_and_plots(run):
    run_dir, cfg_path = run
    md_path = write_report(run_dir, load_config(str(cfg_path)))
    assert md_path == run_dir / "report.md"
    md = md_path.read_text()
    data = json.loads((run_dir / "report.json").read_text())

    # stages: status and wall time (complete stages only count in the total)
    assert "| pretrain | pretrain | - | complete | 2 min 05 s |" in md
    assert "| r1_zero | grpo | pretrain | complete | 1 h 02 min |" in md
    assert "| reasoning_rl | grpo | pretrain | incomplete (" in md
    assert "| all_scenario_rl | grpo | reasoning_rl | not run | - |" in md
    assert "| eval_student_base | eval | pretrain | **FAILED**: RuntimeError: out of memory | - |" in md
    st = {s["name"]: s for s in data["stages"]}
    assert st["all_scenario_rl"]["status"] == "not run" and st["eval_student_base"]["status"] == "failed"
    assert data["total_seconds"] == 125.0 + 3725.0 + 5 * 12.5
    assert "Total wall time of the completed stages: 1 h 05 min." in md

    # eval table: the "all" row, roles in order, the extra eval stage last; language from the samples
    assert "| model | stage | n | pass@1 | pass@4 | cons@4 | format | language | mean len |" in md
    assert "| base | eval_base | 8 | 20.0 | 40.0 | 17.5 | 45.0 | - | 25.0 |" in md
    assert "| R1-Zero | eval_r1_zero | 8 | 45.0 | 67.5 | 45.0 | 80.0 | 50.0 | 30.5 |" in md
    assert "| R1 | eval_r1 | 8 | 55.0 | 75.0 | 55.0 | 90.0 | 100.0 | 25.5 |" in md
    assert "| student (distilled) | eval_student | 8 | 25.0 | 45.0 | 25.0 | 70.0 | - | 22.0 |" in md
    assert "| student (base samples) | eval_student_base | failed | - |" in md
    assert "| pretrain | eval_extra | 8 | 10.0 |" in md
    assert md.index("| base |") < md.index("| R1-Zero |") < md.index("| R1 |") < md.index("| pretrain | eval_extra")
    assert "| arith | 25.0 | 50.0 | 60.0 | 30.0 | 10.0 |" in md  # pass@1 per benchmark
    o = data["evals"]["eval_r1"]["overall"]
    assert (o["pass@1"], o["pass@4"], o["cons@4"], o["format"], o["language"], o["n"]) == (0.55, 0.75, 0.55, 0.9, 1.0, 8)
    assert data["evals"]["eval_r1_zero"]["overall"]["language"] == 0.5
    assert data["evals"]["eval_base"]["benchmarks"] == {"arith": 0.25, "word": 0.15}

    # learning targets, with the numbers
    checks = {c["name"]: c for c in data["checks"]}
    zero = checks["R1-Zero pass@1 >= base pass@1 + 20 points"]
    assert zero["status"] == "PASS" and zero["values"]["gain_points"] == pytest.approx(25.0)
    assert "- **PASS** R1-Zero pass@1 >= base pass@1 + 20 points: R1-Zero 45.0% vs base 20.0% (+25.0 points)" in md
    r1 = checks["R1 pass@1 >= R1-Zero pass@1, with higher format and language scores"]
    assert r1["status"] == "PASS"
    assert r1["detail"] == ("pass@1 R1 55.0% vs R1-Zero 45.0%; format R1 90.0% vs R1-Zero 80.0%; "
                            "language R1 100.0% vs R1-Zero 50.0%")
    student = checks["distilled student pass@1 > student trained on base samples"]
    assert student["status"] == "N/A" and "student (base samples) (eval_student_base)" in student["detail"]
    assert "- **N/A** distilled student pass@1 > student trained on base samples: no eval results for" in md

    # GRPO curves: deduplicated steps, first/last/mean, PNGs
    g = data["grpo"]["r1_zero"]
    assert g["steps"] == 3 and g["last_step"] == 3 and g["plot"] == "plots/r1_zero.png"
    assert g["metrics"]["reward/total"] == {"first": 0.5, "last": 1.0, "mean": 0.75}
    assert g["metrics"]["response/length_mean"] == {"first": 40.0, "last": 20.0, "mean": 30.0}
    assert "| reward/total | 0.500 | 1.000 | 0.750 |" in md and "| response/length_mean | 40.0 | 20.0 | 30.0 |" in md
    assert "![r1_zero](plots/r1_zero.png)" in md
    assert "### all_scenario_rl" in md and "No metrics logged (not run)." in md
    assert data["grpo"]["reasoning_rl"]["steps"] == 1
    for name in ("r1_zero", "reasoning_rl"):
        assert _is_png(run_dir / "plots" / f"{name}.png")
    assert not (run_dir / "plots" / "all_scenario_rl.png").exists()


def test_failing_targets_and_role_mapping(run, tmp_path):
    run_dir, cfg_path = run
    # map the base role onto eval_r1 (55%): R1-Zero (45%) is then 10 points below it
    cfg = load_config(str(cfg_path), ["pipeline.report.base=eval_r1", "pipeline.report.r1=eval_extra",
                                      "pipeline.report.student_base=eval_extra"])
    out = tmp_path / "elsewhere"
    md = write_report(run_dir, cfg, out).read_text()
    assert "- **FAIL** R1-Zero pass@1 >= base pass@1 + 20 points: R1-Zero 45.0% vs base 55.0% (-10.0 points)" in md
    assert ("- **FAIL** R1 pass@1 >= R1-Zero pass@1, with higher format and language scores: pass@1 R1 10.0% vs "
            "R1-Zero 45.0%; format R1 10.0% vs R1-Zero 80.0% (not higher); language not available (not checked)") in md
    assert "- **PASS** distilled student pass@1 > student trained on base samples: distilled 25.0% vs " \
           "base-sample student 10.0% (+15.0 points)" in md
    assert "| base | eval_r1 | 8 | 55.0 |" in md
    # a dropped role: its target cannot be checked
    md = write_report(run_dir, load_config(str(cfg_path), ["pipeline.report.student_base=null"]), out).read_text()
    assert "- **N/A** distilled student pass@1 > student trained on base samples: no eval results for " \
           "student (base samples) (no stage mapped)" in md and "| student (base samples) |" not in md
    assert (out / "report.json").exists() and _is_png(out / "plots" / "r1_zero.png")
    assert not (run_dir / "report.md").exists()


def test_stale_stage_is_flagged(run):
    """A complete stage whose config changed since it ran (the runner would refuse to reuse it)."""
    run_dir, cfg_path = run
    m = json.loads((run_dir / "pretrain" / "manifest.json").read_text())
    (run_dir / "pretrain" / "manifest.json").write_text(json.dumps({**m, "config_hash": "0123456789abcdef"}))
    md = write_report(run_dir, load_config(str(cfg_path))).read_text()
    assert "| pretrain | pretrain | - | complete (stale: its config changed since it ran) | 2 min 05 s |" in md


def test_role_config_errors(run):
    _, cfg_path = run
    with pytest.raises(ConfigError, match=r"pipeline.report.bsae: unknown role; did you mean 'base'\?"):
        load_config(str(cfg_path), ["pipeline.report.bsae=eval_r1"])
    with pytest.raises(ConfigError, match=r"pipeline.report.r1: no stage named 'eval_r2'; did you mean 'eval_r1'\?"):
        load_config(str(cfg_path), ["pipeline.report.r1=eval_r2"])


def test_run_dir_without_config(run):
    """From a bare run directory: the stage directories found, in start order, with the default roles."""
    run_dir, _ = run
    (run_dir / "notes").mkdir()  # not a stage
    md = write_report(run_dir).read_text()
    data = json.loads((run_dir / "report.json").read_text())
    names = [s["name"] for s in data["stages"]]
    assert "notes" not in names and "all_scenario_rl" not in names and "eval_r1" in names
    assert "| R1 | eval_r1 | 8 | 55.0 | 75.0 | 55.0 | 90.0 | 100.0 | 25.5 |" in md
    assert data["grpo"]["r1_zero"]["metrics"]["accuracy"]["last"] == 0.75


def test_empty_and_partial_run(tmp_path):
    """Nothing evaluated yet: the report still comes out, every target N/A."""
    run_dir = tmp_path / "r"
    _manifest(run_dir / "pretrain", stage="pretrain", kind="pretrain", status="running", started="2024-01-01T00:00:00")
    data_md = write_report(run_dir).read_text()
    assert "No eval results yet." in data_md and "No GRPO stage." in data_md
    assert data_md.count("- **N/A**") == 3
    assert "| base | eval_base | not in pipeline |" in data_md


def test_cli(run, tmp_path, capsys):
    run_dir, cfg_path = run
    assert cli.main(["report", str(cfg_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "PASS: R1-Zero pass@1 >= base pass@1 + 20 points: R1-Zero 45.0% vs base 20.0% (+25.0 points)" in out
    assert out.rstrip().endswith(f"report: {tmp_path / 'o' / 'report.md'}")
    assert _is_png(tmp_path / "o" / "plots" / "r1_zero.png")
    assert cli.main(["report", str(run_dir)]) == 0 and (run_dir / "report.md").exists()
    # overrides apply to the config (here: another run directory, which does not exist)
    assert cli.main(["report", str(cfg_path), f"pipeline.run_dir={tmp_path / 'nope'}"]) == 2
    assert capsys.readouterr().err == f"r1mega report: run directory {tmp_path / 'nope'} does not exist " \
                                      "(no stage of this config has run yet)\n"


def test_cli_bad_paths(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"r1mega report: {tmp_path / 'missing'}: no such run directory or config file\n"
    assert cli.main(["report", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("r1mega report: config error: ")
    assert cli.main(["report", str(tmp_path), "name=x"]) == 2
    assert "need a CONFIG, not a run directory" in capsys.readouterr().err
    assert cli.main(["report"]) == 2
    assert "usage: r1mega report" in capsys.readouterr().err


def test_format_tied_at_the_ceiling_passes_and_says_so(run):
    """Both at 100% format cannot be "higher": the check passes but its detail says the gain is not shown."""
    run_dir, cfg_path = run
    _eval(run_dir / "eval_r1_zero", _row(0.5, 0.75, 0.5, 1.0, 30.0), _row(0.4, 0.6, 0.4, 1.0, 31.0),
          _row(0.45, 0.675, 0.45, 1.0, 30.5, n=8), texts=[ENGLISH, CHINESE])
    _eval(run_dir / "eval_r1", _row(0.6, 0.8, 0.6, 1.0, 25.0), _row(0.5, 0.7, 0.5, 1.0, 26.0),
          _row(0.55, 0.75, 0.55, 1.0, 25.5, n=8), texts=[ENGLISH, ENGLISH])
    md = write_report(run_dir, load_config(str(cfg_path))).read_text()
    assert ("- **PASS** R1 pass@1 >= R1-Zero pass@1, with higher format and language scores: pass@1 R1 55.0% vs "
            "R1-Zero 45.0%; format R1 100.0% vs R1-Zero 100.0% (both at the 100% ceiling: not shown higher); "
            "language R1 100.0% vs R1-Zero 50.0%") in md


def test_language_is_scored_against_the_language_each_question_was_asked_in(tmp_path):
    from r1mega.report.collect import eval_entry, language_scores

    en = "<think> Step 1: 7-3=4. Step 2: 4*2=8. </think> <answer> 8 </answer>"
    zh = "<think> 第1步：7-3=4。第2步：4*2=8。 </think> <answer> 8 </answer>"
    half = "<think> Step 1: 7-3=4. 第2步：4*2=8。 </think> <answer> 8 </answer>"  # Step | 第 步: 1 Latin, 2 Han
    rows = [("arith", "en", en), ("arith", "en", half), ("arith_zh", "zh", en), ("arith_zh", "zh", zh),
            ("arith_zh", "zh", half), ("old", None, zh),  # a row without 'lang': prompt_default (en)
            ("arith", "en", "<think> 7-3=4. 4*2=8 </think> <answer> 8 </answer>")]  # no word: no language, not 0%
    path = tmp_path / "eval_samples.jsonl"
    path.write_text("".join(json.dumps({"id": i, "benchmark": b, **({"lang": lang} if lang else {}), "text": t},
                                       ensure_ascii=False) + "\n" for i, (b, lang, t) in enumerate(rows)))
    overall, by_bench, no_word = language_scores(path, "r1_zero")
    assert no_word == pytest.approx(1 / 7)
    assert by_bench == {"arith": pytest.approx((1 + 1 / 3) / 2), "arith_zh": pytest.approx((0 + 1 + 2 / 3) / 3),
                        "old": 0.0}
    assert overall == pytest.approx((1 + 1 / 3 + 0 + 1 + 2 / 3 + 0) / 6)
    entry = eval_entry({"summary": {"arith": _row(0.5, 0.5, 0.5, 1.0, 20.0), "all": _row(0.5, 0.5, 0.5, 1.0, 20.0)},
                        "settings": {"template": "r1_zero"}}, path)
    assert entry["overall"]["language"] == pytest.approx(overall)
    assert entry["benchmark_language"]["arith_zh"] == pytest.approx(5 / 9)


def test_the_report_shows_language_per_benchmark(tmp_path):
    run_dir = tmp_path / "run"
    en = "<think> Step 1: 7-3=4. </think> <answer> 4 </answer>"
    zh = "<think> 第1步：7-3=4。 </think> <answer> 4 </answer>"
    for stage, zh_answers in (("eval_base", [en, en]), ("eval_r1", [zh, en])):  # Chinese questions: 0% vs 50%
        d = run_dir / stage
        _eval(d, _row(0.5, 0.5, 0.5, 1.0, 20.0), _row(0.5, 0.5, 0.5, 1.0, 20.0), _row(0.5, 0.5, 0.5, 1.0, 20.0, n=8))
        summary = json.loads((d / "eval.json").read_text())
        summary["summary"]["arith_zh"] = summary["summary"]["word"]
        (d / "eval.json").write_text(json.dumps(summary))
        rows = [("arith", "en", en), ("arith", "en", zh)] + [("arith_zh", "zh", t) for t in zh_answers]
        (d / "eval_samples.jsonl").write_text("".join(
            json.dumps({"id": i, "benchmark": b, "lang": lang, "text": t}, ensure_ascii=False) + "\n"
            for i, (b, lang, t) in enumerate(rows)))
    cfg_path = tmp_path / "pipe.yaml"
    stages = [{"name": "pretrain", "kind": "pretrain", "steps": 2},
              {"name": "eval_base", "kind": "eval", "init_from": "pretrain"},
              {"name": "eval_r1", "kind": "eval", "init_from": "pretrain"}]
    cfg_path.write_text(yaml.safe_dump({"name": "zh", "pipeline": {"run_dir": str(run_dir), "stages": stages}}))
    md = write_report(run_dir, load_config(str(cfg_path))).read_text()
    assert ("Language consistency per benchmark (share of the chain of thought in the language the question was "
            "asked in; `_zh`: the same problems asked in Chinese):") in md
    assert "| arith | 50.0 | 50.0 |" in md and "| arith_zh | 0.0 | 50.0 |" in md


def test_a_user_pipeline_gets_base_vs_trained_and_samples(tmp_path):
    """GRPO of an imported model (eval_base, grpo, eval_grpo): no R1 roles or targets that cannot apply, the
    generous last-number column, and a few sample responses of each evaluated model."""
    from r1mega.config import load_config

    run_dir = tmp_path / "r"
    cfg = load_config(None, [f"pipeline.run_dir={run_dir}", "pipeline.stages=[{name: eval_base, kind: eval}, "
                             "{name: grpo, kind: grpo, steps: 2}, {name: eval_grpo, kind: eval, init_from: grpo}]"])
    for name, p1, loose, text in (("eval_base", 0.0, 0.3, "14 + 13 = 27"), ("eval_grpo", 0.5, 0.6,
                                                                           "<think> 14+13=27 </think> <answer>27</answer>")):
        d = run_dir / name
        _manifest(d, stage=name, kind="eval", status="complete", init_from=None if name == "eval_base" else "grpo",
                  pipeline=["eval_base", "grpo", "eval_grpo"])
        summary = {"file:heldout": {"n": 2, "difficulty": None, "pass@1": p1, "cons@2": p1, "format_rate": p1,
                                    "mean_tokens": 10.0, "last_number@1": loose}}
        (d / "eval.json").write_text(json.dumps({"summary": summary, "settings": {"k": 2, "template": "hf_chat"}}))
        (d / "eval_samples.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "benchmark": "file:heldout",
                                                                  "text": text, "correct": p1 > 0, "format": p1}) + "\n"
                                                      for i in range(2)))
    md = write_report(run_dir, cfg).read_text()
    assert "R1-Zero" not in md and "Learning targets" not in md and "not in pipeline" not in md
    assert "| base | eval_base | 2 | 0.0 | 0.0 | 0.0 |" in md and "| 30.0 |" in md.split("eval_base")[2]
    assert "| grpo | eval_grpo | 2 | 50.0 |" in md and "last number" in md  # labelled with the model it evaluates
    # chains of thought made only of numbers have no language: not scored 0%, counted as no-word instead
    assert "| grpo | eval_grpo | 2 | 50.0 | 50.0 | 50.0 | - | 100.0 | 10.0 | 60.0 |" in md and "no-word CoT" in md
    assert "### eval_grpo" in md and "<answer>27</answer>" in md and "`q1` (correct, format 50)" in md
    # `r1mega report RUN_DIR` (no config): the pipeline recorded in the manifests, no R1 roles either
    bare = write_report(run_dir, out=tmp_path / "bare").read_text()
    assert "R1-Zero" not in bare and "Learning targets" not in bare and "| grpo | eval_grpo | 2 | 50.0 |" in bare


def test_a_corrupt_line_in_metrics_or_samples_names_file_and_line(tmp_path):
    """Only a torn *last* line of metrics.jsonl is dropped (a killed run); a bad line elsewhere, or in the eval
    samples (written whole), is an error naming the file and line, not a silently missing step or sample."""
    from r1mega.data.jsonl import JsonlError
    from r1mega.report.collect import example_samples, language_scores, read_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "accuracy": 0.5}\n{"step": 2, "accu\n{"step": 3, "accuracy": 0.75}\n')
    with pytest.raises(JsonlError, match=rf"^{metrics}:2: invalid JSON"):
        read_metrics(metrics)
    samples = tmp_path / "eval_samples.jsonl"
    samples.write_text(json.dumps({"id": 0, "text": "<think>a</think> 1"}) + "\n{\"id\": 1, \"te\n")
    with pytest.raises(JsonlError, match=rf"^{samples}:2: invalid JSON"):
        example_samples(samples)
    with pytest.raises(JsonlError, match=rf"^{samples}:2: invalid JSON"):
        language_scores(samples, "r1_zero")
