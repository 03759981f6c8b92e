"""The `r1mega` command line.

Config commands (train, run, generate, eval) take a YAML file plus KEY=VALUE overrides, load and
validate the config once, then call ``<module>.main(cfg, args)``. Tool commands (convert, plan,
report, model info) hand their remaining arguments to ``<module>.main(argv)``. Target modules
are imported only when their command runs. Config problems print one line
``r1mega: config error: <where>: <message>`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import typing
from typing import Optional, Sequence

# name: (one-line help, module whose main(cfg, args) runs it)
CONFIG_COMMANDS = {
    "train": ("Train one stage (pretrain, SFT, GRPO, ...) of a config", "r1mega.train.entry"),
    "run": ("Run the config's pipeline, stage after stage", "r1mega.pipeline.runner"),
    "generate": ("Generate completions with the rollout engine", "r1mega.rollout.entry"),
    "eval": ("Evaluate a checkpoint on the config's eval tasks", "r1mega.eval.entry"),
}
# name: (one-line help, module whose main(argv) runs it)
TOOL_COMMANDS = {
    "convert": ("Convert checkpoints between Megatron and Hugging Face formats", "r1mega.tools_convert"),
    "plan": ("Plan a parallel layout and memory budget for a model and cluster", "r1mega.plan"),
    "report": ("Summarise a run directory: metrics, plots, stage results", "r1mega.report.entry"),
}
MODEL_INFO = ("Shapes and parameter counts of a preset: model info --preset NAME [--json]", "r1mega.model.info")


class NotImplementedCommand(Exception):
    def __init__(self, command: str, module: str):
        super().__init__(f"not implemented yet: {command} (module {module} is missing)")


def _target(command: str, module: str):
    """module.main, imported now; a missing module means the command is not written yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            raise NotImplementedCommand(command, module) from None
        raise  # the module exists but one of its own imports is missing
    main = getattr(mod, "main", None)
    if main is None:
        raise NotImplementedCommand(command, module + ".main")
    return main


def _status(result) -> int:
    return 0 if result is None else int(result)


# ---- config commands ---------------------------------------------------------------------------
def _split_items(items: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """[CONFIG] KEY=VALUE ...: the first item is the config file when it looks like one."""
    items = list(items)
    first = items[0] if items else None
    if first is not None and "=" not in first and (first.endswith((".yaml", ".yml")) or os.path.exists(first)):
        return first, items[1:]
    return None, items  # an item without '=' is then reported as a malformed override


def _world_size(args, default: Optional[int]) -> Optional[int]:
    if args.world_size is not None:
        return args.world_size
    env = os.environ.get("WORLD_SIZE")
    return int(env) if env else default


def _load(args, validate: bool = True, world_default: Optional[int] = 1):
    from r1mega.config import load_config

    path, overrides = _split_items(args.items)
    world = _world_size(args, world_default)
    return load_config(path, overrides, world_size=world, validate=validate), world


def _run_config_command(args) -> int:
    cfg, _ = _load(args)
    from r1mega.platform.device import select, set_cpu_threads

    select(cfg.device)
    set_cpu_threads(cfg.cpu_threads)
    if args.command == "train":
        set_cpu_threads(cfg.for_stage(cfg.select_stage(args.stage)).cpu_threads)
    elif getattr(args, "stage", None):
        cfg.stage(args.stage)
    for name in getattr(args, "only", None) or ():
        cfg.stage(name)
    command, module = args.command, CONFIG_COMMANDS[args.command][1]
    return _status(_target(command, module)(cfg, args))


def _config_show(args) -> int:
    from r1mega.config import dump_config

    cfg, _ = _load(args, validate=False)
    if args.stage:
        cfg = cfg.for_stage(args.stage)
    sys.stdout.write(dump_config(cfg))
    return 0


def _config_check(args) -> int:
    cfg, world = _load(args, world_default=None)
    stages = ", ".join(f"{s.name} ({s.kind})" for s in cfg.pipeline.stages) or "none"
    size = f"world size {world}" if world is not None else "world-size checks skipped (pass --world-size N)"
    print(f"config ok: {_split_items(args.items)[0] or '<defaults>'}; {size}; stages: {stages}")
    return 0


def _config_fields(args) -> int:
    from r1mega.config import RunConfig

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], key + ".")
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                yield key, default, f.metadata.get("help", "")

    rows = [r for r in walk(RunConfig, "") if not args.section or r[0].startswith(args.section.rstrip(".") + ".")
            or r[0] == args.section]
    if not rows:
        from r1mega.config import ConfigError

        raise ConfigError(args.section, "no such section or field")
    for key, default, help in rows:
        print(f"{key} = {default!r}\n    {help}")
    return 0


