"""GRPOLoss: the engine contract (hand-computed batch, independent reference formula for loss and
gradient, microbatch/DP sum = global-batch loss and gradient for every aggregation mode)."""
import dataclasses
import math

import pytest
import torch

from r1mega.algorithms import GRPOLoss, accumulate_metrics, finalize_metrics, local_normalisers
from r1mega.config.grpo import GRPOConfig

NAN = float("nan")


def cfg(**kw):
    base = dict(kl_coef=0.1, kl_estimator="k3", clip_eps_low=0.2, clip_eps_high=0.2, loss_norm_constant=4)
    base.update(kw)
    return GRPOConfig(**base)


def hand_batch():
    """Two sequences; row 0 has 2 response tokens (A=1), row 1 has 3 (A=-0.5).
    Masked positions hold garbage (NaN / -inf) that must not leak."""
    logp = torch.tensor([[-1.0, -0.5, -float("inf")], [-2.0, -0.3, -1.0]], requires_grad=True)
    batch = {
        "loss_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
        "old_logprobs": torch.tensor([[-1.0, -0.9, NAN], [-2.1, -0.1, -1.0]]),
        "ref_logprobs": torch.tensor([[-1.5, -0.5, 0.0], [-2.0, -0.2, -1.3]]),
        "advantages": torch.tensor([1.0, -0.5]),
        "global_num_seqs": torch.tensor(2.0),
        "global_num_tokens": torch.tensor(5.0),
    }
    return logp, batch


# Worked by hand (ratios r = exp(logp - old), k3 = exp(x) - x - 1 with x = ref - logp, beta = .1):
#  row 0: t0 r=1      pg=-1            k3(-.5)=0.1065307  l=-0.9893469
#         t1 r=1.4918 pg=-1.2 (clipped) k3(0)=0            l=-1.2
#  row 1: t0 r=1.1052 pg=0.5525855     k3(0)=0            l= 0.5525855
#         t1 r=0.8187 pg=0.4093654     k3(.1)=0.0051709   l= 0.4098825
#         t2 r=1      pg=0.5           k3(-.3)=0.0408182  l= 0.5040818
#  seq-mean-token-mean: (-2.1893469/2 + 1.4665498/3) / 2 = -0.3029118
#  token-mean: -0.7227972 / 5 = -0.1445594 ; seq-sum-token-norm (C=4): -0.7227972/4/2 = -0.0903497
HAND_LOSS = {"seq-mean-token-mean": -0.3029118, "token-mean": -0.1445594, "seq-sum-token-norm": -0.0903497}
# d loss / d logp for seq-mean-token-mean: (-A r + beta (1 - exp(x))) / (n_b * N_seqs), 0 when clipped
HAND_GRAD = [[-0.2401633, 0.0, 0.0], [0.0920976, 0.0664747, 0.0876530]]


