"""GSPO (sequence-level importance ratio, GSPO-token) and rollout/trainer mismatch handling (sequence-level
masked IS, sequence-level truncated IS, TIS on the policy-gradient term only): values worked by hand."""
import math

import pytest
import torch

from r1mega.algorithms import GRPOLoss, finalize_metrics
from r1mega.algorithms.gspo import importance_ratios
from r1mega.config.base import ConfigError
from r1mega.config.grpo import GRPOConfig

NAN = float("nan")


def cfg(**kw):
    base = dict(kl_coef=0.0, clip_eps_low=0.2, clip_eps_high=0.2)
    base.update(kw)
    return GRPOConfig(**base)


def gspo_batch():
    """Row 0: 2 tokens, A=1, log-ratios (0, 0.4); row 1: 3 tokens, A=-0.5, log-ratios (0.1, -0.2, 0).
    Masked positions hold garbage."""
    logp = torch.tensor([[-1.0, -0.5, -float("inf")], [-2.0, -0.3, -1.0]], requires_grad=True)
    batch = {"loss_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
             "old_logprobs": torch.tensor([[-1.0, -0.9, NAN], [-2.1, -0.1, -1.0]]),
             "advantages": torch.tensor([1.0, -0.5]),
             "global_num_seqs": torch.tensor(2.0), "global_num_tokens": torch.tensor(5.0)}
    return logp, batch


# s_0 = exp((0 + 0.4)/2) = exp(0.2) = 1.2214028 (> 1.2, A > 0: clipped, pg_0 = -1.2, no gradient)
# s_1 = exp((0.1 - 0.2 + 0)/3) = exp(-1/30) = 0.9672161 (inside the clip, pg_1 = 0.5 * s_1 = 0.4836081)
S1 = 0.9672161


@pytest.mark.parametrize("level", ["sequence", "sequence_token"])
def test_gspo_hand_values(level):
    logp, batch = gspo_batch()
    loss, m = GRPOLoss(cfg(importance_level=level))(logp, batch)
    assert loss.item() == pytest.approx((-1.2 + 0.5 * S1) / 2, abs=1e-6)  # seq-mean-token-mean: mean of pg_i
    loss.backward()
    # d/d logp_t of row 1: -A s_1 / n_1 / N_seqs = 0.5 * 0.9672161 / 3 / 2
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [1, 1, 1]]) * 0.5 * S1 / 6, atol=1e-6, rtol=0)
    f = finalize_metrics(m)
    assert f["clip/high_frac"] == pytest.approx(2 / 5)  # the whole of row 0, counted per token
    assert f["ratio/max"] == pytest.approx(math.exp(0.2), abs=1e-6)
    assert f["ratio/min"] == pytest.approx(S1, abs=1e-6)
    # token-mean: each sequence weighs its token count: (2 * -1.2 + 3 * 0.4836081) / 5, gradient 0.5 s_1 / 5
    logp, batch = gspo_batch()
    loss, _ = GRPOLoss(cfg(importance_level=level, loss_agg_mode="token-mean"))(logp, batch)
    assert loss.item() == pytest.approx((-2.4 + 3 * 0.5 * S1) / 5, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad[1], torch.full((3,), 0.5 * S1 / 5), atol=1e-6, rtol=0)


def test_gspo_clips_per_sequence_with_gspo_sized_epsilons():
    # eps 3e-4 / 4e-4: row 0 clipped high (A > 0, s_0 > 1.0004), row 1 clipped low (A < 0, s_1 < 0.9997)
    logp, batch = gspo_batch()
    loss, m = GRPOLoss(cfg(importance_level="sequence", clip_eps_low=3e-4, clip_eps_high=4e-4))(logp, batch)
    assert loss.item() == pytest.approx((-1.0004 + 0.5 * 0.9997) / 2, abs=1e-7)
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp.grad))
    f = finalize_metrics(m)
    assert f["clip/high_frac"] == pytest.approx(2 / 5) and f["clip/low_frac"] == pytest.approx(3 / 5)


def test_token_level_differs_from_gspo():
    """The same batch at the token level (no KL): row 0 t1 clipped alone, the others per token."""
    logp, batch = gspo_batch()
    loss, _ = GRPOLoss(cfg())(logp, batch)
    # (-1 - 1.2)/2 for row 0; 0.5 * (exp(.1) + exp(-.2) + 1) / 3 for row 1
    assert loss.item() == pytest.approx((-1.1 + 0.5 * (1.1051709 + 0.8187308 + 1) / 3) / 2, abs=1e-6)


