"""The `r1mega` command line: help, config show/check/fields, errors, dispatch to lazily imported modules."""
import subprocess
import sys
import types

import pytest
import yaml

from r1mega import cli
from r1mega.config import RunConfig

COMMANDS = ("train", "run", "generate", "eval", "convert", "plan", "report", "model", "config")


def r1mega(*args):
    return subprocess.run([sys.executable, "-m", "r1mega.cli", *args], capture_output=True, text=True, timeout=60)


def test_help_lists_subcommands_with_descriptions():
    out = r1mega("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        line = next(l for l in out.stdout.splitlines() if l.strip().startswith(name + " "))
        assert len(line.split()) > 2, line  # a one-line description follows the name


def test_config_error_is_one_line_exit_2_no_traceback():
    out = r1mega("config", "check", "grpo.grup_size=16")
    assert out.returncode == 2
    assert out.stderr == "r1mega: config error: grpo.grup_size: unknown key; did you mean 'group_size'?\n"


def test_config_show_prints_resolved_yaml(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("grpo:\n  group_size: 8\n")
    assert cli.main(["config", "show", str(path), "rollout.max_new_tokens=64", "optimizer.lr=1e-5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["grpo"]["group_size"] == 8 and shown["rollout"]["max_new_tokens"] == 64
    assert shown["optimizer"]["lr"] == 1e-5 and shown["rollout"]["stop"] == ["</answer>"]


def test_config_show_stage_view(capsys):
    stages = "pipeline.stages=[{name: a, kind: sft, steps: 1, overrides: {optimizer: {lr: 0.01}}}]"
    assert cli.main(["config", "show", stages, "--stage", "a"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optimizer"]["lr"] == 0.01


def test_config_check_ok(capsys):
    assert cli.main(["config", "check", "--world-size", "2"]) == 0
    assert capsys.readouterr().out == "config ok: <defaults>; world size 2; stages: none\n"


def test_config_check_world_size_error(capsys):
    assert cli.main(["config", "check", "parallel.data_parallel=2", "--world-size", "3"]) == 2
    assert capsys.readouterr().err == "r1mega: config error: parallel.data_parallel: world size 3 != TP*PP*CP*DP = 1*1*1*2 = 2\n"


def test_override_without_equals_is_a_config_error(capsys):
    assert cli.main(["config", "show", "grpo.group_size", "16"]) == 2
    assert capsys.readouterr().err.startswith("r1mega: config error: override 'grpo.group_size': expected KEY=VALUE")


def test_config_fields_lists_help(capsys):
    assert cli.main(["config", "fields", "rollout.stop"]) == 0
    assert capsys.readouterr().out == "rollout.stop = ['</answer>']\n    Strings that end a completion.\n"


def test_every_field_has_a_one_line_help(capsys):
    assert cli.main(["config", "fields"]) == 0
    lines = capsys.readouterr().out.splitlines()
    helps = lines[1::2]
    assert len(lines) > 100 and all(h.startswith("    ") and len(h.strip()) > 3 for h in helps)


def fake_module(monkeypatch, name):
    calls = []
    mod = types.ModuleType(name)
    mod.main = lambda *a: calls.append(a) or 0
    monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_train_dispatches_with_validated_config(monkeypatch, tmp_path):
    calls = fake_module(monkeypatch, "r1mega.train.entry")
    monkeypatch.setenv("WORLD_SIZE", "1")
    stages = "pipeline.stages=[{name: pre, kind: pretrain, steps: 2}, {name: sft, kind: sft, steps: 1}]"
    assert cli.main(["train", stages, "--stage", "sft", "optimizer.lr=0.001"]) == 0
    (cfg, args), = calls
    assert isinstance(cfg, RunConfig) and cfg.optimizer.lr == 0.001 and args.stage == "sft"


def test_train_needs_a_stage_when_there_are_several(monkeypatch, capsys):
    fake_module(monkeypatch, "r1mega.train.entry")
    stages = "pipeline.stages=[{name: pre, kind: pretrain, steps: 2}, {name: sft, kind: sft, steps: 1}]"
    assert cli.main(["train", stages]) == 2
    assert capsys.readouterr().err == "r1mega: config error: pipeline.stages: pick a stage with --stage (stages: pre, sft)\n"


def test_unknown_stage_suggests(monkeypatch, capsys):
    fake_module(monkeypatch, "r1mega.pipeline.runner")
    assert cli.main(["run", "pipeline.stages=[{name: sft, kind: sft, steps: 1}]", "--only", "sfft"]) == 2
    assert capsys.readouterr().err == "r1mega: config error: pipeline.stages: no stage named 'sfft'; did you mean 'sft'?\n"


@pytest.mark.parametrize("command,module", [("run", "r1mega.pipeline.runner"), ("generate", "r1mega.rollout.entry"),
                                            ("eval", "r1mega.eval.entry")])
def test_config_commands_dispatch(monkeypatch, command, module):
    calls = fake_module(monkeypatch, module)
    assert cli.main([command, "name=x"]) == 0
    assert calls[0][0].name == "x" and calls[0][1].command == command


@pytest.mark.parametrize("argv,module,passed", [
    (["convert", "--to", "hf", "x"], "r1mega.tools_convert", ["--to", "hf", "x"]),
    (["plan", "--help"], "r1mega.plan", ["--help"]),
    (["report", "runs/demo"], "r1mega.report.entry", ["runs/demo"]),
    (["model", "info", "--preset", "tiny", "--json"], "r1mega.model.info", ["--preset", "tiny", "--json"]),
])
def test_tool_commands_pass_argv_through(monkeypatch, argv, module, passed):
    calls = fake_module(monkeypatch, module)
    assert cli.main(argv) == 0
    assert calls == [(passed,)]


def test_missing_target_module_is_not_implemented(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "r1mega.report.entry", None)  # import fails as if the file did not exist
    assert cli.main(["report", "runs/x"]) == 2
    assert capsys.readouterr().err.startswith("r1mega: not implemented yet: report")


def test_missing_config_target_is_not_implemented(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "r1mega.train.entry", None)
    assert cli.main(["train", "pipeline.stages=[{name: a, kind: sft, steps: 1}]"]) == 2
    assert capsys.readouterr().err.startswith("r1mega: not implemented yet: train")


def test_exit_status_of_target_is_returned(monkeypatch):
    mod = types.ModuleType("r1mega.plan")
    mod.main = lambda argv: 3
    monkeypatch.setitem(sys.modules, "r1mega.plan", mod)
    assert cli.main(["plan"]) == 3


def test_train_without_stages(monkeypatch, capsys):
    fake_module(monkeypatch, "r1mega.train.entry")
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err.startswith("r1mega: config error: pipeline.stages: no stages defined; add one")
