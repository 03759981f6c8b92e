"""The colocated vLLM engine against the trainer, transformers and the Megatron engine (fp32, CPU).

One engine host per architecture (a child process holding trainer + vLLM + Megatron engine, see
rollout_support.py): ``tiny-dense`` (Llama) and ``tiny`` (DeepSeek-V3: MLA + DeepSeekMoE with
shared experts, sigmoid group-limited routing, expert bias). Every vLLM engine starts from dummy
weights, so each parity figure below is also a proof that the refit loaded every weight.
"""
from __future__ import annotations

import json
import os

import pytest

from r1mega.rollout import PolicyMismatchError, Sampling
from rollout_support import HostClient, max_abs_diff

pytestmark = pytest.mark.slow

PARITY = 1e-3  # the requirement; fp32 engines measure ~1e-6..1e-5
TEXTS = ["What is 12+7? <think> 12+7 = 19 </think> <answer>19</answer>",
         "The quick brown fox jumps over the lazy dog, twice.",
         "<think>", "Compute 3*4 step by step: 第一步 3*4=12"]
FIGURES = os.environ.get("R1MEGA_PARITY_FIGURES")  # optional JSON file the figures are appended to


def _record(arch: str, name: str, value: float) -> None:
    print(f"[parity] {arch} {name}: {value:.3g}")
    if FIGURES:
        with open(FIGURES, "a") as f:
            f.write(json.dumps({"arch": arch, "what": name, "max_abs": value}) + "\n")


@pytest.fixture(scope="module", params=["tiny-dense", "tiny"])
def host(request, tmp_path_factory):
    client = HostClient(tmp_path_factory.mktemp(f"host-{request.param}"))
    try:
        info = client("setup", request.param)
        client.arch = request.param
        client.info = info
        client.seqs = client("encode", TEXTS)
        yield client
    finally:
        client.close()


def test_refit_parity_with_trainer_and_transformers(host):
    """Prompt log-probs after the first refit: vLLM == Megatron trainer == transformers."""
    vllm = host("call", "vllm", "prompt_logprobs", host.seqs)
    trainer = host("trainer_logprobs", host.seqs)
    hf = host("hf_logprobs", host.seqs)
    assert [len(v) for v in vllm] == [len(s) - 1 for s in host.seqs]
    d_trainer, d_hf = max_abs_diff(vllm, trainer), max_abs_diff(vllm, hf)
    _record(host.arch, "vllm_vs_megatron", d_trainer)
    _record(host.arch, "vllm_vs_transformers", d_hf)
    _record(host.arch, "transformers_vs_megatron", max_abs_diff(hf, trainer))
    assert d_trainer < PARITY and d_hf < PARITY
    # non-trivial weights: the log-probs are far from uniform, so a wrong weight could not hide
    assert max(abs(x) for row in trainer for x in row) > 8.0


def test_refit_follows_the_trainer(host):
    """Perturb the trainer (an optimizer step): the stale engine is off and the mismatch check
    refuses its samples; after a refit it matches again and the check passes."""
    host("perturb", seed=11, scale=0.1)
    stale = max_abs_diff(host("call", "vllm", "prompt_logprobs", host.seqs), host("trainer_logprobs", host.seqs))
    assert stale > 0.05
    sampling = Sampling(max_new_tokens=12, temperature=1.0, stop=())
    rollouts = host("call", "vllm", "generate", host.seqs[:2], sampling, n=2, step=1)
    with pytest.raises(PolicyMismatchError, match="mismatch_threshold"):
        host("check_rollouts", rollouts, 0.01)
    stats = host("refit")
    assert stats["tensors"] > 0 and stats["bytes"] > 0 and stats["buckets"] >= 1
    fresh = max_abs_diff(host("call", "vllm", "prompt_logprobs", host.seqs), host("trainer_logprobs", host.seqs))
    _record(host.arch, "vllm_vs_megatron_after_update_refit", fresh)
    assert fresh < PARITY
    rollouts = host("call", "vllm", "generate", host.seqs[:2], sampling, n=2, step=1)
    stats = host("check_rollouts", rollouts, 0.01)
    _record(host.arch, "sampled_token_mismatch_mean", stats["mean_abs"])
    assert stats["tokens"] == rollouts.num_generated_tokens and stats["mean_abs"] < 1e-4


