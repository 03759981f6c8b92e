"""The DeepSeek-V3-style tiny model on Megatron-Core: forward, backward, learning, shapes, counts."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from r1mega.config.parallel import ParallelConfig
from r1mega.model.counting import count_parameters
from r1mega.model.presets import PUBLISHED, get_preset


def _batch(vocab: int, b: int = 4, s: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    pos = torch.arange(s)[None].expand(b, s)
    return ids, pos


@pytest.fixture
def tiny(megatron_world):
    from r1mega.model.builder import build_model

    torch.manual_seed(0)
    return build_model(get_preset("tiny"), ParallelConfig())[0]


def test_forward_with_labels_gives_finite_per_token_loss(tiny):
    ids, pos = _batch(512)
    labels = torch.roll(ids, -1, 1)
    loss = tiny(ids, pos, None, labels=labels)
    assert loss.shape == (4, 32)
    assert torch.isfinite(loss).all()
    # freshly initialised: per-token CE is close to ln(V)
    assert abs(loss.mean().item() - math.log(512)) < 0.3


def test_logits_only_forward_is_batch_first(megatron_world):
    from r1mega.model.builder import build_model

    model = build_model(get_preset("tiny"), ParallelConfig(), mtp=False)[0]
    ids, pos = _batch(512, b=3, s=17)
    logits = model(ids, pos, None)
    assert logits.shape == (3, 17, 512)


def test_backward_reaches_every_parameter_including_router_and_mtp(tiny):
    tiny.zero_grad(set_to_none=True)
    ids, pos = _batch(512)
    tiny(ids, pos, None, labels=torch.roll(ids, -1, 1)).mean().backward()
    names = [n for n, _ in tiny.named_parameters()]
    missing = [n for n, p in tiny.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached: {missing}"
    assert any(".router.weight" in n for n in names) and any(n.startswith("mtp.") for n in names)
    # the aux-loss-free expert bias is a buffer updated by megatron's grad finalisation, not by autograd
    buffers = dict(tiny.named_buffers())
    assert any(n.endswith("router.expert_bias") for n in buffers)
    assert not any(n.endswith("expert_bias") for n in names)


def test_adamw_steps_on_fixed_batch_lower_the_loss(megatron_world):
    from r1mega.model.builder import build_model

    torch.manual_seed(1)
    model = build_model(get_preset("tiny"), ParallelConfig())[0]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, pos = _batch(512, b=4, s=32, seed=3)
    labels = torch.roll(ids, -1, 1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model(ids, pos, None, labels=labels).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("preset", ["tiny", "tiny-dense"])
def test_counting_agrees_exactly_with_instantiated_model(megatron_world, preset):
    from r1mega.model.builder import build_model

    m = get_preset(preset)
    c = count_parameters(m)
    model = build_model(m, ParallelConfig())[0]
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    bias = sum(b.numel() for n, b in model.named_buffers() if n.endswith("expert_bias"))
    assert (main, mtp, bias) == (c.total, c.mtp, c.expert_bias_buffers)
    emb = model.embedding.word_embeddings.weight.numel()
    assert emb == c.embedding


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_published_totals_within_one_percent(preset):
    c = count_parameters(get_preset(preset))
    assert abs(c.total - PUBLISHED[preset]["total"]) / PUBLISHED[preset]["total"] < 0.01


def test_qwen2_5_1_5b_exact_count():
    # Hand-derived from the Qwen2.5-1.5B config: tied embedding (counted once), q/k/v biases, GQA 12/2 heads of 128.
    c = count_parameters(get_preset("qwen2.5-1.5b"))
    h, kv, inter = 1536, 2 * 128, 8960
    attn = (h * h + h) + 2 * (h * kv + kv) + h * h
    layer = attn + 3 * h * inter + 2 * h
    expect = 151936 * h + 28 * layer + h
    assert c.total == c.activated == expect == 1_543_714_304


def test_deepseek_v3_exact_counts():
    # Hand-derived from the V3 config: attention 187,107,328 per layer; dense MLP 3*7168*18432;
    # MoE layer = router 256*7168 + shared 3*7168*2048 + 256 routed experts of 3*7168*2048.
    c = count_parameters(get_preset("deepseek-v3"))
    attn = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    norms = 2 * 7168 + 1536 + 512
    expert = 3 * 7168 * 2048
    moe = 256 * 7168 + expert + 256 * expert
    dense = 3 * 7168 * 18432
    expect = 2 * 129280 * 7168 + 7168 + 61 * (attn + norms) + 3 * dense + 58 * moe
    assert c.total == expect == 671_026_404_352
    assert c.activated == expect - 58 * 248 * expert
    assert [l.kind for l in c.layers[:4]] == ["dense"] * 3 + ["moe"]


def test_model_info_cli_json():
    out = subprocess.run([sys.executable, "-m", "r1mega.model.info", "--preset", "deepseek-v3", "--json"],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    assert d["total"] == 671_026_404_352 and len(d["layers"]) == 61
    assert d["layers"][0]["kind"] == "dense" and d["layers"][3]["kind"] == "moe"
    assert d["mtp"] > 0 and d["embedding"] == 129280 * 7168
