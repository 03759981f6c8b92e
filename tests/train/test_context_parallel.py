"""Context parallelism on CPU: the split of sequences over CP ranks (against Megatron's own
get_batch_on_this_cp_rank), its inverse, packed sequences, and the losses: for random batches with short rows
and fully padded chunks, the CP ranks' losses (each from its chunks, with the whole rows' normalisers and
per-row sums all-reduced) add up to the unsplit loss, their gradients to the unsplit gradient, their metrics
to the unsplit metrics, for every aggregation mode and importance level (GSPO and sequence MIS/TIS included).

The CP group is simulated by threads here (one per rank, sums through a barrier, the real autograd
function); tests/train/test_context_parallel_dist.py runs the same with a real 2-process gloo group."""
import threading

import pytest
import torch

from r1mega.algorithms import BradleyTerryLoss, GRPOLoss, SFTLoss, accumulate_metrics, finalize_metrics
from r1mega.algorithms.aggregation import local_normalisers
from r1mega.config.grpo import GRPOConfig
from r1mega.train import context_parallel as cp


# ------------------------------------------------------------------ positions and the split
def test_chunk_positions_by_hand():
    assert cp.chunk_positions(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert cp.chunk_positions(8, 2, 1).tolist() == [2, 3, 4, 5]
    assert cp.chunk_positions(12, 3, 1).tolist() == [2, 3, 8, 9]
    assert cp.chunk_positions(6, 1, 0).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="2 x CP = 4 equal chunks"):
        cp.chunk_positions(6, 2, 0)
    with pytest.raises(ValueError, match="cp_rank=2"):
        cp.chunk_positions(8, 2, 2)


class _FakeGroup:
    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


@pytest.mark.parametrize("cp_size", [2, 3, 4])
def test_split_equals_megatrons_get_batch_on_this_cp_rank(cp_size, monkeypatch):
    from megatron.core.utils import get_batch_on_this_cp_rank

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # it reads size/rank off the group
    g = torch.Generator().manual_seed(cp_size)
    S = 2 * cp_size * 3
    batch = {"tokens": torch.randint(0, 50, (3, S), generator=g), "loss_mask": torch.rand(3, S, generator=g),
             "routed_experts": torch.randint(0, 8, (3, S, 2, 4), generator=g)}
    for r in range(cp_size):
        ours = cp.split_batch(batch, cp_size, r)
        theirs = get_batch_on_this_cp_rank(dict(batch), _FakeGroup(cp_size, r))
        for k in batch:
            assert torch.equal(ours[k], theirs[k]), (k, r)


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_split_then_unsplit_is_exact(cp_size):
    g = torch.Generator().manual_seed(0)
    S = 2 * cp_size * 5
    batch = {"tokens": torch.randint(0, 50, (4, S), generator=g), "old_logprobs": torch.randn(4, S, generator=g),
             "routed_experts": torch.randint(0, 8, (4, S, 3, 2), generator=g), "advantages": torch.randn(4, generator=g),
             "global_num_seqs": torch.tensor(4.0)}
    shares = [cp.split_batch(batch, cp_size, r) for r in range(cp_size)]
    pos = [cp.chunk_positions(S, cp_size, r) for r in range(cp_size)]
    for k in ("tokens", "old_logprobs", "routed_experts"):
        assert shares[0][k].size(1) == S // cp_size
        assert torch.equal(cp.unsplit([s[k] for s in shares], pos, dim=1), batch[k])
    assert all(s["advantages"] is batch["advantages"] and s["global_num_seqs"] is batch["global_num_seqs"] for s in shares)
    # dim 2 (the engine's stacked [2, b, s] log-prob/entropy outputs)
    stacked = torch.stack([batch["old_logprobs"], -batch["old_logprobs"]])
    parts = [stacked.index_select(2, p) for p in pos]
    assert torch.equal(cp.unsplit(parts, pos, dim=2), stacked)


