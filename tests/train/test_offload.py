"""Trainer offload (r1mega/train/offload.py, rollout.offload_trainer) on the CPU, where the mechanism is the same
code as on a GPU: parking frees the storage of every parameter, gradient and optimizer tensor, a forward while
parked raises, reloading restores every byte, training with offload/reload between steps is bit-for-bit the
training without, the bytes copied are the planner's trainer-offload bytes, and a tensor missing from the offload
lists is caught."""
from __future__ import annotations

import pytest
import torch

from r1mega.algorithms import SFTLoss
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train import offload as off
from r1mega.train.batching import lm_batch
from r1mega.train.engine import TrainEngine

MODELS = ["tiny", "tiny-dense"]  # the DeepSeek-V3-style MoE (expert bias buffers) and the dense model


def _engine(preset: str, dist_opt: bool = True) -> TrainEngine:
    torch.manual_seed(0)
    return TrainEngine(get_preset(preset, num_layers=2), ParallelConfig(distributed_optimizer=dist_opt),
                       OptimizerConfig(lr=1e-3, warmup_steps=0, decay_style="constant", micro_batch_size=2,
                                       global_batch_size=4), seed=7, mtp=False, total_steps=8)


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return lm_batch([torch.randint(1, 500, (int(n),), generator=g).tolist() for n in (20, 17, 24, 11)])


def _snapshot(e: TrainEngine) -> dict:
    """Every tensor of every part, by the offload lists' names (cloned)."""
    return {(part, name): t.detach().clone() for part in off.PARTS for name, t in off.targets(e, part)}


@pytest.mark.parametrize("dist_opt", [True, False])
@pytest.mark.parametrize("preset", MODELS)
def test_offload_frees_everything_and_reload_restores_every_byte(preset, dist_opt):
    e = _engine(preset, dist_opt)
    loss = SFTLoss("token-mean")
    e.train_step(_batch(1), loss)
    before = _snapshot(e)
    live = off.resident_state(e)
    n = sum(p.numel() for c in e.chunks for p in c.parameters())
    assert sum(live.values()) >= 4 * 4 * n  # fp32 weights + grads + Adam's two moments
    o = off.Offloader(e)
    st = o.offload()
    hosts = {k: h.data_ptr() for k, h in o._host.items()}
    # every tensor of the offload lists is empty; the independent walk finds nothing of 4 KiB or more, and only
    # Megatron's scalars (overflow flag, loss scale) and the rotary inv_freq attributes below that
    assert all(t.untyped_storage().nbytes() == 0 for p in off.PARTS for _, t in off.targets(e, p))
    assert off.resident_state(e, min_bytes=off.AUDIT_MIN_BYTES) == {}
    assert sum(off.resident_state(e).values()) < 1024
    assert st.bytes_freed == sum(live.values()) - sum(off.resident_state(e).values())
    assert st.bytes_copied == st.by_part["weights"] + st.by_part["optimizer"]  # gradients are freed, not copied
    with pytest.raises(off.OffloadedStateError, match="weights, grads, optimizer are in host memory"):
        e.logprobs(_batch(2))
    with pytest.raises(off.OffloadedStateError):
        e.train_step(_batch(2), loss)
    back = o.reload()
    assert back.bytes_copied == st.bytes_copied and back.bytes_freed == st.bytes_freed
    after = _snapshot(e)
    assert after.keys() == before.keys()
    for key, t in before.items():
        if key[0] == "grads":
            assert not after[key].any(), key  # gradients come back as zeros (train_step zeroes them anyway)
        else:
            assert torch.equal(after[key], t), key
    e.logprobs(_batch(2))  # usable again
    o.offload(), o.reload()
    assert {k: h.data_ptr() for k, h in o._host.items()} == hosts  # the host buffers are reused


@pytest.mark.parametrize("preset", MODELS)
def test_steps_with_offload_between_them_equal_steps_without(preset):
    """The GRPO stage's pattern, between optimizer steps: grads + optimizer parked (refit), then the weights
    (generation), everything back; losses, grad norms, weights and Adam moments equal bit for bit."""
    loss = SFTLoss("token-mean")
    runs = []
    for offload in (False, True):
        e = _engine(preset)
        o = off.Offloader(e)
        stats = []
        for i in range(3):
            if offload:
                o.offload(("grads", "optimizer"))
                e.logprobs(_batch(9))  # the refit probe's forward runs with only the weights resident
                o.offload()
                o.reload()
            s = e.train_step(_batch(10 + i), loss)
            stats.append((dict(s.metrics), s.grad_norm))
        runs.append((stats, _snapshot(e)))
    (s0, w0), (s1, w1) = runs
    assert s0 == s1
    for key in w0:
        if key[0] != "grads":
            assert torch.equal(w0[key], w1[key]), key