def test_bucket_transports_agree(host):
    """Small buckets streamed in one reload, or loaded bucket by bucket (begin/load/end): same model."""
    ref = host("call", "vllm", "prompt_logprobs", host.seqs)
    host("perturb", seed=12, scale=0.1)
    trainer = host("trainer_logprobs", host.seqs)
    e = host("refit", transport="buckets")
    assert e["buckets"] >= 1
    by_bucket = host("call", "vllm", "prompt_logprobs", host.seqs)
    assert max_abs_diff(by_bucket, trainer) < PARITY
    assert max_abs_diff(ref, trainer) > 0.05


def test_generate_contract(host):
    """n samples per prompt in prompt-major order, sampled-token log-probs, finish reasons, lengths."""
    s = Sampling(max_new_tokens=10, temperature=1.0, stop=(), seed=5)
    r = host("call", "vllm", "generate", host.seqs[:3], s, n=3, step=0)
    assert r.n == 3 and len(r.completions) == 9
    assert [(c.prompt_index, c.sample_index) for c in r.completions] == [(i, j) for i in range(3) for j in range(3)]
    for c in r.completions:
        assert 1 <= len(c.token_ids) <= 10 and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        assert (c.finish_reason == "length") == (len(c.token_ids) == 10)
    assert len({tuple(c.token_ids) for c in r.completions}) > 3  # samples differ
    batch = r.to_batch()
    assert batch["rollout_logprobs"].shape == batch["tokens"].shape
    assert int(batch["loss_mask"].sum()) == r.num_generated_tokens


def test_seeds_are_reproducible(host):
    s = Sampling(max_new_tokens=8, temperature=1.0, stop=(), seed=99)
    a = host("call", "vllm", "generate", host.seqs[:2], s, n=2, step=3)
    b = host("call", "vllm", "generate", host.seqs[:2], s, n=2, step=3)
    c = host("call", "vllm", "generate", host.seqs[:2], s, n=2, step=4)
    assert [x.token_ids for x in a.completions] == [x.token_ids for x in b.completions]
    assert [x.token_ids for x in a.completions] != [x.token_ids for x in c.completions]
    # a completion's seed depends on (seed, step, prompt index, sample index) only: more prompts in
    # the batch do not change the first ones' samples
    more = host("call", "vllm", "generate", host.seqs[:3], s, n=2, step=3)
    assert [x.token_ids for x in more.completions[:4]] == [x.token_ids for x in a.completions]


def test_greedy_and_top_k(host):
    greedy = host("call", "vllm", "generate", host.seqs[:2], Sampling(max_new_tokens=8, temperature=0.0, stop=()), n=2)
    for i in range(2):
        g = greedy.group(i)
        assert g[0].token_ids == g[1].token_ids
    top1 = host("call", "vllm", "generate", host.seqs[:2], Sampling(max_new_tokens=8, temperature=1.0, top_k=1, stop=()), n=2)
    assert [c.token_ids for c in top1.completions] == [c.token_ids for c in greedy.completions]
    # log-probs under the *sampling* distribution: top-1 leaves one token with probability 1
    assert all(abs(lp) < 1e-5 for c in top1.completions for lp in c.logprobs)
    # temperature 0.7: the engine's log-probs are those of logits / 0.7, as the trainer's at T=0.7
    warm = host("call", "vllm", "generate", host.seqs[:2], Sampling(max_new_tokens=8, temperature=0.7, stop=()), n=2)
    stats = host("check_rollouts", warm, 1e-3)
    assert stats["mean_abs"] < 1e-4


