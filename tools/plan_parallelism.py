#!/usr/bin/env python3
"""Thin wrapper: `python tools/plan_parallelism.py ARGS` == `r1mega plan ARGS` (see docs/planner.md)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1mega.plan import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