def test_gspo_token_takes_token_advantages():
    """GSPO-token: value of the sequence ratio, gradient per token with its own advantage. log s = (0.2 + 0)/2."""
    logp = torch.tensor([[-1.0, -0.5]], requires_grad=True)
    batch = {"loss_mask": torch.ones(1, 2), "old_logprobs": torch.tensor([[-1.2, -0.5]]),
             "advantages": torch.tensor([[2.0, -1.0]]), "global_num_seqs": torch.tensor(1.0),
             "global_num_tokens": torch.tensor(2.0)}
    s = math.exp(0.1)  # 1.1051709, inside the clip for both signs
    loss, _ = GRPOLoss(cfg(importance_level="sequence_token"))(logp, batch)
    assert loss.item() == pytest.approx((-2 * s + 1 * s) / 2, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2 * s / 2, 1 * s / 2]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one advantage per sequence"):
        GRPOLoss(cfg(importance_level="sequence"))(logp, batch)


def test_sequence_and_sequence_token_ratios_have_the_same_gradient():
    g = torch.Generator().manual_seed(0)
    logp0 = -torch.rand(4, 6, generator=g)
    old = logp0 + 0.2 * torch.randn(4, 6, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.3
    w = torch.randn(4, generator=g)[:, None]
    grads = []
    for level in ("sequence", "sequence_token"):
        logp = logp0.clone().requires_grad_(True)
        r = importance_ratios(logp, old, mask, level)
        (torch.where(mask, r * w, 0.0).sum(-1) / mask.sum(-1)).sum().backward()
        grads.append(logp.grad)
        if level == "sequence":
            ratio = r.detach()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(importance_ratios(logp0, old, mask, "sequence_token"), ratio)
    # by hand for row 0: exp(mean over its loss tokens of (logp - old))
    assert ratio[0, 0].item() == pytest.approx(math.exp(float((logp0 - old)[0][mask[0]].mean())), rel=1e-6)


def mismatch_batch():
    """On-policy (logp == old), no KL unless asked. Trainer - rollout log-prob differences:
    row 0 (A=1): (0.5, 0) -> geometric-mean ratio g_0 = exp(0.25) = 1.2840254;
    row 1 (A=-1): (0, -1) -> g_1 = exp(-0.5) = 0.6065307. Per-token pg = -A."""
    logp = torch.tensor([[-1.0, -0.5], [-2.0, -0.3]], requires_grad=True)
    batch = {"loss_mask": torch.ones(2, 2), "old_logprobs": logp.detach().clone(),
             "advantages": torch.tensor([1.0, -1.0]), "global_num_seqs": torch.tensor(2.0),
             "global_num_tokens": torch.tensor(4.0), "rollout_logprobs": torch.tensor([[-1.5, -0.5], [-2.0, 0.7]])}
    return logp, batch


G0, G1 = 1.2840254, 0.6065307


def test_sequence_truncated_is_hand_values():
    logp, batch = mismatch_batch()
    loss, m = GRPOLoss(cfg(tis=True, tis_level="sequence", tis_cap=2.0, loss_agg_mode="token-mean"))(logp, batch)
    assert loss.item() == pytest.approx((-2 * G0 + 2 * G1) / 4, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-G0, -G0], [G1, G1]]) / 4, atol=1e-6, rtol=0)
    f = finalize_metrics(m)
    assert f["mismatch/seq_tis_weight_mean"] == pytest.approx((G0 + G1) / 2, abs=1e-6)
    assert f["mismatch/seq_tis_truncated_frac"] == 0.0 and "mismatch/tis_weight_mean" not in f
    assert f["mismatch/seq_ratio_mean"] == pytest.approx((G0 + G1) / 2, abs=1e-6)
    assert f["mismatch/seq_ratio_max"] == pytest.approx(G0, abs=1e-6)
    assert f["mismatch/seq_ratio_min"] == pytest.approx(G1, abs=1e-6)
    # truncated at 1.2: row 0's weight is the cap
    logp, batch = mismatch_batch()
    loss, m = GRPOLoss(cfg(tis=True, tis_level="sequence", tis_cap=1.2, loss_agg_mode="token-mean"))(logp, batch)
    assert loss.item() == pytest.approx((-2 * 1.2 + 2 * G1) / 4, abs=1e-6)
    assert finalize_metrics(m)["mismatch/seq_tis_truncated_frac"] == pytest.approx(0.5)