@pytest.mark.parametrize("mode", list(HAND_LOSS))
def test_hand_computed_loss(mode):
    logp, batch = hand_batch()
    loss, _ = GRPOLoss(cfg(loss_agg_mode=mode))(logp, batch)
    assert loss.item() == pytest.approx(HAND_LOSS[mode], abs=1e-6)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    if mode == "seq-mean-token-mean":
        torch.testing.assert_close(logp.grad, torch.tensor(HAND_GRAD), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", list(HAND_LOSS))
def test_old_from_current_is_the_on_policy_loss(mode):
    """Without old log-probs, GRPOLoss(old_from_current=True) equals the loss with old = logprobs (ratio 1:
    no clipping, -A/n per token plus the KL term), value and gradient; without the option it refuses."""
    logp, batch = hand_batch()
    del batch["old_logprobs"]
    with pytest.raises(KeyError, match="old_logprobs"):
        GRPOLoss(cfg(loss_agg_mode=mode))(logp, batch)
    loss, m = GRPOLoss(cfg(loss_agg_mode=mode), old_from_current=True)(logp, batch)
    loss.backward()
    logp2, batch2 = hand_batch()
    batch2["old_logprobs"] = torch.where(batch2["loss_mask"].bool(), logp2.detach(), torch.tensor(NAN))
    loss2, m2 = GRPOLoss(cfg(loss_agg_mode=mode))(logp2, batch2)
    loss2.backward()
    assert loss.item() == loss2.item()
    torch.testing.assert_close(logp.grad, logp2.grad, atol=0, rtol=0)
    assert finalize_metrics(dict(m))["ratio/max"] == 1.0 and finalize_metrics(dict(m))["clip/high_frac"] == 0.0
    if mode == "seq-mean-token-mean":  # by hand: pg = -A per token (ratio 1), k3 terms as in HAND_LOSS's table
        pg = (-1.0 * 2 / 2 + 0.5 * 3 / 3) / 2
        kl = 0.1 * ((0.1065307 + 0.0) / 2 + (0.0 + 0.0051709 + 0.0408182) / 3) / 2
        assert loss.item() == pytest.approx(pg + kl, abs=1e-6)


def test_hand_computed_metrics():
    logp, batch = hand_batch()
    batch["entropy"] = torch.tensor([[1.0, 2.0, NAN], [3.0, 4.0, 5.0]])
    _, m = GRPOLoss(cfg())(logp, batch)
    f = finalize_metrics(m)
    assert f["clip/high_frac"] == pytest.approx(1 / 5)
    assert f["clip/low_frac"] == 0.0
    assert "clip/dual_frac" not in f
    assert f["ratio/max"] == pytest.approx(math.exp(0.4), abs=1e-6)
    assert f["ratio/min"] == pytest.approx(math.exp(-0.2), abs=1e-6)
    assert f["ratio/mean"] == pytest.approx((1 + 1.4918247 + 1.1051709 + 0.8187308 + 1) / 5, abs=1e-6)
    assert f["kl/k3"] == pytest.approx(0.1525198 / 5, abs=1e-6)  # (0.1065307+0.0051709+0.0408182)/5
    assert f["loss/kl"] == pytest.approx(0.1525198 / 5, abs=1e-6)
    assert f["loss/pg"] == pytest.approx(-0.7380492 / 5, abs=1e-6)  # -1-1.2+0.5525855+0.4093654+0.5
    assert f["adv/mean"] == pytest.approx(0.25)
    assert f["adv/std"] == pytest.approx(0.75)
    assert f["entropy/mean"] == pytest.approx(3.0)
    assert f["response/length"] == pytest.approx(2.5)
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in m.values())


def test_k3_reference_free_when_kl_coef_zero():
    logp, batch = hand_batch()
    del batch["ref_logprobs"]
    loss, m = GRPOLoss(cfg(kl_coef=0.0))(logp, batch)
    # pure pg, seq-mean-token-mean: (-2.2/2 + 1.4619509/3)/2
    assert loss.item() == pytest.approx((-2.2 / 2 + 1.4619509 / 3) / 2, abs=1e-6)
    assert "kl/k3" not in m and "loss/kl" not in m
    with pytest.raises(KeyError):
        GRPOLoss(cfg(kl_coef=0.1))(logp, batch)


def test_dr_grpo_divisor_from_rollout_max_new_tokens():
    logp, batch = hand_batch()
    c = cfg(loss_agg_mode="seq-sum-token-norm", loss_norm_constant=None)
    with pytest.raises(ValueError):
        GRPOLoss(c)
    loss, _ = GRPOLoss(c, max_new_tokens=4)(logp, batch)
    assert loss.item() == pytest.approx(HAND_LOSS["seq-sum-token-norm"], abs=1e-6)
    # an explicit constant wins over max_new_tokens
    loss, _ = GRPOLoss(cfg(loss_agg_mode="seq-sum-token-norm", loss_norm_constant=8), max_new_tokens=4)(logp, batch)
    assert loss.item() == pytest.approx(HAND_LOSS["seq-sum-token-norm"] / 2, abs=1e-6)


