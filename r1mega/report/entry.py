"""`r1mega report [CONFIG [KEY=VALUE ...] | RUN_DIR] [--out DIR]`: write a run's report.

With a CONFIG (YAML file, plus dotted overrides such as ``pipeline.run_dir=...``) the report covers the
pipeline's stages in order (those not run yet are listed as such), uses ``pipeline.report`` to name the
evals (base, R1-Zero, R1, student, ...) and the stages' own file names. With a RUN_DIR it covers the stage
directories found there, with the default role names. Writes ``report.md``, ``report.json`` and
``plots/*.png`` into ``--out`` (default: the run directory), prints the learning-target lines and the path.
Exit status 0, or 2 with one ``r1mega report: ...`` line for a bad path or config.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1mega report", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("target", metavar="CONFIG|RUN_DIR", help="pipeline config (YAML) or run directory")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (with a CONFIG)")
    p.add_argument("--out", metavar="DIR", help="where report.md, report.json and plots/ go (default: the run dir)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from r1mega.config.base import ConfigError

    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help (0) or a usage error (2): the return code
        return int(e.code or 0)
    target = args.target
    try:
        if os.path.isdir(target):
            if args.overrides:
                raise ConfigError("report", f"overrides {' '.join(args.overrides)} need a CONFIG, not a run directory")
            cfg, run_dir = None, target
        elif os.path.isfile(target) or target.endswith((".yaml", ".yml")):
            from r1mega.config import load_config

            cfg = load_config(target, args.overrides, world_size=None)
            run_dir = cfg.run_dir
        else:
            print(f"r1mega report: {target}: no such run directory or config file", file=sys.stderr)
            return 2
        from r1mega.report.writer import write_report

        path = write_report(run_dir, cfg, args.out)
    except ConfigError as e:
        print(f"r1mega report: config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"r1mega report: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    import json

    data = json.loads(path.with_name("report.json").read_text(encoding="utf-8"))
    for c in data["checks"]:
        print(f"{c['status']}: {c['name']}: {c['detail']}")
    print(f"report: {path}")
    return 0


__all__ = ["main", "build_parser"]