@pytest.mark.parametrize("preset,dtype", [("tiny", "float32"), ("tiny-dense", "float32"), ("tiny", "bfloat16")])
def test_bytes_copied_are_the_planners_trainer_offload_bytes(preset, dtype):
    """r1mega plan's host term for trainer offload (weights + optimizer; the grad buffer is freed, not copied) on
    this layout (one GPU; fp32: 4 bytes a weight, Adam's two fp32 moments; bf16: 2 bytes a weight, fp32 master copy +
    moments, fp32 grads) is what is parked, up to the registered module buffers and Adam's step counters the planner
    leaves out (a few hundred bytes)."""
    from r1mega.plan.inputs import Layout, PlanInputs
    from r1mega.plan.generation import gen_memory
    from r1mega.plan.memory import stage_memories

    torch.manual_seed(0)
    e = TrainEngine(get_preset(preset, num_layers=2, params_dtype=dtype), ParallelConfig(),
                    OptimizerConfig(lr=1e-3, warmup_steps=0, micro_batch_size=2, global_batch_size=4), seed=7,
                    mtp=False, total_steps=8)
    e.train_step(_batch(1), SFTLoss("token-mean"))
    st = off.Offloader(e).offload()
    # (RL trains without the MTP layers: the engine is built with mtp=False, the planned model without them)
    inp = PlanInputs(model=get_preset(preset, num_layers=2, num_nextn_predict_layers=0), gpus=1,
                     param_dtype="fp32" if dtype == "float32" else "bf16")
    plan = stage_memories(inp, Layout(stages=(2,)), gen_memory(inp, 1))[0]
    small = sum(b.numel() * b.element_size() for c in e.chunks for b in off._inner(c).buffers())
    steps = sum(1 for o in off._sub_optimizers(e.optimizer) for _ in off._torch_optimizer(o).state)
    # bf16: the norm weights stay fp32 in this build (local spec, no Transformer Engine): 2 bytes more a weight than
    # the planner's 2, and no fp32 master copy for them (4 bytes less)
    n32 = sum(p.numel() for c in e.chunks for p in c.parameters() if p.dtype == torch.float32) if dtype != "float32" else 0
    assert st.by_part["weights"] == plan.terms["weights"] + small + 2 * n32
    assert st.by_part["optimizer"] == plan.terms["optimizer"] + 4 * steps - 4 * n32
    assert st.by_part["grads"] == plan.terms["grads"]
    # host RAM: the KL reference's weights (--ref-model cpu, the default: parked outside its pass by the GRPO stage)
    # + the policy's weights and optimizer state during generation
    assert plan.host == 2 * plan.terms["weights"] + plan.terms["optimizer"]


def test_a_tensor_missing_from_the_offload_lists_is_caught(monkeypatch):
    e = _engine("tiny")
    e.train_step(_batch(1), SFTLoss("token-mean"))
    before = _snapshot(e)
    real = off.targets

    def forgetful(engine, part):  # an offload list that forgot Adam's moments
        return ((n, t) for n, t in real(engine, part) if "exp_avg" not in n)

    monkeypatch.setattr(off, "targets", forgetful)
    with pytest.raises(RuntimeError, match=r"not in the offload lists.*exp_avg"):
        off.Offloader(e).offload()
    # the failed offload put everything back
    monkeypatch.undo()
    assert not e._offload_parked
    after = _snapshot(e)
    for key, t in before.items():
        if key[0] != "grads":
            assert torch.equal(after[key], t), key


def test_refit_and_checkpoint_refuse_parked_state(tmp_path):
    from r1mega.rollout.refit import trainer_buckets
    from r1mega.train.checkpoint import CheckpointManager

    e = _engine("tiny-dense")
    o = off.Offloader(e)
    with pytest.raises(ValueError, match=r"unknown offload part\(s\) \['weight'\]"):
        o.offload(("weight",))
    o.offload(("grads", "optimizer"))
    next(iter(trainer_buckets(e, 1 << 20)))  # the refit needs the weights only
    with pytest.raises(off.OffloadedStateError, match=r"checkpoint save \(step 1\).*optimizer"):
        CheckpointManager(tmp_path / "ckpt").save(e, 1)
    o.offload()
    with pytest.raises(off.OffloadedStateError, match="refit: the trainer's weights"):
        trainer_buckets(e, 1 << 20)
    o.reload()
    CheckpointManager(tmp_path / "ckpt").save(e, 1)


def test_platform_decides_and_says_why(monkeypatch):
    from types import SimpleNamespace

    from r1mega.platform.host_offload import FORCE_ENV, offload_active

    monkeypatch.delenv(FORCE_ENV, raising=False)
    assert offload_active(False) == (False, None)
    active, why = offload_active(True)
    assert not active and "skipped on the CPU" in why and FORCE_ENV in why
    monkeypatch.setenv(FORCE_ENV, "1")
    assert offload_active(True) == (True, None)
    e = _engine("tiny-dense")
    lines = []
    assert off.StageOffload.for_stage(SimpleNamespace(offload_trainer=True, engine="vllm"), e, None, "rl",
                                      log=lines.append).active
    s = off.StageOffload.for_stage(SimpleNamespace(offload_trainer=True, engine="megatron"), e, None, "rl",
                                   log=lines.append)
    assert not s.active and lines == ["[r1mega] rl: rollout.offload_trainer: skipped with rollout.engine 'megatron' "
                                      "(it generates with the trainer's own model)"]
    s.before_generation(), s.before_refit(), s.reload_all()  # inactive: nothing happens
    assert not e._offload_parked and s.take_stats() == {}


@pytest.mark.slow  # (17-47 s on the 2 shared cores: two torchrun processes, six engines)
def test_offload_at_dp2_with_the_distributed_optimizer(tmp_path):
    """2 gloo processes: each rank parks its half of Adam's state (the shards add up to every parameter once) and
    the steps with offload between them equal those without on both ranks."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "dp2.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "R1MEGA_FORCE_TRAINER_OFFLOAD": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                           str(Path(__file__).parent / "offload_dp_worker.py"), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = json.loads(out.read_text())
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    for r in ranks:
        assert r["same_stats"] and r["same_state"], r
        assert min(r["grad_norms"]) > 0
        # the weights are whole on each rank (4 bytes a parameter, + the expert-bias buffers), Adam's moments a shard
        assert r["parts"]["weights"] >= 4 * r["params"] and 0 <= r["parts"]["optimizer"] - 4 * r["adam_elements"] < 1024
        assert 0 < r["adam_elements"] < 2 * r["params"]  # a shard: not both moments of every parameter
    assert sum(r["adam_elements"] for r in ranks) == 2 * ranks[0]["params"]  # exp_avg + exp_avg_sq: each parameter once