def test_missing_required_keys():
    logp, batch = hand_batch()
    for key in ("loss_mask", "old_logprobs", "advantages"):
        b = dict(batch)
        del b[key]
        with pytest.raises(KeyError):
            GRPOLoss(cfg())(logp, b)
    with pytest.raises(KeyError):  # TIS needs rollout log-probs
        GRPOLoss(cfg(tis=True))(logp, batch)


def test_tis_and_mismatch_hand_values():
    # on-policy (logp == old): pg = -A; kl off. rollout differs on row 0 t0 by +0.5 and row 1 t1 by -1.0
    logp = torch.tensor([[-1.0, -0.5], [-2.0, -0.3]], requires_grad=True)
    batch = {"loss_mask": torch.ones(2, 2), "old_logprobs": logp.detach().clone(),
             "advantages": torch.tensor([1.0, -1.0]), "global_num_seqs": torch.tensor(2.0),
             "global_num_tokens": torch.tensor(4.0),
             "rollout_logprobs": torch.tensor([[-1.5, -0.5], [-2.0, 0.7]])}
    # weights min(exp(old - rollout), 2): [[exp(.5)=1.648721, 1], [1, exp(-1)=0.367879]]
    c = cfg(kl_coef=0.0, tis=True, tis_cap=2.0, loss_agg_mode="token-mean", mismatch_token_threshold=0.8)
    loss, m = GRPOLoss(c)(logp, batch)
    assert loss.item() == pytest.approx((-1.648721 - 1 + 1 + 0.367879) / 4, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.648721, -1.0], [1.0, 0.367879]]) / 4, atol=1e-6, rtol=0)
    f = finalize_metrics(m)
    assert f["mismatch/abs_diff_mean"] == pytest.approx(1.5 / 4)
    assert f["mismatch/abs_diff_max"] == pytest.approx(1.0)
    # k3 with w = p_trainer/p_rollout: exp(.5)-.5-1 = 0.148721 ; exp(-1)+1-1 = 0.367879
    assert f["mismatch/k3"] == pytest.approx((0.148721 + 0.367879) / 4, abs=1e-6)
    assert f["mismatch/over_threshold_frac"] == pytest.approx(1 / 4)
    assert f["mismatch/tis_weight_mean"] == pytest.approx((1.648721 + 2 + 0.367879) / 4, abs=1e-6)
    assert f["mismatch/tis_truncated_frac"] == 0.0
    # masking the mismatched token (|diff| = 1 > 0.8) drops it from the loss, normaliser unchanged
    c2 = dataclasses.replace(c, tis=False, mismatch_mask=True)
    loss2, _ = GRPOLoss(c2)(logp, batch)
    assert loss2.item() == pytest.approx((-1 - 1 + 1 + 0) / 4, abs=1e-6)


def test_token_level_advantages():
    logp = torch.tensor([[-1.0, -0.5, 0.0]], requires_grad=True)
    batch = {"loss_mask": torch.tensor([[1, 1, 0]]), "old_logprobs": logp.detach().clone(),
             "advantages": torch.tensor([[2.0, -1.0, NAN]]), "global_num_seqs": torch.tensor(1.0),
             "global_num_tokens": torch.tensor(2.0)}
    loss, m = GRPOLoss(cfg(kl_coef=0.0))(logp, batch)
    assert loss.item() == pytest.approx((-2.0 + 1.0) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, 0.5, 0.0]]))
    assert finalize_metrics(m)["adv/mean"] == pytest.approx(0.5)


