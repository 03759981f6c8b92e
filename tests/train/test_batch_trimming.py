"""Length-sorted, trimmed microbatches: the helpers by hand, and a frozen engine's log-probs unchanged on
every loss position whatever its microbatch size (rows of very different lengths)."""
import pytest
import torch

from r1mega.train.batching import loss_lengths, take_rows, trim_positions


def _batch():
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0]]).float()
    tokens = torch.arange(24).reshape(4, 6)
    return {"tokens": tokens, "labels": tokens + 100, "loss_mask": mask, "advantages": torch.tensor([1.0, 2.0, 3.0, 4.0]),
            "global_num_tokens": torch.tensor(9.0)}


def test_loss_lengths_by_hand():
    assert loss_lengths(_batch()).tolist() == [3, 0, 5, 3]


def test_trim_cuts_every_per_token_tensor_after_the_last_loss_position():
    b = _batch()
    t = trim_positions(b)
    assert t["tokens"].shape == (4, 5) and t["labels"].shape == (4, 5) and t["loss_mask"].shape == (4, 5)
    assert torch.equal(t["tokens"], b["tokens"][:, :5]) and torch.equal(t["advantages"], b["advantages"])
    assert t["global_num_tokens"] is b["global_num_tokens"]
    rows = take_rows(b, torch.tensor([0, 3]))
    assert trim_positions(rows)["tokens"].shape == (2, 3)
    assert trim_positions(rows, seq_multiple=4)["tokens"].shape == (2, 4)   # rounded up (sequence parallel)
    assert trim_positions(take_rows(b, torch.tensor([1])))["tokens"].shape == (1, 1)  # no loss at all: one position
    assert trim_positions(b, seq_multiple=4)["tokens"].shape == (4, 6)      # never longer than the batch


def test_take_rows_orders_every_per_sequence_tensor():
    b = take_rows(_batch(), torch.tensor([2, 0]))
    assert b["advantages"].tolist() == [3.0, 1.0] and b["tokens"][0, 0] == 12 and b["loss_mask"][1].sum() == 2


def test_frozen_engine_microbatches_do_not_change_the_log_probs():
    from r1mega.config.parallel import ParallelConfig
    from r1mega.model.presets import get_preset
    from r1mega.platform.distributed import destroy
    from r1mega.train.engine import TrainEngine

    g = torch.Generator().manual_seed(0)
    B, S = 12, 40
    tokens = torch.randint(1, 512, (B, S), generator=g)
    lengths = torch.tensor([12, 39, 14, 20, 13, 15, 38, 11, 16, 12, 25, 13])
    pos = torch.arange(S)[None]
    mask = ((pos >= 8) & (pos < lengths[:, None])).float()
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": mask}
    out = {}
    try:
        for fmb in (None, 4, 5):
            e = TrainEngine(get_preset("tiny", num_layers=2), ParallelConfig(), None, seed=3, mtp=False,
                            forward_micro_batch_size=fmb)
            out[fmb] = e.logprobs(batch)
            destroy()
    finally:
        destroy()
    for fmb in (4, 5):
        torch.testing.assert_close(out[fmb] * mask, out[None] * mask, atol=2e-5, rtol=0)
        assert (out[fmb] * mask).abs().sum() > 1.0
        assert (out[fmb][mask == 0][..., None] == 0).float().mean() > 0.5  # skipped positions come back as 0