# ---- parser ------------------------------------------------------------------------------------
def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]",
                   help="YAML config file, then dotted overrides such as grpo.group_size=16")
    p.add_argument("--world-size", type=int, default=None,
                   help="ranks to validate the parallel layout for (default: $WORLD_SIZE, else 1)")


def build_parser() -> argparse.ArgumentParser:
    from r1mega import __version__

    parser = argparse.ArgumentParser(prog="r1mega", description="The DeepSeek-R1 training recipe on Megatron-Core + vLLM.")
    parser.add_argument("--version", action="version", version=f"r1mega {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name, (help, _) in CONFIG_COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        _config_args(p)
        if name == "run":
            p.add_argument("--only", "--stage", dest="only", action="append", metavar="STAGE",
                           help="run only this stage (repeatable)")
        else:
            p.add_argument("--stage", metavar="NAME", help="pipeline stage to use (train: needed when there are several)")
        p.set_defaults(handler=_run_config_command)
    for name, (help, _) in TOOL_COMMANDS.items():  # parsed by the tool itself; listed here for --help
        sub.add_parser(name, help=help, add_help=False)
    model = sub.add_parser("model", help="Model tools (model info --preset NAME [--json])")
    model_sub = model.add_subparsers(dest="model_command", title="model commands", metavar="COMMAND", required=True)
    model_sub.add_parser("info", help=MODEL_INFO[0], add_help=False)
    config = sub.add_parser("config", help="Show, check or list the fields of a resolved config")
    config_sub = config.add_subparsers(dest="config_command", title="config commands", metavar="COMMAND", required=True)
    show = config_sub.add_parser("show", help="Print the resolved config (file + overrides) as YAML")
    _config_args(show)
    show.add_argument("--stage", metavar="NAME", help="show the config as this stage sees it (its overrides applied)")
    show.set_defaults(handler=_config_show)
    check = config_sub.add_parser("check", help="Validate the config (add --world-size N to check the parallel layout)")
    _config_args(check)
    check.set_defaults(handler=_config_check)
    fields = config_sub.add_parser("fields", help="List config fields with defaults and help")
    fields.add_argument("section", nargs="?", help="a section such as grpo or a dotted field")
    fields.set_defaults(handler=_config_fields)
    return parser


def die_with_launcher() -> None:
    """A torchrun rank (``TORCHELASTIC_RUN_ID`` is set) dies with its torchrun agent, even after ``kill -9`` of
    torchrun: the agent restarts or stops its ranks itself, and without it they would train on unwatched."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from r1mega.platform.lifeline import die_with_parent

        die_with_parent()


def main(argv: Optional[Sequence[str]] = None) -> int:
    from r1mega.config.base import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    die_with_launcher()
    try:
        if argv and argv[0] in TOOL_COMMANDS:
            return _status(_target(argv[0], TOOL_COMMANDS[argv[0]][1])(argv[1:]))
        if argv[:2] == ["model", "info"]:
            return _status(_target("model info", MODEL_INFO[1])(argv[2:]))
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)  # overrides may follow options: --stage sft a.b=1
        if extra and (not hasattr(args, "items") or any(x.startswith("-") for x in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:
            args.items += extra
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.handler(args)
    except ConfigError as e:
        print(f"r1mega: config error: {e}", file=sys.stderr)
        return 2
    except NotImplementedCommand as e:
        print(f"r1mega: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("r1mega: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
