"""KL estimators, clipped surrogate, dual-clip, truncated IS: hand-computed values and gradients."""
import math

import pytest
import torch

from r1mega.algorithms.kl import kl_penalty
from r1mega.algorithms.policy_loss import clipped_surrogate, importance_ratio, truncated_is_weight


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


# logp = [-1, -2], ref = [-1.5, -1] -> log r = ref - logp = [-0.5, 1.0]
KL_CASES = {
    "k1": ([0.5, -1.0], [1.0, 1.0]),
    "k2": ([0.125, 0.5], [0.5, -1.0]),
    # exp(-.5) + .5 - 1 = 0.106531 ; e - 2 = 0.718282 ; grad = 1 - exp(log r)
    "k3": ([0.1065307, 0.7182818], [0.3934693, -1.7182818]),
}


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators_values_and_grads(est):
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0], requires_grad=True)
    kl = kl_penalty(logp, ref, est)
    value, grad = KL_CASES[est]
    close(kl, value)
    kl.sum().backward()
    close(logp.grad, grad)
    assert ref.grad is None  # the reference is a constant


def test_kl_zero_when_equal_and_bad_name():
    x = torch.tensor([-0.3, -4.0])
    for est in ("k1", "k2", "k3"):
        assert torch.equal(kl_penalty(x, x.clone(), est), torch.zeros(2))
    with pytest.raises(ValueError):
        kl_penalty(x, x, "k4")


def test_k3_clamped_no_overflow():
    kl = kl_penalty(torch.tensor([-200.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(kl).all()


# ratios r and advantages A, eps_low .2, eps_high .28:
#  r=1.5 A=1  : max(-1.5, -1.28) = -1.28  clip_high, grad 0
#  r=0.5 A=-1 : max(0.5, 0.8)    = 0.8    clip_low, grad 0
#  r=1.1 A=1  : -1.1                      grad -A r = -1.1
#  r=0.9 A=-1 : 0.9                       grad -A r = 0.9
#  r=3.0 A=-2 : max(6, 2.56)     = 6      grad 6 ; dual-clip c=2.5 caps at 5 (grad 0)
RATIOS = [1.5, 0.5, 1.1, 0.9, 3.0]
ADV = [1.0, -1.0, 1.0, -1.0, -2.0]


def _inputs():
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.0])
    logp = (old + torch.log(torch.tensor(RATIOS))).detach().requires_grad_(True)
    return logp, old, torch.tensor(ADV)


def test_clipped_surrogate_hand_values():
    logp, old, adv = _inputs()
    out = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    close(out.loss, [-1.28, 0.8, -1.1, 0.9, 6.0])
    close(out.ratio, RATIOS)
    assert out.clip_high.tolist() == [True, False, False, False, False]
    assert out.clip_low.tolist() == [False, True, False, False, False]
    assert not out.clip_dual.any()
    out.loss.sum().backward()
    close(logp.grad, [0.0, 0.0, -1.1, 0.9, 6.0])


def test_dual_clip_hand_values():
    logp, old, adv = _inputs()
    out = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28, dual_clip_c=2.5)
    close(out.loss, [-1.28, 0.8, -1.1, 0.9, 5.0])
    assert out.clip_dual.tolist() == [False, False, False, False, True]
    out.loss.sum().backward()
    close(logp.grad, [0.0, 0.0, -1.1, 0.9, 0.0])
    with pytest.raises(ValueError):
        clipped_surrogate(logp, old, adv, dual_clip_c=1.0)


def test_eps_low_ge_one_disables_lower_clip():
    # R1-style loose clip: eps_low 1 -> ratio 0.5 with A=-1 is not clipped (loss 0.5, grad 0.5)
    logp, old, adv = _inputs()
    out = clipped_surrogate(logp, old, adv, eps_low=1.0, eps_high=9.0)
    close(out.loss, [-1.5, 0.5, -1.1, 0.9, 6.0])
    assert not out.clip_low.any() and not out.clip_high.any()


def test_ratio_and_old_logprobs_constant():
    logp = torch.tensor([0.0], requires_grad=True)
    old = torch.tensor([-0.5], requires_grad=True)
    r = importance_ratio(logp, old)
    close(r, [math.exp(0.5)])
    r.sum().backward()
    assert old.grad is None
    assert torch.isfinite(importance_ratio(torch.tensor([500.0]), torch.tensor([0.0]))).all()


def test_truncated_is_weight():
    # exp(.5)=1.648721 -> capped 1.5 ; exp(-.5) = 0.606531 ; exp(0) = 1
    old = torch.tensor([-1.0, -1.0, -2.0], requires_grad=True)
    w = truncated_is_weight(old, torch.tensor([-1.5, -0.5, -2.0]), cap=1.5)
    close(w, [1.5, 0.606531, 1.0])
    assert not w.requires_grad
