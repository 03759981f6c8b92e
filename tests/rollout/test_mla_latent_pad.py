"""The zero-padded MLA kv latent vLLM-CPU serves (kv_lora_rank + qk_rope_head_dim below the CPU
kernels' 576): the padded weights compute the true model's MLA, exactly up to the kv norm's
epsilon (pure torch, fast). The end-to-end check (vLLM refitted from the trainer) is
tests/rollout/test_vllm_mla_pad.py."""
from __future__ import annotations

import json

import pytest
import torch

from r1mega.config.model import ModelConfig
from r1mega.config.rollout import RolloutConfig
from r1mega.model.presets import get_preset
from r1mega.platform import vllm_settings as vs
from r1mega.rollout.refit import pad_mla_buckets, pad_mla_latent

# the tiny preset at kv_lora_rank 64: hidden, heads, qk nope / v head dims, kv latent, rope key
H, N, NOPE, V, L, R = 128, 4, 32, 32, 64, 64
P = 576 - L - R  # what vLLM-CPU needs: 448


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _mla(x, q_nope, w_a, w_norm, w_b, lat: int, eps: float):
    """A reference MLA kv path, both ways vLLM computes it: naive (prefill: k_nope/v from kv_b_proj)
    and absorbed (decode: scores and values in latent space through W_UK / W_UV). Returns the rope
    key, k_nope, v and one head-wise attention output per form."""
    latent = x @ w_a.T
    c, k_pe = latent.split([lat, R], dim=-1)
    c = _rms(c, w_norm, eps)  # [T, lat]
    kv = (c @ w_b.T).view(-1, N, NOPE + V)
    k_nope, v = kv.split([NOPE, V], dim=-1)
    naive = torch.einsum("nts,snd->tnd", torch.einsum("tnd,snd->nts", q_nope, k_nope).softmax(-1), v)
    w_uk, w_uv = w_b.T.reshape(lat, N, NOPE + V).split([NOPE, V], dim=-1)  # vLLM's split_kv_b_proj
    q_lat = torch.einsum("tnd,lnd->tnl", q_nope, w_uk)
    o_lat = torch.einsum("nts,sl->tnl", torch.einsum("tnl,sl->nts", q_lat, c).softmax(-1), c)
    absorbed = torch.einsum("tnl,lnd->tnd", o_lat, w_uv)
    return k_pe, k_nope, v, naive, absorbed, c


def _rel_err(ref, got) -> float:
    """Worst max|ref - got| / max|ref| over pairs of tensors."""
    return max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(ref, got))


def _weights(g, dtype=torch.float64):
    return dict(w_a=torch.randn(L + R, H, generator=g, dtype=dtype) / H ** 0.5,
                w_norm=1 + 0.2 * torch.randn(L, generator=g, dtype=dtype),
                w_b=torch.randn(N * (NOPE + V), L, generator=g, dtype=dtype) / L ** 0.5)


def _padded(w: dict, P: int) -> dict:
    names = {"w_a": "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
             "w_norm": "model.layers.0.self_attn.kv_a_layernorm.weight",
             "w_b": "model.layers.0.self_attn.kv_b_proj.weight"}
    return {k: pad_mla_latent(names[k], t, L, P, R) for k, t in w.items()}


def test_padded_latent_computes_the_true_mla():
    g = torch.Generator().manual_seed(0)
    w = _weights(g)
    x = torch.randn(7, H, generator=g, dtype=torch.float64)
    q_nope = torch.randn(7, N, NOPE, generator=g, dtype=torch.float64)
    wp = _padded(w, P)
    assert wp["w_a"].shape == (L + P + R, H) and wp["w_norm"].shape == (L + P,)
    assert wp["w_b"].shape == (N * (NOPE + V), L + P)
    eps = 1e-6
    pad = _mla(x, q_nope, wp["w_a"], wp["w_norm"], wp["w_b"], L + P, eps)
    assert torch.equal(pad[-1][:, L:], torch.zeros(7, P, dtype=torch.float64))  # the pad dims are exactly 0
    assert torch.allclose(pad[3], pad[4], atol=1e-12)  # naive == absorbed: the reference itself is right
    # exact: the padded model is the true model with the kv norm's epsilon times (L+P)/L
    exact = _mla(x, q_nope, w["w_a"], w["w_norm"], w["w_b"], L, eps * (L + P) / L)
    assert max((a - b).abs().max().item() for a, b in zip(exact[:-1], pad[:-1])) < 1e-12
    assert torch.allclose(exact[-1], pad[-1][:, :L], atol=1e-12, rtol=0)
    # ... so against the true model every output is off by a relative ~eps*P/(2L)/mean(latent**2) ~ 3.5e-6
    true = _mla(x, q_nope, w["w_a"], w["w_norm"], w["w_b"], L, eps)
    assert _rel_err(true, pad[:-1] + (pad[-1][:, :L],)) < 1e-5
    # in fp32 (the engine's dtype) too
    w32, wp32 = ({k: t.float() for k, t in d.items()} for d in (w, wp))
    t32 = _mla(x.float(), q_nope.float(), w32["w_a"], w32["w_norm"], w32["w_b"], L, eps)
    p32 = _mla(x.float(), q_nope.float(), wp32["w_a"], wp32["w_norm"], wp32["w_b"], L + P, eps)
    assert _rel_err(t32[:-1], p32[:-1]) < 1e-5


