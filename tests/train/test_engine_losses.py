"""Pluggable losses through the Megatron engine: microbatching never changes the step, and the
reported loss equals the loss computed directly from the engine's own log-probs."""
from __future__ import annotations

import pytest
import torch

from r1mega.algorithms import GRPOLoss, SFTLoss
from r1mega.config.grpo import GRPOConfig
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train.batching import lm_batch
from r1mega.train.engine import TrainEngine


def _batch():
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(1, 512, (int(n),), generator=g).tolist() for n in (20, 17, 24, 11)]
    b = lm_batch(seqs, loss_from=[6, 5, 9, 4])  # response-only loss, ragged lengths
    b["advantages"] = torch.tensor([1.0, -0.5, 0.25, -0.75])
    return b


def _engine(mbs: int) -> TrainEngine:
    torch.manual_seed(0)
    return TrainEngine(get_preset("tiny", num_layers=2), ParallelConfig(),
                       OptimizerConfig(lr=1e-3, warmup_steps=0, decay_style="constant", micro_batch_size=mbs,
                                       global_batch_size=4), seed=7, mtp=False, total_steps=4)


@pytest.mark.parametrize("make_loss", [lambda: SFTLoss("seq-mean-token-mean"),
                                       lambda: GRPOLoss(GRPOConfig(kl_coef=0.01, loss_agg_mode="seq-mean-token-mean")),
                                       lambda: GRPOLoss(GRPOConfig(kl_coef=0.0, loss_agg_mode="token-mean")),
                                       # GSPO with sequence-level TIS and mask: needs whole rows per microbatch
                                       lambda: GRPOLoss(GRPOConfig(kl_coef=0.01, importance_level="sequence", tis=True,
                                                                   tis_level="sequence", mismatch_seq_high=1.2))])
def test_microbatching_does_not_change_the_step(make_loss):
    results = []
    for mbs in (1, 2, 4):
        e = _engine(mbs)
        b = _batch()
        with torch.no_grad():
            lp = e.logprobs(b)
        b["old_logprobs"] = lp + 0.05 * torch.sign(b["advantages"])[:, None] * b["loss_mask"]  # ratios != 1
        b["ref_logprobs"] = lp - 0.1 * b["loss_mask"]
        # geometric-mean trainer/rollout ratios exp(0, .1, -.05, .3): the last row is over mismatch_seq_high
        b["rollout_logprobs"] = b["old_logprobs"] - torch.tensor([0.0, 0.1, -0.05, 0.3])[:, None] * b["loss_mask"]
        direct, _ = make_loss()(lp, {**b, "global_num_seqs": torch.tensor(4.0),
                                     "global_num_tokens": b["loss_mask"].sum()})
        st = e.train_step(b, make_loss())
        results.append((st.grad_norm, float(direct)))
        after = e.logprobs(_batch())
        results[-1] += (float(after.sum()),)
    g0, d0, a0 = results[0]
    for g, d, a in results[1:]:
        assert g == pytest.approx(g0, rel=1e-5) and d == pytest.approx(d0, abs=1e-6) and a == pytest.approx(a0, rel=1e-5)
    assert g0 > 0