# ---------------------------------------------------------------- independent reference formula
def reference_loss(logp, batch, c):
    """Scalar loops with explicit branches (no code shared with the implementation)."""
    mask, old, adv = batch["loss_mask"], batch["old_logprobs"], batch["advantages"]
    ref, roll = batch.get("ref_logprobs"), batch.get("rollout_logprobs")
    seq_terms, tok_total = [], 0.0
    for b in range(logp.shape[0]):
        s, n = 0.0, 0
        toks = [t for t in range(logp.shape[1]) if mask[b, t]]
        if toks:  # GSPO's sequence ratio and the geometric-mean trainer/rollout ratio of the row
            seq_log = sum(logp[b, t] - float(old[b, t]) for t in toks) / len(toks)
            if c.importance_level == "sequence_token":
                seq_log = seq_log.detach()
            geo = math.exp(sum(float(old[b, t]) - float(roll[b, t]) for t in toks) / len(toks)) if roll is not None else 1
            if (c.mismatch_seq_low is not None and geo < c.mismatch_seq_low) or \
                    (c.mismatch_seq_high is not None and geo > c.mismatch_seq_high):
                toks_kept = set()
            else:
                toks_kept = set(toks)
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            a = float(adv[b]) if adv.dim() == 1 else float(adv[b, t])
            if c.importance_level == "token":
                r = torch.exp(logp[b, t] - float(old[b, t]))
            elif c.importance_level == "sequence":
                r = torch.exp(seq_log)
            else:
                r = torch.exp(seq_log + logp[b, t] - logp[b, t].detach())
            rc = min(max(r.item(), 1 - c.clip_eps_low), 1 + c.clip_eps_high)
            term = -a * r if -a * r.item() >= -a * rc else torch.tensor(-a * rc)
            if c.dual_clip_c is not None and a < 0 and term.item() > -a * c.dual_clip_c:
                term = torch.tensor(-a * c.dual_clip_c)
            w = 1.0
            if c.tis:
                w = min(math.exp(float(old[b, t]) - float(roll[b, t])) if c.tis_level == "token" else geo, c.tis_cap)
            term = term * w
            if c.kl_coef > 0:
                d = logp[b, t] - float(ref[b, t])  # log pi - log ref
                kl = {"k1": d, "k2": 0.5 * d ** 2, "k3": torch.exp(-d) + d - 1}[c.kl_estimator]
                term = term + c.kl_coef * kl * (w if c.tis_on_kl else 1.0)
            if t not in toks_kept or (c.mismatch_mask and abs(float(old[b, t]) - float(roll[b, t])) > c.mismatch_token_threshold):
                term = term * 0.0
            s, n = s + term, n + 1
        if n:
            tok_total = tok_total + s
            seq_terms.append(s / n if c.loss_agg_mode == "seq-mean-token-mean" else s / c.loss_norm_constant)
    if c.loss_agg_mode == "token-mean":
        return tok_total / int(mask.sum())
    return sum(seq_terms) / len(seq_terms)


def random_batch(seed, B=8, T=7, token_adv=False):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[2] = False  # padding row
    mask[5, :] = False
    mask[5, 0] = True  # one-token row
    junk = torch.full((B, T), NAN)
    batch = {
        "loss_mask": mask.int(),
        "old_logprobs": torch.where(mask, old, junk),
        "ref_logprobs": torch.where(mask, logp + 0.2 * torch.randn(B, T, generator=g), junk),
        "rollout_logprobs": torch.where(mask, old + 0.3 * torch.randn(B, T, generator=g), junk),
        "advantages": torch.randn(B, T, generator=g) if token_adv else torch.randn(B, generator=g),
        "entropy": torch.rand(B, T, generator=g),
    }
    s, t = local_normalisers(mask)
    batch["global_num_seqs"], batch["global_num_tokens"] = s, t
    return torch.where(mask, logp, torch.full((B, T), -float("inf"))), batch


