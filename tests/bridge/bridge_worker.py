"""Bridge checks at one parallel layout (run under torchrun; the reference is made in the test process).

    make_ref(DIR) (world of 1, called by the test): weights -> DIR/ckpt (Megatron), DIR/hf (HF), DIR/ref.json
    bridge_worker.py --layout tp=2,sp=1 --ref DIR --out OUT.json
        loads DIR/ckpt with Megatron's own resharding, then checks: export to every rank ==
        the single-rank export (torch.equal); export to rank 0 in small buckets == the same;
        import of DIR/hf into this layout == the resharded checkpoint; log-probs == reference.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bridge_helpers import randomize, sequences, write_hf_dir  # noqa: E402

from r1mega.bridge import export_hf_weights, hf_state_dict, load_hf_weights  # noqa: E402
from r1mega.bridge.local import modules_of  # noqa: E402
from r1mega.config.parallel import ParallelConfig  # noqa: E402
from r1mega.model.presets import get_preset  # noqa: E402
from r1mega.train.batching import lm_batch  # noqa: E402
from r1mega.train.checkpoint import CheckpointManager  # noqa: E402
from r1mega.train.engine import TrainEngine  # noqa: E402

KEYS = {"tp": "tensor_parallel", "pp": "pipeline_parallel", "ep": "expert_parallel", "etp": "expert_tensor_parallel",
        "sp": "sequence_parallel", "vpp": "virtual_pipeline"}


def parse_layout(s: str) -> ParallelConfig:
    kw = {KEYS[k]: bool(int(v)) if k == "sp" else int(v) for k, v in (i.split("=") for i in filter(None, s.split(",")))}
    return ParallelConfig(**kw)


MODEL = get_preset("tiny", vocab_size=500)
BATCH = lm_batch(sequences(500, n=4, length=32))


def make_ref(d: Path) -> None:
    engine = TrainEngine(MODEL, ParallelConfig(), None, mtp=True)
    randomize(engine)
    CheckpointManager(d / "ckpt").save(engine, 0)
    write_hf_dir(hf_state_dict(engine, MODEL, ParallelConfig(), include_mtp=True), MODEL, d / "hf")
    (d / "ref.json").write_text(json.dumps({"logprobs": engine.logprobs(BATCH).tolist()}))


def check_layout(layout: ParallelConfig, d: Path) -> dict:
    engine = TrainEngine(MODEL, layout, None, mtp=True)
    CheckpointManager(d / "ckpt").load(engine, load_optimizer=False)
    ref = load_file(str(d / "hf" / "model.safetensors"))
    res = {}
    sd = hf_state_dict(engine, MODEL, layout, include_mtp=True)
    res["all_ranks_diff"] = sorted(set(ref) ^ set(sd)) + [k for k in ref if k in sd and not torch.equal(ref[k], sd[k])]
    limit = 1 << 16
    buckets = list(export_hf_weights(engine, MODEL, layout, bucket_bytes=limit, include_mtp=True, target=0))
    got = {n: t for b in buckets for n, t in b}
    if dist.get_rank() == 0:
        res["target_diff"] = sorted(set(ref) ^ set(got)) + [k for k in ref if k in got and not torch.equal(ref[k], got[k])]
        res["oversized_buckets"] = sum(1 for b in buckets if len(b) > 1 and sum(t.numel() * t.element_size() for _, t in b) > limit)
        res["n_buckets"] = len(buckets)
    else:
        res["non_target_buckets"] = len(buckets)
    # import: every local shard from the HF files must equal what Megatron's resharding loaded
    live = {n: t for m in modules_of(engine) for n, t in m.state_dict(keep_vars=True).items()
            if torch.is_tensor(t) and not n.endswith("_extra_state")}
    before = {n: t.detach().clone() for n, t in live.items()}
    for t in live.values():
        t.data.zero_()
    load_hf_weights(engine, MODEL, layout, d / "hf")
    res["import_diff"] = [n for n, t in live.items() if not torch.equal(t, before[n])]
    lp = engine.logprobs(BATCH)
    ref_lp = torch.tensor(json.loads((d / "ref.json").read_text())["logprobs"])
    res["logprob_max_diff"] = (lp - ref_lp)[BATCH["loss_mask"].bool()].abs().max().item()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", default="")
    ap.add_argument("--ref")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = check_layout(parse_layout(a.layout), Path(a.ref))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, res)
    if dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps(everyone))


if __name__ == "__main__":
    main()
    from r1mega.platform.distributed import destroy

    destroy(barrier=True)  # exiting with live gloo groups can abort
