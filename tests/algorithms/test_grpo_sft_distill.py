"""SFTLoss, distill_kl, entropy_from_logits, logprobs_from_logits: hand-computed values."""
import math

import pytest
import torch

from r1mega.algorithms import (SFTLoss, distill_kl, distill_kl_per_token, entropy_from_logits, finalize_metrics,
                               local_normalisers, logprobs_from_logits)

LN3 = math.log(3.0)


def sft_batch():
    logp = torch.tensor([[-1.0, -2.0, float("nan")], [-3.0, -float("inf"), 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s, t = local_normalisers(mask)
    return logp, {"loss_mask": mask, "global_num_seqs": s, "global_num_tokens": t}


@pytest.mark.parametrize("mode,value,grad", [
    ("token-mean", 2.0, [[-1 / 3, -1 / 3, 0.0], [-1 / 3, 0.0, 0.0]]),                  # (1+2+3)/3
    ("seq-mean-token-mean", 2.25, [[-0.25, -0.25, 0.0], [-0.5, 0.0, 0.0]]),           # (1.5+3)/2
])
def test_sft_loss_hand_values(mode, value, grad):
    logp, batch = sft_batch()
    loss, m = SFTLoss(mode)(logp, batch)
    assert loss.item() == pytest.approx(value)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor(grad))
    f = finalize_metrics(m)
    assert f["sft/nll"] == pytest.approx(2.0) and f["response/length"] == pytest.approx(1.5)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_sft_microbatches_sum_to_global(mode):
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    s, t = local_normalisers(mask)
    batch = {"loss_mask": mask, "global_num_seqs": s, "global_num_tokens": t}
    full, _ = SFTLoss(mode)(logp, batch)
    parts = sum(SFTLoss(mode)(lp, {"loss_mask": mk, "global_num_seqs": s, "global_num_tokens": t})[0]
                for lp, mk in zip(logp.chunk(3), mask.chunk(3)))
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)
    with pytest.raises(ValueError):
        SFTLoss("seq-sum-token-norm")


def test_distill_kl_hand_values():
    # teacher [0,0] -> p = [.5,.5] ; student [0, ln3] -> q = [.25,.75]
    # KL(p||q) = .5 ln(2) + .5 ln(2/3) = .5 ln(4/3) = 0.1438410
    s = torch.tensor([[[0.0, LN3], [0.0, 0.0]]], requires_grad=True)
    t = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])
    mask = torch.tensor([[1, 0]])
    loss = distill_kl(s, t, mask, temperature=1.0)
    assert loss.item() == pytest.approx(0.1438410, abs=1e-6)
    loss.backward()
    # d/ds = T * (q - p) / N = [-.25, .25]; masked position gets 0
    torch.testing.assert_close(s.grad, torch.tensor([[[-0.25, 0.25], [0.0, 0.0]]]))


def test_distill_kl_temperature_scaling():
    # T=2: q = softmax([0, ln3/2]) = [1/(1+sqrt3), sqrt3/(1+sqrt3)] = [0.3660254, 0.6339746]
    # KL = .5 ln(.5/.3660254) + .5 ln(.5/.6339746) = 0.0372523 ; times T^2 = 0.1490091
    s = torch.tensor([[[0.0, LN3]]], requires_grad=True)
    t = torch.zeros(1, 1, 2)
    per_tok = distill_kl_per_token(s, t, temperature=2.0)
    assert per_tok.shape == (1, 1)
    assert per_tok.item() == pytest.approx(0.1490091, abs=1e-6)
    loss = distill_kl(s, t, torch.ones(1, 1), temperature=2.0, num_tokens=torch.tensor(4.0))
    assert loss.item() == pytest.approx(0.1490091 / 4, abs=1e-6)
    loss.backward()
    # d/ds = T (q - p) / N = 2 * [-0.1339746, 0.1339746] / 4
    torch.testing.assert_close(s.grad, torch.tensor([[[-0.0669873, 0.0669873]]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        distill_kl_per_token(s, t, temperature=0.0)


def test_distill_kl_zero_and_masked_vocab():
    x = torch.tensor([[[1.0, 2.0, -float("inf")]]])
    assert distill_kl(x, x.clone(), torch.ones(1, 1)).item() == pytest.approx(0.0, abs=1e-7)


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -float("inf"), -float("inf"), -float("inf")],
                           [0.0, LN3, -float("inf"), -float("inf")]])
    # ln 4 = 1.3862944 ; one-hot -> 0 ; p=[.25,.75] -> -(.25 ln .25 + .75 ln .75) = 0.5623351
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([1.3862944, 0.0, 0.5623351]))
    assert entropy_from_logits(torch.zeros(2, 3, 5, dtype=torch.bfloat16)).dtype == torch.float32


def test_logprobs_from_logits():
    logits = torch.tensor([[[0.0, LN3], [2.0, 2.0]]])
    # ln .75 = -0.2876821 ; ln .5 = -0.6931472
    torch.testing.assert_close(logprobs_from_logits(logits, torch.tensor([[1, 0]])), torch.tensor([[-0.2876821, -0.6931472]]))
