"""Each parallel layout on 2 CPU processes (torchrun, gloo) trains like one process.

Every run loads the same step-0 weights (written by the single-process reference run), trains 3
optimizer steps on the same global batch, and must reproduce the reference losses within 1e-4
(fp32). The TP/EP/PP runs also save a checkpoint that a single process reloads: its eval loss
must equal the 2-process eval loss (resharding TP2->TP1, EP2->EP1, PP2->PP1, PP2xVPP2->PP1).
PP2xVPP2 runs the interleaved 1F1B schedule (4 model chunks of 1 layer: the dense first layer, two
MoE layers, the last MoE layer + MTP); its frozen engine's log-probs must equal one process's (1e-5).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from harness import run_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("worker.py")


def _run(args: list[str], out: Path, nproc: int = 1) -> dict:
    return run_worker(WORKER, args, out, nproc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    ref = _run(["--make-init", str(d / "init"), "--logprobs-from", str(d / "init")], d / "ref.json")
    return d, ref


LAYOUTS = {
    "tp2_sp": "tp=2,sp=1",
    "ep2_alltoall": "ep=2,dispatcher=alltoall",
    "ep2_allgather": "ep=2,dispatcher=allgather",
    "pp2": "pp=2",
    "dp2": "",
    "tp2_ep2_etp1": "tp=2,sp=1,ep=2,etp=1",
    "pp2_vpp2": "pp=2,vpp=2",
}
RESHARD = {"tp2_sp", "ep2_alltoall", "pp2", "pp2_vpp2"}
LOGPROBS = {"pp2_vpp2"}  # also compare a frozen engine's log-probs (the reference-policy path)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(reference, name):
    d, ref = reference
    args = ["--layout", LAYOUTS[name], "--init", str(d / "init")]
    if name in RESHARD:
        args += ["--save", str(d / f"ckpt_{name}")]
    if name in LOGPROBS:
        args += ["--logprobs-from", str(d / "init")]
    got = _run(args, d / f"{name}.json", nproc=2)
    for step, (a, b) in enumerate(zip(ref["losses"], got["losses"])):
        assert abs(a - b) < 1e-4, f"{name}: step {step} loss {b} vs single-process {a}"
    assert got["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-4)
    if name in LOGPROBS:
        for key, want in ref["logprobs"].items():
            diff = max(abs(x - y) for rw, rg in zip(want, got["logprobs"][key]) for x, y in zip(rw, rg))
            assert len(got["logprobs"][key]) == len(want) and diff < 1e-5, f"{name}: log-probs {key} differ by {diff}"
    if name in RESHARD:
        # Reload the 2-process checkpoint in one process (TP2->TP1, EP2->EP1, PP2->PP1).
        one = _run(["--load-eval", str(d / f"ckpt_{name}")], d / f"{name}_reload.json")
        assert abs(one["eval"] - got["eval"]) < 1e-5, (name, one["eval"], got["eval"])