def test_stop_strings(host):
    s = Sampling(max_new_tokens=16, temperature=1.0, stop=(), seed=3)
    free = host("call", "vllm", "generate", host.seqs[:1], s, n=1, step=8).completions[0]
    k, stop = host("pick_stop", free.token_ids)
    assert stop is not None, "no usable stop string in the sample"
    for include in (True, False):
        got = host("call", "vllm", "generate", host.seqs[:1], s.replace(stop=(stop,), include_stop_str_in_output=include),
                   n=1, step=8).completions[0]
        assert got.finish_reason == "stop" and got.stop_reason == stop
        assert got.token_ids == free.token_ids[:k + 1]  # the same sample, cut where the stop string completes
        assert got.text.endswith(stop) == include and (stop in got.text) == include


def test_megatron_engine_same_contract(host):
    """The Megatron engine on the same weights: same interface, trainer parity by construction,
    same stop-string behaviour; greedy decoding agrees with vLLM's."""
    s = Sampling(max_new_tokens=10, temperature=1.0, stop=(), seed=5)
    r = host("call", "megatron", "generate", host.seqs[:3], s, n=2, step=0)
    assert len(r.completions) == 6 and r.engine == "megatron"
    stats = host("check_rollouts", r, 1e-5)
    _record(host.arch, "megatron_engine_sampled_vs_trainer_max", stats["max_abs"])
    assert stats["max_abs"] < 1e-5
    greedy = Sampling(max_new_tokens=8, temperature=0.0, stop=())
    g_meg = host("call", "megatron", "generate", host.seqs, greedy, n=1)
    g_vllm = host("call", "vllm", "generate", host.seqs, greedy, n=1)
    same = sum(a.token_ids == b.token_ids for a, b in zip(g_meg.completions, g_vllm.completions))
    assert same >= len(host.seqs) - 1  # fp32 on the same weights: at most a rare near-tie flips
    free = host("call", "megatron", "generate", host.seqs[:1], s.replace(max_new_tokens=16), n=1, step=8).completions[0]
    k, stop = host("pick_stop", free.token_ids)
    got = host("call", "megatron", "generate", host.seqs[:1], s.replace(max_new_tokens=16, stop=(stop,)), n=1,
               step=8).completions[0]
    assert got.finish_reason == "stop" and got.stop_reason == stop and got.token_ids == free.token_ids[:k + 1]
    assert got.text.endswith(stop)
    lp_meg = host("call", "megatron", "prompt_logprobs", host.seqs)
    lp_vllm = host("call", "vllm", "prompt_logprobs", host.seqs)
    assert max_abs_diff(lp_meg, lp_vllm) < PARITY


def test_cpu_moe_repack_is_required(host):
    """Without the CPU MoE re-pack after reload, a DeepSeek refit is silently wrong (and the
    parity/mismatch checks catch it)."""
    if host.arch != "tiny":
        pytest.skip("dense model: no fused MoE")
    assert host("settings")["moe_repack_after_reload"] is True
    host("set_setting", "moe_repack_after_reload", False)
    try:
        with pytest.raises(PolicyMismatchError, match="vLLM probe after refit"):  # every refit's probe check
            host("refit")
        assert host("attr", "vllm", "last_probe")["mean_abs"] > 0.1
        broken = max_abs_diff(host("call", "vllm", "prompt_logprobs", host.seqs), host("trainer_logprobs", host.seqs))
        assert broken > 0.1
    finally:
        host("set_setting", "moe_repack_after_reload", True)
    host("refit")
    fixed = max_abs_diff(host("call", "vllm", "prompt_logprobs", host.seqs), host("trainer_logprobs", host.seqs))
    assert fixed < PARITY


def test_cpu_settings_in_use(host):
    kw = host.info["llm_kwargs"]
    assert kw["distributed_executor_backend"] == "external_launcher" and kw["load_format"] == "dummy"
    assert kw["kv_cache_memory_bytes"] == 64 << 20 and kw["enforce_eager"] is True
    if host.arch == "tiny":
        assert "-rotary_embedding" in kw["compilation_config"]["custom_ops"]
