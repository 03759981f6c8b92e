"""Logit distillation on 2 CPU processes (torchrun, gloo) trains like one process: a TP2+SP MoE
teacher and dense student (vocab-parallel KL, padded vocabulary, teacher checkpoint resharded
TP1 -> TP2) and DP2 reproduce the single-process distill/loss, KD and grad norms."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("distill_worker.py")
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args: list[str], out: Path, nproc: int = 1) -> dict:
    cmd = ([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable])
    proc = subprocess.run(cmd + [str(WORKER), *args, "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill_parity")
    return d, _run(["--make-init", str(d / "init")], d / "ref.json")


@pytest.mark.parametrize("name,layout", [("tp2_sp", "tp=2,sp=1"), ("dp2", "")])
def test_distill_layout_matches_single_process(reference, name, layout):
    d, ref = reference
    assert ref["kd"][0] > 0
    got = _run(["--layout", layout, "--init", str(d / "init")], d / f"{name}.json", nproc=2)
    assert got["kl_shard_err"] < 1e-5
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-4)
    assert got["kd"] == pytest.approx(ref["kd"], abs=1e-4)
    assert got["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-4)