def test_padding_without_the_norm_scale_is_wrong():
    """The norm scaling is load-bearing: with the weight only zero-extended, the latent is off by
    sqrt((L+P)/L)."""
    g = torch.Generator().manual_seed(1)
    w = _weights(g)
    wp = _padded(w, P)
    wp["w_norm"] = torch.cat([w["w_norm"], torch.zeros(P, dtype=w["w_norm"].dtype)])
    x = torch.randn(5, H, generator=g, dtype=torch.float64)
    q = torch.randn(5, N, NOPE, generator=g, dtype=torch.float64)
    true = _mla(x, q, w["w_a"], w["w_norm"], w["w_b"], L, 0.0)
    bad = _mla(x, q, wp["w_a"], wp["w_norm"], wp["w_b"], L + P, 0.0)
    assert torch.allclose(bad[-1][:, :L], true[-1] * ((L + P) / L) ** 0.5)
    assert (bad[2] - true[2]).abs().max() > 0.1


def test_row_order_and_unrelated_tensors():
    a = torch.arange(float((L + R) * 2)).view(L + R, 2)
    p = pad_mla_latent("model.layers.3.self_attn.kv_a_proj_with_mqa.weight", a, L, 5, R)
    assert torch.equal(p[:L], a[:L]) and torch.equal(p[L:L + 5], torch.zeros(5, 2)) and torch.equal(p[L + 5:], a[L:])
    for name in ("model.layers.0.self_attn.q_a_proj.weight", "model.layers.0.self_attn.q_b_proj.weight",
                 "model.layers.0.self_attn.q_a_layernorm.weight", "model.layers.0.self_attn.o_proj.weight",
                 "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight", "lm_head.weight",
                 "model.layers.1.mlp.experts.0.up_proj.weight", "model.norm.weight"):
        t = torch.randn(L + R, L)
        assert pad_mla_latent(name, t, L, 5, R) is t
    with pytest.raises(ValueError, match="kv_lora_rank"):  # already padded / wrong config
        pad_mla_latent("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", p, L, 5, R)


def test_pad_mla_buckets_is_lazy():
    cfg = ModelConfig(kv_lora_rank=L, qk_rope_head_dim=R)
    pulled = []

    def source():
        for i in range(3):
            pulled.append(i)
            yield [(f"model.layers.{i}.self_attn.kv_b_proj.weight", torch.ones(4, L)),
                   ("model.norm.weight", torch.ones(3))]

    it = pad_mla_buckets(source(), cfg, 8)
    first = next(it)
    assert pulled == [0] and first[0][1].shape == (4, L + 8) and first[1][1].shape == (3,)
    assert len(list(it)) == 2 and pulled == [0, 1, 2]


def test_mla_latent_pad_is_a_cpu_setting():
    tiny = get_preset("tiny")
    small = get_preset("tiny", kv_lora_rank=64)
    assert vs.mla_latent_pad(tiny, on_gpu=False) == 0
    assert vs.mla_latent_pad(small, on_gpu=False) == 576 - 64 - 64 == 448
    assert vs.mla_latent_pad(small, on_gpu=True) == 0
    assert vs.mla_latent_pad(get_preset("tiny-dense"), on_gpu=False) == 0
    assert vs.vllm_settings(RolloutConfig(), small, on_gpu=False).mla_latent_pad == 448
    assert vs.vllm_settings(RolloutConfig(), small, on_gpu=True).mla_latent_pad == 0
    big = get_preset("tiny", kv_lora_rank=1024)
    with pytest.raises(ValueError, match=r"model\.kv_lora_rank \+ model\.qk_rope_head_dim <= 576"):
        vs.mla_latent_pad(big, on_gpu=False)
    assert vs.mla_latent_pad(big, on_gpu=True) == 0  # GPU MLA kernels take other latent sizes


def test_engine_model_dir_has_the_padded_latent(tmp_path):
    from r1mega.data.tokenizer import default_tokenizer_dir
    from r1mega.rollout.vllm_engine import prepare_model_dir

    small = get_preset("tiny", kv_lora_rank=64)
    prepare_model_dir(small, default_tokenizer_dir(), tmp_path / "a", mla_latent_pad=448)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["kv_lora_rank"] == 512
    prepare_model_dir(small, default_tokenizer_dir(), tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["kv_lora_rank"] == 64
