#!/usr/bin/env python3
"""Thin wrapper: `python tools/convert_checkpoint.py ARGS` == `r1mega convert ARGS` (see docs/bridge.md).

Multi-rank layouts: `torchrun --nproc-per-node N tools/convert_checkpoint.py hf-to-megatron --tp N ...`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1mega.tools_convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
