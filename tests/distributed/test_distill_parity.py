"""Logit distillation on 2 CPU processes (torchrun, gloo) trains like one process: a TP2+SP MoE
teacher and dense student (vocab-parallel KL, padded vocabulary, teacher checkpoint resharded
TP1 -> TP2) and DP2 reproduce the single-process distill/loss, KD and grad norms."""
from __future__ import annotations

from pathlib import Path

import pytest
from harness import run_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("distill_worker.py")


def _run(args: list[str], out: Path, nproc: int = 1) -> dict:
    return run_worker(WORKER, args, out, nproc)


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
