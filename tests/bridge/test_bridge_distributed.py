"""The bridge under TP2 / EP2 / PP2 (2 CPU processes, torchrun, gloo) and the converter CLI.

* the reference (this process, one rank) writes the tiny model (vocab 500 -> padded 512, MTP on) as a Megatron
  checkpoint and as its single-rank HF export;
* at TP2 and EP2 (Megatron's own resharding loads the checkpoint) the export — to every rank, and
  to rank 0 in small buckets — is bit-identical to the single-rank export; importing the HF files
  fills every shard exactly as the resharded checkpoint; log-probs equal the reference's;
* converter round trip: HF -> Megatron at EP2 (torchrun) -> HF at PP2 (torchrun), 4 MiB shards:
  every tensor torch.equal, same config.json (+ the tokenizer's token ids, its files copied),
  loads in transformers with identical logits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

HERE = Path(__file__).parent
WORKER = HERE / "bridge_worker.py"
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args: list, nproc: int = 1, script=WORKER) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable]
    proc = subprocess.run(cmd + [str(script), *map(str, args)], env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from bridge_worker import make_ref  # in this process: a world of one

    d = tmp_path_factory.mktemp("bridge_ref")
    make_ref(d)
    return d


@pytest.mark.parametrize("layout", ["tp=2,sp=1", "ep=2"])
def test_export_and_import_at_layout_match_single_rank(reference, layout, tmp_path):
    out = tmp_path / "res.json"
    _run(["--layout", layout, "--ref", reference, "--out", out], nproc=2)
    results = json.loads(out.read_text())
    for rank, r in enumerate(results):
        assert r["all_ranks_diff"] == [], (layout, rank, r["all_ranks_diff"][:5])
        assert r["import_diff"] == [], (layout, rank, r["import_diff"][:5])
        assert r["logprob_max_diff"] < 1e-5, (layout, rank, r["logprob_max_diff"])
    assert results[0]["target_diff"] == [] and results[0]["oversized_buckets"] == 0 and results[0]["n_buckets"] > 10
    assert results[1]["non_target_buckets"] == 0


def test_convert_round_trip_is_bit_exact(reference, tmp_path):
    from safetensors.torch import load_file

    tool = ROOT / "tools" / "convert_checkpoint.py"
    _run(["hf-to-megatron", "--hf", reference / "hf", "--out", tmp_path / "ckpt", "--ep", 2], nproc=2, script=tool)
    assert (tmp_path / "ckpt" / "step_00000000" / "r1mega_meta.json").exists()
    from r1mega.data.tokenizer import FILES, build_tokenizer

    tok = build_tokenizer(tmp_path / "tok", corpus_iter=["convert 12 + 34 = 46 <think> ok </think>"] * 20, max_extra_chars=0)
    proc = _run(["megatron-to-hf", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "hf", "--pp", 2, "--shard-mb", 4,
                 "--tokenizer", tok], nproc=2, script=tool)
    print(proc.stdout.strip())
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]
    back = {}
    for f in sorted(set(index.values())):
        back.update(load_file(str(tmp_path / "hf" / f)))
    ref = load_file(str(reference / "hf" / "model.safetensors"))
    assert sorted(back) == sorted(ref)
    assert [k for k in ref if not (torch.equal(ref[k], back[k]) and ref[k].dtype == back[k].dtype)] == []
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg.pop("bos_token_id"), cfg.pop("eos_token_id"), cfg.pop("pad_token_id")) == (1, 2, 0)  # from the tokenizer
    assert cfg == json.loads((reference / "hf" / "config.json").read_text())
    assert all((tmp_path / "hf" / f).read_bytes() == (tok / f).read_bytes() for f in FILES)

    import transformers
    from transformers import DeepseekV3ForCausalLM

    transformers.logging.set_verbosity_error()
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(0))
    a = DeepseekV3ForCausalLM.from_pretrained(reference / "hf", dtype=torch.float32).eval()
    b = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
