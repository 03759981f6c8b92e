"""Vocab-parallel log-probs on fake tensor-parallel shards (one thread per TP rank, the all-reduces done by a
barrier): a layout whose last rank holds only padding columns (real vocabulary 100, padded to 128, TP 4: rank
3 holds columns 96..127 of which 96..99 are real; TP 8: ranks 6 and 7 hold nothing real) gives the log-probs,
entropy and gradients of the unpadded full-vocabulary softmax, with no NaN anywhere."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist


class _FakeTPGroup:
    """``dist`` as seen by :mod:`r1mega.train.logprobs`, for ``tp`` threads that each play one rank."""

    ReduceOp = dist.ReduceOp

    def __init__(self, tp: int):
        self.tp = tp
        self.local = threading.local()
        self.barrier = threading.Barrier(tp)
        self.slots: list = [None] * tp

    def get_rank(self, group=None) -> int:
        return self.local.rank

    def all_reduce(self, x, op=dist.ReduceOp.SUM, group=None) -> None:
        self.slots[self.local.rank] = x.detach().clone()
        self.barrier.wait()
        stacked = torch.stack(self.slots)
        out = stacked.amax(0) if op == dist.ReduceOp.MAX else stacked.sum(0)
        self.barrier.wait()  # every rank has read the slots before any rank writes the next ones
        x.copy_(out)


def _sharded(monkeypatch, logits, target, vocab, tp, temperature):
    from r1mega.train import logprobs as lp

    fake = _FakeTPGroup(tp)
    monkeypatch.setattr(lp, "dist", fake)
    monkeypatch.setattr(lp, "_tp_group", lambda: "tp-group")
    shards = [s.detach().clone().requires_grad_(True) for s in logits.chunk(tp, dim=-1)]
    results: list = [None] * tp
    errors: list = []

    def rank(r):
        fake.local.rank = r
        try:
            logp, ent = lp.vocab_parallel_logprobs(shards[r], target, vocab, temperature, with_entropy=True)
            logp.sum().backward()
            results[r] = (logp.detach(), ent.detach(), shards[r].grad)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)
            fake.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(tp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("tp", [4, 8])
def test_ranks_holding_only_padding_give_the_unpadded_logprobs(monkeypatch, tp):
    torch.manual_seed(0)
    vocab, padded, T = 100, 128, 1.3
    logits = torch.randn(2, 5, padded) * 3
    target = torch.tensor([[0, 5, 99, 50, 97], [96, 1, 98, 31, 63]])  # ids on the first, middle and last real shards
    full = logits[..., :vocab].detach().clone().requires_grad_(True)
    ref_logp = (full / T).log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = (full / T).softmax(-1)
    ref_ent = -(p * (full / T).log_softmax(-1)).sum(-1)
    ref_logp.sum().backward()
    ref_grad = torch.cat([full.grad, torch.zeros(2, 5, padded - vocab)], dim=-1)

    results = _sharded(monkeypatch, logits, target, vocab, tp, T)
    grads = []
    for logp, ent, grad in results:  # every rank holds the full numbers (summed over the TP group)
        torch.testing.assert_close(logp, ref_logp.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ent, ref_ent.detach(), atol=1e-5, rtol=0)
        assert torch.isfinite(grad).all()
        grads.append(grad)
    torch.testing.assert_close(torch.cat(grads, dim=-1), ref_grad, atol=1e-5, rtol=0)
