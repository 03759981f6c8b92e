"""Advantages: hand-computed values (numbers written out, not recomputed by the code under test)."""
import math

import pytest
import torch

from r1mega.algorithms.advantages import (advantage_metrics, degenerate_groups, dynamic_sampling_keep,
                                          group_advantages, process_advantages)
from r1mega.algorithms.metrics import finalize_metrics

R = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def test_group_norm_hand_values():
    # group 1: mean .5, unbiased std sqrt(1/3)=0.57735 -> +-0.5/0.57735 = +-0.866025
    # group 2: mean .25, unbiased std 0.5 -> -0.5, 1.5 ; group 3: all equal -> 0
    a = group_advantages(R, mode="group-norm")
    close(a, [[0.866025, -0.866025, -0.866025, 0.866025], [-0.5, -0.5, -0.5, 1.5], [0.0, 0.0, 0.0, 0.0]])
    assert a.shape == R.shape


def test_flat_layout_matches_2d():
    a = group_advantages(R.reshape(-1), group_size=4)
    assert a.shape == (12,)
    close(a[:4], [0.866025, -0.866025, -0.866025, 0.866025])
    close(a[8:], [0.0] * 4)


def test_biased_std_option():
    close(group_advantages(R[:1], mode="group-norm", unbiased=False), [[1.0, -1.0, -1.0, 1.0]])


def test_group_mean_dr_grpo():
    close(group_advantages(R, mode="group-mean"),
          [[0.5, -0.5, -0.5, 0.5], [-0.25, -0.25, -0.25, 0.75], [0.0, 0.0, 0.0, 0.0]])


def test_rloo():
    # A_i = r_i - mean of the other three
    close(group_advantages(R, mode="rloo"),
          [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [-1 / 3, -1 / 3, -1 / 3, 1.0], [0.0, 0.0, 0.0, 0.0]])


def test_batch_norm():
    # rewards [1,0 | 1,1]: centred [.5,-.5,0,0]; batch std (unbiased) of [1,0,1,1] = 0.5
    close(group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2, mode="batch-norm"), [1.0, -1.0, 0.0, 0.0])
    # whole batch constant -> zeros, no NaN
    close(group_advantages(torch.ones(6), group_size=3, mode="batch-norm"), [0.0] * 6)


@pytest.mark.parametrize("mode", ["group-norm", "group-mean", "rloo", "batch-norm"])
def test_group_of_one_and_all_equal_are_exact_zero(mode):
    a = group_advantages(torch.tensor([3.0, -1.0, 0.5]), group_size=1, mode=mode)
    assert torch.equal(a, torch.zeros(3))
    # 0.1 is not exactly representable: the float mean differs from 0.1 by ~1e-17, must still be 0
    b = group_advantages(torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7]], dtype=torch.float64), mode=mode)
    assert torch.equal(b, torch.zeros_like(b))
    assert not torch.isnan(a).any()


def test_integer_rewards_and_shape_errors():
    close(group_advantages(torch.tensor([1, 0]), group_size=2, mode="group-mean"), [0.5, -0.5])
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), group_size=2)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(2, 3), group_size=2)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4), group_size=2, mode="ppo")


def test_degenerate_and_dynamic_sampling():
    assert degenerate_groups(R).tolist() == [False, False, True]
    assert dynamic_sampling_keep(R.reshape(-1), 4).tolist() == [True, True, False]


def test_advantage_metrics():
    a = group_advantages(R)
    m = finalize_metrics(advantage_metrics(R, a))
    assert m["reward/zero_std_group_frac"] == pytest.approx(1 / 3)
    assert m["reward/mean"] == pytest.approx(7 / 12)
    # population std of 7 ones and 5 zeros: sqrt(7/12 - 49/144)
    assert m["reward/std"] == pytest.approx(math.sqrt(7 / 12 - 49 / 144))
    assert m["adv/mean"] == pytest.approx(0.0, abs=1e-6)
    # sum of squares: 4*0.75 + 3*0.25 + 2.25 = 6.0 over 12 (0.866025^2 = 0.75)
    assert m["adv/std"] == pytest.approx(math.sqrt(6.0 / 12), abs=1e-5)


def test_process_supervision_hand_values():
    # group of 2 completions; completion 0 has steps ending at tokens 1 (r=1) and 3 (r=0),
    # completion 1 one step ending at token 0 (r=0.5); the padded step (r=9) is ignored.
    # pooled steps [1, 0, 0.5]: mean .5, unbiased std .5 -> normalised [1, -1, 0]
    # completion 0: tokens 0..1 -> 1 + (-1) = 0; tokens 2..3 -> -1; token 4 (after last step) -> 0
    r = torch.tensor([[1.0, 0.0], [0.5, 9.0]])
    ends = torch.tensor([[1, 3], [0, 4]])
    valid = torch.tensor([[1, 1], [1, 0]])
    a = process_advantages(r, ends, valid, group_size=2, seq_len=5)
    close(a, [[0.0, 0.0, -1.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])


def test_process_supervision_two_groups():
    # group A (rows 0,1): steps [1, 0 | 1, 1]: mean .75, std (unbiased) .5 -> [.5, -1.5 | .5, .5]
    #   row 0 ends (0, 2): tok0 = .5-1.5 = -1, tok1..2 = -1.5 ; row 1 ends (1, 3): tok0..1 = 1, tok2..3 = .5
    # group B (rows 2,3): all steps equal -> 0 everywhere
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.3, 0.3], [0.3, 0.0]])
    ends = torch.tensor([[0, 2], [1, 3], [0, 3], [2, 0]])
    valid = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    a = process_advantages(r, ends, valid, group_size=2, seq_len=4)
    close(a, [[-1.0, -1.5, -1.5, 0.0], [1.0, 1.0, 0.5, 0.5], [0.0] * 4, [0.0] * 4])


def test_process_supervision_group_of_one():
    # one completion, one step -> 0; one completion, two steps [1, 0] -> +-0.707107 (std sqrt(.5))
    a = process_advantages(torch.tensor([[2.0]]), torch.tensor([[1]]), torch.tensor([[1]]), 1, 3)
    assert torch.equal(a, torch.zeros(1, 3))
    b = process_advantages(torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 2]]), torch.tensor([[1, 1]]), 1, 3)
    close(b, [[0.0, -0.707107, -0.707107]])
    # no valid steps at all
    c = process_advantages(torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1), 2, 3)
    assert torch.equal(c, torch.zeros(2, 3))


def test_process_supervision_rejects_bad_indices():
    with pytest.raises(ValueError):
        process_advantages(torch.ones(1, 1), torch.tensor([[5]]), torch.ones(1, 1), 1, 5)
    with pytest.raises(ValueError):
        process_advantages(torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1), 2, 5)