@pytest.mark.parametrize("low,high,kept,loss,token_frac,seq_frac", [
    (0.7, 1.5, [1, 0], (-1 - 1) / 4, 2 / 4, 1 / 2),   # row 1 (g = 0.61 < 0.7) dropped
    (None, 1.2, [0, 1], (1 + 1) / 4, 2 / 4, 1 / 2),   # row 0 (g = 1.28 > 1.2) dropped
    (0.5, 2.0, [1, 1], (-1 - 1 + 1 + 1) / 4, 0.0, 0.0),
    (0.7, 1.2, [0, 0], 0.0, 1.0, 1.0),
])
def test_sequence_masked_is_hand_values(low, high, kept, loss, token_frac, seq_frac):
    logp, batch = mismatch_batch()
    out, m = GRPOLoss(cfg(mismatch_seq_low=low, mismatch_seq_high=high, loss_agg_mode="token-mean"))(logp, batch)
    assert out.item() == pytest.approx(loss, abs=1e-6)  # the normaliser stays 4 tokens
    out.backward()
    expected = torch.tensor(kept, dtype=torch.float32)[:, None] * -batch["advantages"][:, None] / 4
    torch.testing.assert_close(logp.grad, expected.expand(2, 2))
    f = finalize_metrics(m)
    assert f["mismatch/masked_token_frac"] == pytest.approx(token_frac)
    assert f["mismatch/masked_seq_frac"] == pytest.approx(seq_frac)


def test_token_and_sequence_masks_together():
    # token mask (|diff| > 0.8) drops row 1 t1; the sequence mask (high 1.2) drops row 0: only row 1 t0 is left
    logp, batch = mismatch_batch()
    c = cfg(mismatch_token_threshold=0.8, mismatch_mask=True, mismatch_seq_high=1.2, loss_agg_mode="token-mean")
    loss, m = GRPOLoss(c)(logp, batch)
    assert loss.item() == pytest.approx(1 / 4, abs=1e-6)
    f = finalize_metrics(m)
    assert f["mismatch/masked_token_frac"] == pytest.approx(3 / 4)
    assert f["mismatch/masked_seq_frac"] == pytest.approx(1 / 2)  # row 1 keeps a token
    assert f["mismatch/over_threshold_frac"] == pytest.approx(1 / 4)


def test_tis_weights_the_policy_gradient_only_unless_tis_on_kl():
    """Token TIS weights [[exp(.5), 1], [1, exp(-1)]] (cap 2), kl_coef 0.1, k3 against a reference that
    differs on row 0 t0 only: x = ref - logp = -0.5, k3 = exp(-.5) + .5 - 1 = 0.1065307,
    d k3 / d logp = 1 - exp(-.5) = 0.3934693."""
    w00, w11, k3, dk3 = math.exp(0.5), math.exp(-1.0), 0.1065307, 0.3934693
    out = {}
    for on_kl in (False, True):
        logp, batch = mismatch_batch()
        batch["ref_logprobs"] = torch.tensor([[-1.5, -0.5], [-2.0, -0.3]])
        c = cfg(kl_coef=0.1, tis=True, tis_cap=2.0, tis_on_kl=on_kl, loss_agg_mode="token-mean")
        loss, _ = GRPOLoss(c)(logp, batch)
        loss.backward()
        out[on_kl] = (loss.item(), logp.grad[0, 0].item())
    # pg only: w (-1) + beta k3 on row 0 t0;  with tis_on_kl: w (-1 + beta k3)
    assert out[False][0] == pytest.approx((-w00 + 0.1 * k3 - 1 + 1 + w11) / 4, abs=1e-6)
    assert out[True][0] == pytest.approx((w00 * (-1 + 0.1 * k3) - 1 + 1 + w11) / 4, abs=1e-6)
    assert out[False][1] == pytest.approx((-w00 + 0.1 * dk3) / 4, abs=1e-6)
    assert out[True][1] == pytest.approx(w00 * (-1 + 0.1 * dk3) / 4, abs=1e-6)


def test_sequence_mismatch_bound_needs_rollout_logprobs():
    # (rows sliced over context-parallel ranks: tests/algorithms/test_context_parallel_loss.py)
    logp, batch = mismatch_batch()
    del batch["rollout_logprobs"]
    with pytest.raises(KeyError, match="rollout_logprobs"):
        GRPOLoss(cfg(mismatch_seq_high=2.0))(logp, batch)


@pytest.mark.parametrize("kw,where", [
    (dict(importance_level="seq"), "grpo.importance_level"),
    (dict(tis=True, tis_level="sentence"), "grpo.tis_level"),
    (dict(tis_level="sequence"), "grpo.tis_level"),       # without tis it would be ignored
    (dict(tis_on_kl=True), "grpo.tis_on_kl"),
    (dict(mismatch_seq_low=1.5), "grpo.mismatch_seq_low"),
    (dict(mismatch_seq_low=0.0), "grpo.mismatch_seq_low"),
    (dict(mismatch_seq_high=0.9), "grpo.mismatch_seq_high"),
    (dict(mismatch_seq_high=True), "grpo.mismatch_seq_high"),
])
def test_config_names_the_field(kw, where):
    with pytest.raises(ConfigError) as e:
        GRPOConfig(**kw).validate()
    assert e.value.where == where and str(e.value).startswith(where)