VARIANTS = [
    dict(),
    dict(kl_estimator="k1", clip_eps_high=0.28),
    dict(kl_estimator="k2", dual_clip_c=1.5),
    dict(tis=True, tis_cap=1.5, dual_clip_c=2.0, tis_on_kl=True),
    dict(tis=True, tis_cap=1.5, dual_clip_c=2.0),  # TIS on the policy-gradient term only (the default)
    dict(importance_level="sequence", clip_eps_low=0.05, clip_eps_high=0.05, dual_clip_c=1.1),  # GSPO
    dict(importance_level="sequence_token", clip_eps_low=0.05, clip_eps_high=0.05, tis=True, tis_level="sequence",
         tis_cap=1.1),
    dict(mismatch_token_threshold=0.5, mismatch_mask=True, mismatch_seq_low=0.9, mismatch_seq_high=1.1),
]
SEEDS = [0, 1, 2, 3, 3, 0, 0, 0]  # random batches on which every variant's branches are hit
MODES = ["seq-mean-token-mean", "token-mean", "seq-sum-token-norm"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_loss_and_grad_match_reference(mode, variant):
    c = cfg(loss_agg_mode=mode, loss_norm_constant=7, **VARIANTS[variant])
    for token_adv in (False, True) if c.importance_level != "sequence" else (False,):
        logp0, batch = random_batch(SEEDS[variant], token_adv=token_adv)
        logp = logp0.clone().requires_grad_(True)
        loss, metrics = GRPOLoss(c)(logp, batch)
        (g,) = torch.autograd.grad(loss, logp)
        f = finalize_metrics(metrics)  # the random batch exercises every branch
        assert f["clip/high_frac"] > 0 and f["clip/low_frac"] + f["clip/high_frac"] < 0.5
        assert c.dual_clip_c is None or f["clip/dual_frac"] > 0
        assert not c.tis or f.get("mismatch/tis_truncated_frac", f.get("mismatch/seq_tis_truncated_frac")) > 0
        assert not c.mismatch_seq_mask or 0 < f["mismatch/masked_seq_frac"] < 1
        logp_ref = logp0.clone().requires_grad_(True)
        ref = reference_loss(logp_ref, batch, c)
        (g_ref,) = torch.autograd.grad(ref, logp_ref, allow_unused=True)
        assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
        torch.testing.assert_close(g, torch.nan_to_num(g_ref, nan=0.0), atol=1e-6, rtol=1e-5)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("parts", [2, 4])
@pytest.mark.parametrize("token_adv", [False, True])
@pytest.mark.parametrize("level", ["token", "sequence_token"])
def test_microbatches_sum_to_global_batch(mode, parts, token_adv, level):
    """Whole rows per microbatch (as the engine cuts them): sequence ratios, masks and metrics add up too."""
    c = cfg(loss_agg_mode=mode, loss_norm_constant=7, tis=True, dual_clip_c=2.0, mismatch_token_threshold=0.5,
            importance_level=level, tis_level="sequence" if level != "token" else "token", mismatch_seq_high=1.2)
    logp0, batch = random_batch(11, token_adv=token_adv)
    fn = GRPOLoss(c)
    logp = logp0.clone().requires_grad_(True)
    full, full_metrics = fn(logp, batch)
    (g_full,) = torch.autograd.grad(full, logp)

    logp = logp0.clone().requires_grad_(True)
    total, acc = 0.0, {}
    for idx in torch.arange(8).chunk(parts):
        mb = {k: (v[idx] if v.dim() > 0 else v) for k, v in batch.items()}  # global normalisers kept
        loss, metrics = fn(logp[idx], mb)
        total = total + loss
        accumulate_metrics(acc, metrics)
    (g_parts,) = torch.autograd.grad(total, logp)
    assert total.item() == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(g_parts, g_full, atol=1e-7, rtol=1e-6)
    f_full, f_parts = finalize_metrics(full_metrics), finalize_metrics(acc)
    assert f_full.keys() == f_parts.keys()
    for k in f_full:
        assert f_parts[k] == pytest.approx(f_full[k], abs=1e-5), k


def test_all_padding_microbatch_is_zero_not_nan():
    logp0, batch = random_batch(3)
    mb = {k: (v[2:3] if v.dim() > 0 else v) for k, v in batch.items()}  # row 2 is pure padding
    logp = logp0[2:3].clone().requires_grad_(True)
    loss, m = GRPOLoss(cfg(tis=True))(logp, mb)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    f = finalize_metrics(m)
    assert math.isnan(f["ratio/max"]) and math.isnan(f["ratio/mean"])
