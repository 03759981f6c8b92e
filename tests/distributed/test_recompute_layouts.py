"""Full activation recompute with router replay on 2 CPU processes (torchrun, gloo) under pipeline parallelism:
with 1F1B (several microbatches' ids queued at once) and the interleaved schedule (two model chunks a rank),
the recomputed forwards replay each microbatch's experts, so the step's gradients equal the step without
recompute. A stage of dense layers only (DeepSeek's first layers) has no router to replay and takes part as usual."""
from __future__ import annotations

from pathlib import Path

import pytest
from harness import run_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("recompute_worker.py")


@pytest.mark.parametrize("name,layout", [("pp2", "pp=2"), ("pp2_vpp2", "pp=2,vpp=2"),
                                         ("pp2_dense_stage", "pp=2,first=1,last=3")])  # stage 0: the dense layer only
def test_recompute_replays_under_pipelining(tmp_path, name, layout):
    ranks = run_worker(WORKER, ["--layout", layout], tmp_path / f"{name}.json", nproc=2)
    for r in ranks:
        print(f"\n{name}: max |d grad| full vs no recompute {r['grad_diff']:.2e}, router calls {r['router_calls']}")
        assert r["router_calls"][1] == 2 * r["router_calls"][0]  # every router ran again in the backward
        assert r["grad_diff"] < 1e-6 and r["queued_after"] == 0
    assert [r["router_calls"][0] for r in ranks] == ([0, 24] if "dense" in name else [8, 16])