def test_packed_sequences_by_hand_and_round_trip():
    lengths = torch.tensor([3, 8, 1])
    padded = cp.padded_lengths(lengths, 2)
    assert padded.tolist() == [4, 8, 4]
    # seq 0 at 0..3 (chunks of 1), seq 1 at 4..11 (chunks of 2), seq 2 at 12..15 (chunks of 1)
    assert cp.packed_positions(padded, 2, 0).tolist() == [0, 3, 4, 5, 10, 11, 12, 15]
    assert cp.packed_positions(padded, 2, 1).tolist() == [1, 2, 6, 7, 8, 9, 13, 14]
    stream = torch.randn(1, int(padded.sum()), 3)
    pos = [cp.packed_positions(padded, 2, r) for r in range(2)]
    assert torch.equal(cp.unsplit([stream.index_select(1, p) for p in pos], pos, dim=1), stream)
    assert cp.packed_positions(cp.padded_lengths(torch.tensor([5]), 3), 3, 2).tolist() == [2, 3]


def test_split_microbatch_adds_the_whole_rows():
    mb = {"tokens": torch.arange(16).reshape(2, 8), "loss_mask": torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0]])}
    r1 = cp.split_microbatch(mb, 2, 1, seq_sum=lambda x: x)
    assert r1["loss_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    assert r1["seq_num_tokens"].tolist() == [6, 2] and r1["seq_owner"] is False
    assert r1["position_ids"].tolist() == [[2, 3, 4, 5]] * 2
    assert cp.split_microbatch(mb, 2, 0, seq_sum=lambda x: x)["seq_owner"] is True


# ------------------------------------------------------------------ a CP group of threads
class ThreadGroup:
    """``n`` threads summing tensors through a barrier (in rank order: every rank gets the same bits)."""

    def __init__(self, n):
        self.n, self.barrier, self.slots = n, threading.Barrier(n, timeout=30), [None] * n

    def reduce(self, rank):
        def f(x):
            self.slots[rank] = x.detach().clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for s in self.slots[1:]:
                total += s
            self.barrier.wait()
            return x.copy_(total)
        return f

    def run(self, fn):
        out, errors = [None] * self.n, []

        def target(r):
            try:
                out[r] = fn(r)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                self.barrier.abort()
        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out


def random_batch(seed, B=6, S=16, token_adv=False):
    """Right-padded rows of random lengths: one all padding, one shorter than a chunk (CP=2: 4 positions), one
    full; loss tokens after a random prompt; garbage (NaN) at padding positions of every input."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([S, 3, 0, 9, 14, 6])[:B]
    pos = torch.arange(S)[None]
    prompt = torch.tensor([2, 1, 0, 4, 5, 2])[:B, None]
    mask = ((pos < lengths[:, None]) & (pos >= prompt)).float()
    nan_pad = lambda x: torch.where(pos < lengths[:, None], x, torch.full_like(x, float("nan")))  # noqa: E731
    logp = -torch.rand(B, S, generator=g, dtype=torch.float64) * 2
    batch = {
        "tokens": torch.randint(0, 50, (B, S), generator=g), "loss_mask": mask,
        "old_logprobs": nan_pad(logp + 0.3 * torch.randn(B, S, generator=g, dtype=torch.float64)),
        "ref_logprobs": nan_pad(logp + 0.2 * torch.randn(B, S, generator=g, dtype=torch.float64)),
        "rollout_logprobs": nan_pad(logp + 0.5 * torch.randn(B, S, generator=g, dtype=torch.float64)),
        "entropy": nan_pad(torch.rand(B, S, generator=g, dtype=torch.float64)),
        "advantages": (torch.randn(B, S, generator=g, dtype=torch.float64) if token_adv
                       else torch.randn(B, generator=g, dtype=torch.float64)),
    }
    s, t = local_normalisers(mask)
    batch.update(global_num_seqs=s, global_num_tokens=t)
    return logp, batch


def unsplit_and_cp(loss_fn, logp, batch, cp_size):
    """``(loss, grad, metrics)`` of the unsplit batch and the same summed over ``cp_size`` thread ranks."""
    x = logp.clone().requires_grad_(True)
    loss, metrics = loss_fn(x, batch)
    loss.backward()
    ref = (float(loss.detach()), x.grad.clone(), finalize_metrics(accumulate_metrics({}, metrics)))

    group = ThreadGroup(cp_size)
    S = logp.size(1)

    def rank(r):
        mb = cp.split_microbatch(batch, cp_size, r, cp.seq_sum_fn(reduce=group.reduce(r)))
        xr = logp.index_select(1, cp.chunk_positions(S, cp_size, r)).clone().requires_grad_(True)
        loss_r, metrics_r = loss_fn(xr, mb)
        loss_r.backward()
        return float(loss_r.detach()), xr.grad, metrics_r

    outs = group.run(rank)
    grad = cp.unsplit([o[1] for o in outs], [cp.chunk_positions(S, cp_size, r) for r in range(cp_size)])
    acc = {}
    for o in outs:
        accumulate_metrics(acc, o[2])
    return ref, (sum(o[0] for o in outs), grad, finalize_metrics(acc))


def assert_same(ref, split):
    assert split[0] == pytest.approx(ref[0], rel=1e-12, abs=1e-12)
    torch.testing.assert_close(split[1], ref[1], rtol=1e-10, atol=1e-12)
    assert split[2].keys() == ref[2].keys()
    for k in ref[2]:
        assert split[2][k] == pytest.approx(ref[2][k], rel=1e-5, abs=1e-6, nan_ok=True), k


GRPO_CASES = [
    dict(),
    dict(kl_coef=0.05, tis=True, dual_clip_c=3.0),
    dict(importance_level="sequence"),
    dict(importance_level="sequence_token", kl_coef=0.05),
    dict(importance_level="sequence", tis=True, tis_level="sequence", mismatch_seq_low=0.6, mismatch_seq_high=1.6),
    dict(mismatch_token_threshold=0.4, mismatch_mask=True, mismatch_seq_low=0.8, tis=True, tis_on_kl=True, kl_coef=0.1),
]


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-sum-token-norm"])
@pytest.mark.parametrize("case", range(len(GRPO_CASES)))
@pytest.mark.parametrize("cp_size", [2, 4])
def test_grpo_loss_cp_shares_add_up_to_the_unsplit_loss(mode, case, cp_size):
    kw = {"kl_coef": 0.0, "clip_eps_low": 0.1, "clip_eps_high": 0.15, **GRPO_CASES[case]}
    loss_fn = GRPOLoss(GRPOConfig(loss_agg_mode=mode, **kw), max_new_tokens=12)
    logp, batch = random_batch(case)
    ref, split = unsplit_and_cp(loss_fn, logp, batch, cp_size)
    assert ref[2]["response/length"] == pytest.approx(float(batch["loss_mask"].sum()) / 5)  # 5 rows with tokens
    assert_same(ref, split)


def test_grpo_token_level_advantages_gspo_token_under_cp():
    loss_fn = GRPOLoss(GRPOConfig(importance_level="sequence_token", kl_coef=0.01), max_new_tokens=12)
    logp, batch = random_batch(7, token_adv=True)
    assert_same(*unsplit_and_cp(loss_fn, logp, batch, 2))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_sft_loss_under_cp(mode):
    logp, batch = random_batch(3)
    assert_same(*unsplit_and_cp(SFTLoss(mode), logp, batch, 2))


def test_bradley_terry_loss_under_cp():
    """One score position per row (the EOS): on rank 0's or rank 1's chunk; each pair's loss counts once."""
    g = torch.Generator().manual_seed(5)
    S = 8
    scores = torch.randn(4, S, generator=g, dtype=torch.float64)
    mask = torch.zeros(4, S)
    for row, p in enumerate([7, 2, 4, 0]):  # chunks (CP=2): rank 0 holds 0,1,6,7; rank 1 holds 2..5
        mask[row, p] = 1
    batch = {"tokens": torch.zeros(4, S, dtype=torch.long), "loss_mask": mask, "global_num_seqs": torch.tensor(4.0)}
    assert_same(*unsplit_and_cp(BradleyTerryLoss(center_coef=0.01), scores, batch, 2))


def test_without_the_whole_row_sums_gspo_would_differ():
    """The test above can fail: each rank's own geometric mean (no all-reduce, local counts) gives another loss."""
    loss_fn = GRPOLoss(GRPOConfig(importance_level="sequence", kl_coef=0.0, clip_eps_low=0.1, clip_eps_high=0.15))
    logp, batch = random_batch(2)
    x = logp.clone().requires_grad_(True)
    ref = float(loss_fn(x, batch)[0].detach())
    local = 0.0
    for r in range(2):
        mb = cp.split_batch(batch, 2, r)  # no seq_num_tokens / seq_sum: each rank sees its slices as whole rows
        local += float(loss_fn(logp.index_select(1, cp.chunk_positions(16, 2, r)), mb)[0])
    assert abs(local - ref) > 1e-3
