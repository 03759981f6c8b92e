"""Loss aggregation modes with global normalisers: hand-computed values and the microbatch sum."""
import pytest
import torch

from r1mega.algorithms.aggregation import aggregate_loss, local_normalisers

NAN = float("nan")
# row 0: tokens 1,2,3 ; row 1: token 4 ; row 2: pure padding (garbage, NaN) -> contributes nothing
L = torch.tensor([[1.0, 2.0, 3.0, 7.0], [4.0, NAN, 5.0, 5.0], [9.0, NAN, 9.0, 9.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_local_normalisers():
    s, t = local_normalisers(M)
    assert float(s) == 2.0 and float(t) == 4.0


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", (1 + 2 + 3 + 4) / 4),             # 2.5
    ("seq-mean-token-mean", (6 / 3 + 4 / 1) / 2),    # 3.0
    ("seq-sum-token-norm", (6 / 4 + 4 / 4) / 2),     # 1.25 with constant 4
])
def test_modes_hand_values(mode, expected):
    x = L.clone().requires_grad_(True)
    loss = aggregate_loss(x, M, mode, torch.tensor(2.0), torch.tensor(4.0), norm_constant=4)
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[M == 0] == 0).all()
    grads = {"token-mean": [0.25, 0.25, 0.25, 0.25],  # 1/N_tokens
             "seq-mean-token-mean": [1 / 6, 1 / 6, 1 / 6, 0.5],  # 1/(n_b N_seqs)
             "seq-sum-token-norm": [0.125] * 4}  # 1/(C N_seqs)
    torch.testing.assert_close(x.grad[M == 1], torch.tensor(grads[mode]))


def test_seq_num_tokens_override_for_context_parallel():
    # the first half of a sequence of 6 tokens lives on this CP rank: divide by 6, not 3
    loss = aggregate_loss(L[:1], M[:1], "seq-mean-token-mean", torch.tensor(1.0), seq_num_tokens=torch.tensor([6]))
    assert float(loss.detach()) == pytest.approx(1.0)


def test_missing_normalisers_and_bad_mode():
    with pytest.raises(ValueError):
        aggregate_loss(L, M, "token-mean", global_num_seqs=torch.tensor(2.0))
    with pytest.raises(ValueError):
        aggregate_loss(L, M, "seq-mean-token-mean", global_num_tokens=torch.tensor(4.0))
    with pytest.raises(ValueError):
        aggregate_loss(L, M, "seq-sum-token-norm", torch.tensor(2.0))
    with pytest.raises(ValueError):
        aggregate_loss(L, M, "seq-mean", torch.tensor(2.0), torch.tensor(4.0))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-sum-token-norm"])
@pytest.mark.parametrize("parts", [2, 4])
def test_microbatches_sum_to_global(mode, parts):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g)
    mask = (torch.rand(8, 5, generator=g) > 0.4)
    mask[3] = False  # a padding row
    s, t = local_normalisers(mask)
    full = aggregate_loss(x, mask, mode, s, t, norm_constant=5)
    pieces = sum(aggregate_loss(xc, mc, mode, s, t, norm_constant=5)
                 for xc, mc in zip(x.chunk(parts), mask.chunk(parts)))
    assert float(pieces) == pytest.approx(float(full), abs=1e-6)
