"""Router replay (R2) on 2 CPU processes (torchrun, gloo): under TP2 + sequence parallelism (each rank routes
its share of the sequence), expert parallelism and data parallelism, the routing recorded in one log-prob pass
and replayed after the expert bias moved gives back that pass's log-probs exactly; under PP2 the pipeline stages
replay a recording made by a world of 1 on the same weights (as R3 replays an engine's routing)."""
from __future__ import annotations

from pathlib import Path

import pytest
from harness import run_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("router_replay_worker.py")


@pytest.mark.parametrize("name,layout", [("tp2_sp", "tp=2,sp=1"), ("ep2", "ep=2"), ("dp2", "")])
def test_replay_at_layout(tmp_path, name, layout):
    got = run_worker(WORKER, ["--layout", layout], tmp_path / f"{name}.json", nproc=2)
    assert got["flipped"] > 0.2 and got["free_err"] > 1e-2  # the moved bias routes differently
    assert got["replay_err"] < 1e-5  # replay gives the recorded pass back
    a, b = got["routings"]
    if name == "tp2_sp":
        assert a == b  # both TP ranks hold the whole recording (their sequence shares gathered)
    else:
        assert a != b  # EP2 / DP2 on 2 ranks: 2 data-parallel ranks, each recorded its own rows
    assert got["recorded_nonzero"] > 0


def test_pipeline_stages_replay_a_recording_from_another_layout(tmp_path):
    ref = run_worker(WORKER, ["--make-init", str(tmp_path)], tmp_path / "ref.json")
    assert ref["flipped"] > 0.2 and ref["replay_err"] < 1e-5
    got = run_worker(WORKER, ["--layout", "pp=2", "--init", str(tmp_path)], tmp_path / "pp2.json", nproc=2)
    assert got["free_err"] > 1e-2  # the moved bias, unreplayed
    assert got["replay_err"] < 1e-5  # both stages replay their layers of the world-of-1 recording
