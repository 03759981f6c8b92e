"""Activation recompute (``parallel.recompute``) through Megatron-Core on the tiny models, fp32: a training
step with full (uniform, 1 layer) or selective recompute gives the step without it (loss, every gradient,
the expert-bias update), the recompute really runs, and under router replay the recomputed forward in the
backward replays the same experts as the forward (Megatron's REPLAY_BACKWARD, armed by the engine)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from r1mega.algorithms import GRPOLoss, SFTLoss
from r1mega.config.grpo import GRPOConfig
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train.batching import lm_batch
from r1mega.train.engine import TrainEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rollout"))
from rollout_support import randomize  # noqa: E402

LENGTHS = (20, 17, 24, 11)  # ragged: padding inside microbatches (the MoE padding mask matters)


def _batch():
    g = torch.Generator().manual_seed(5)
    b = lm_batch([torch.randint(1, 512, (n,), generator=g).tolist() for n in LENGTHS], loss_from=[6, 5, 9, 4])
    b["advantages"] = torch.tensor([1.0, -0.5, 0.25, -0.75])
    return b


def _engine(preset: str, recompute: str, mtp: bool = False, router_replay: bool = False) -> TrainEngine:
    torch.manual_seed(0)
    e = TrainEngine(get_preset(preset), ParallelConfig(recompute=recompute),
                    OptimizerConfig(lr=1e-3, warmup_steps=0, decay_style="constant", micro_batch_size=2,
                                    global_batch_size=4), seed=7, mtp=mtp, total_steps=2, router_replay=router_replay)
    randomize(e, 1)  # unit-scale activations: routing and log-probs sensitive to every weight
    return e


def _step(engine, batch, loss):
    """One train_step; returns (metrics, {param: gradient}, {router: expert bias after the step})."""
    grads = {}

    def keep(_metrics):
        for c in engine.chunks:
            grads.update({n: p.main_grad.detach().clone() for n, p in c.named_parameters()})

    stats = engine.train_step(batch, loss, before_update=keep)
    bias = {n: m.expert_bias.detach().clone() for c in engine.chunks for n, m in c.named_modules()
            if getattr(m, "expert_bias", None) is not None}
    return stats.metrics, grads, bias


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


class Calls:
    """Forward calls of the decoder layers' modules of one class name (a recompute runs them again)."""

    def __init__(self, engine, suffix: str):
        self.mods = [m for c in engine.chunks for n, m in c.named_modules()
                     if n.endswith(suffix) and ".mtp." not in f".{n}"]
        self.n = 0

    def __enter__(self):
        def hook(*_):
            self.n += 1
        self.handles = [m.register_forward_hook(hook) for m in self.mods]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("preset,mtp", [("tiny-dense", False), ("tiny", False), ("tiny", True)])
def test_recompute_gives_the_same_step(megatron_world, one_thread, preset, mtp):
    loss = (lambda: SFTLoss("seq-mean-token-mean")) if mtp else (lambda: GRPOLoss(GRPOConfig(kl_coef=0.0)))
    runs = {}
    for mode in ("none", "full", "selective"):
        e = _engine(preset, mode, mtp=mtp)
        b = _batch()
        if not mtp:
            with torch.no_grad():
                b["old_logprobs"] = e.logprobs(b) + 0.05 * b["loss_mask"]  # importance ratios != 1
        layers = len(e.chunks[0].module.decoder.layers)
        with Calls(e, "decoder.layers.0") as layer0, Calls(e, "input_layernorm") as norms:
            runs[mode] = _step(e, b, loss())
        # 2 microbatches: full recompute runs every layer once more per microbatch, selective its norms only
        assert layer0.n == {"full": 4}.get(mode, 2)
        assert norms.n == {"none": 2 * layers}.get(mode, 4 * layers)
    (m0, g0, b0) = runs["none"]
    for mode in ("full", "selective"):
        m, g, bias = runs[mode]
        d = _max_diff(g0, g)
        key = next(iter(m0))  # loss/pg (GRPO) or sft/nll
        print(f"\n{preset}{' +MTP' if mtp else ''}, recompute {mode}: {key} {m[key]:.7f} vs {m0[key]:.7f}, "
              f"max |d grad| {d:.2e} over {len(g)} tensors")
        assert m == pytest.approx(m0, abs=1e-6)
        assert d < 1e-6  # fp32 round-off (measured: 0 for full, ~1e-7 for selective)
        if b0:  # the expert-bias update counted each token once (in the recompute: Megatron counts under grad)
            assert _max_diff(b0, bias) == 0.0


@torch.no_grad()
def _shift_bias(engine, seed=1, scale=0.3):
    """Move every router's expert bias (it only selects experts: with replay it changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in [m for c in engine.chunks for m in c.modules() if getattr(m, "expert_bias", None) is not None]:
        m.expert_bias.add_(scale * torch.randn(m.expert_bias.shape, generator=g))


class Routing:
    """The experts every MoE router chose, per router call (forwards and recomputes), sets sorted."""

    def __init__(self, engine):
        self.routers = [m for c in engine.chunks for m in c.modules() if hasattr(m, "expert_bias")
                        and type(m).__name__ == "TopKRouter"]
        self.seen: list = []

    def __enter__(self):
        def fn(_m, _args, out):
            self.seen.append(out[1].detach().clone())  # routing map [tokens, experts]
        self.handles = [m.register_forward_hook(fn) for m in self.routers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _forward_and_recompute(calls: list, micro: int = 2, moe_layers: int = 3) -> list:
    """Per microbatch: its routers' forward calls and, under full recompute, their recomputes in the backward
    (last layer first), paired by layer."""
    per = len(calls) // micro
    assert per == 2 * moe_layers
    return [(f, r) for mb in range(micro)
            for f, r in zip(calls[per * mb:per * mb + moe_layers], reversed(calls[per * mb + moe_layers:per * (mb + 1)]))]


def test_full_recompute_replays_the_recorded_routing(megatron_world, one_thread):
    """R2 on the tiny MoE: record the routing, move the expert bias (the trainer now routes differently),
    train replaying the recording: with full recompute the recomputed forward must replay it too (before the
    engine armed REPLAY_BACKWARD, the recompute routed afresh: other experts in the backward than in the loss)."""
    runs = {}
    for mode in ("none", "full"):
        e = _engine("tiny", mode, router_replay=True)
        b = _batch()
        b["old_logprobs"], b["routed_experts"] = e.logprobs(b, record_routing=True)
        _shift_bias(e)
        with Routing(e) as seen:
            runs[mode] = _step(e, b, GRPOLoss(GRPOConfig(kl_coef=0.0)))
        assert len(seen.seen) == {"none": 6, "full": 12}[mode]  # 2 microbatches x 3 MoE layers (x 2: recompute)
        if mode == "full":
            assert all(torch.equal(f, r) for f, r in _forward_and_recompute(seen.seen))
    (m0, g0, _), (m1, g1, _) = runs["none"], runs["full"]
    d = _max_diff(g0, g1)
    print(f"\nR2 replay, expert bias moved, full recompute: max |d grad| {d:.2e}")
    assert m1 == pytest.approx(m0, abs=1e-6) and d < 1e-6


def test_without_replay_the_recompute_routes_again(megatron_world, one_thread):
    """Without replay, Megatron's recompute runs the router again. In r1mega's step nothing moves the routing
    between a forward and its recompute (the expert bias changes after the backward, the weights at the
    optimizer step): the recompute chooses what the forward chose, and the step is the same (the tests above).
    If the routing did change in between (here: a loss that moves the expert bias), the gradients would belong
    to the recomputed routing, not to the forward that gave the loss; replay pins it."""
    base = GRPOLoss(GRPOConfig(kl_coef=0.0))
    e = _engine("tiny", "full")
    b = _batch()
    with torch.no_grad():
        b["old_logprobs"] = e.logprobs(b)
    with Routing(e) as seen:  # an ordinary step: the recompute routes as the forward did
        e.train_step(b, base)
    assert all(torch.equal(f, r) for f, r in _forward_and_recompute(seen.seen))

    def moving(engine):
        def loss(logprobs, mb):
            _shift_bias(engine, seed=int(mb["tokens"][0, 0]))  # after this microbatch's forward, before its backward
            return base(logprobs, mb)
        return loss

    grads = {}
    for replay in (False, True):
        for mode in ("none", "full"):
            e = _engine("tiny", mode, router_replay=replay)
            b = _batch()
            with torch.no_grad():
                if replay:
                    b["old_logprobs"], b["routed_experts"] = e.logprobs(b, record_routing=True)
                else:
                    b["old_logprobs"] = e.logprobs(b)
            grads[replay, mode] = _step(e, b, moving(e))[1]
    free = _max_diff(grads[False, "none"], grads[False, "full"])
    pinned = _max_diff(grads[True, "none"], grads[True, "full"])
    print(f"\nexpert bias moved between forward and backward: max |d grad| full vs no recompute: without replay "
          f"{free:.2e}, with replay {pinned:.2e}")
    assert free > 1e-3 and pinned < 1e-6
