"""Length-trimmed microbatches: rows sorted longest first and each microbatch cut after its longest row
(``lengths``), with padding masked out of the MoE router statistics. Nothing a loss, a log-prob reader
or the expert-bias update sees may change: not the trimming, not extra padding, not the row order."""
import pytest
import torch

from r1mega.algorithms import GRPOLoss, SFTLoss
from r1mega.config.grpo import GRPOConfig
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train.batching import lm_batch, pad_batch, take_rows, trim_positions
from r1mega.train.engine import TrainEngine

LENGTHS = [12, 39, 14, 20, 13, 15, 38, 11, 16, 12, 25, 13]


def _batch(lengths=LENGTHS):
    g = torch.Generator().manual_seed(0)
    b = lm_batch([torch.randint(1, 512, (n,), generator=g).tolist() for n in lengths], loss_from=[6] * len(lengths))
    b["advantages"] = torch.linspace(-1.0, 1.0, len(lengths))
    b["row"] = torch.arange(len(lengths))
    return b


def _engine(mbs=None, **kw):
    torch.manual_seed(0)
    optim = OptimizerConfig(lr=1e-3, warmup_steps=0, decay_style="constant", micro_batch_size=mbs,
                            global_batch_size=len(LENGTHS)) if mbs else None
    return TrainEngine(get_preset("tiny", num_layers=2), ParallelConfig(), optim, seed=3, mtp=False, total_steps=4, **kw)


def _untrimmed(mp):
    """Every engine runs its microbatches at the batch's full length, rows unsorted (the padding mask stays)."""
    run = TrainEngine._run
    mp.setattr(TrainEngine, "_run", lambda self, *a, **kw: run(self, *a, **{**kw, "trim": False}))


def test_helpers_by_hand():
    b = {"tokens": torch.arange(24).reshape(4, 6), "loss_mask": torch.ones(4, 6), "lengths": torch.tensor([3, 0, 5, 2]),
         "advantages": torch.tensor([1.0, 2.0, 3.0, 4.0]), "global_num_tokens": torch.tensor(9.0)}
    t = trim_positions(b)
    assert t["tokens"].shape == (4, 5) and t["loss_mask"].shape == (4, 5) and torch.equal(t["tokens"], b["tokens"][:, :5])
    assert t["advantages"] is b["advantages"] and t["global_num_tokens"] is b["global_num_tokens"]
    rows = take_rows(b, torch.tensor([3, 0]))
    assert rows["lengths"].tolist() == [2, 3] and rows["advantages"].tolist() == [4.0, 1.0] and rows["tokens"][0, 0] == 18
    assert trim_positions(rows)["tokens"].shape == (2, 3)
    assert trim_positions(rows, seq_multiple=4)["tokens"].shape == (2, 4)   # rounded up (sequence parallel)
    assert trim_positions(take_rows(b, torch.tensor([1])))["tokens"].shape == (1, 1)  # all padding: one position
    assert trim_positions(b, seq_multiple=4)["tokens"].shape == (4, 6)      # never longer than the batch
    assert pad_batch(b, rows_multiple=3)["lengths"].tolist() == [3, 0, 5, 2, 0, 0]  # added rows: all padding


def test_frozen_engine_log_probs_do_not_depend_on_microbatches():
    b = _batch()
    lengths = b["lengths"]
    real = torch.arange(b["tokens"].size(1))[None] < lengths[:, None]
    out = {}
    for fmb in (None, 4, 5):
        out[fmb] = _engine(forward_micro_batch_size=fmb).logprobs(b)
    whole = _engine(forward_micro_batch_size=4).logprobs({k: v for k, v in b.items() if k != "lengths"})  # untrimmed
    for got in (out[4], out[5], whole):
        torch.testing.assert_close(got[real], out[None][real], atol=2e-5, rtol=0)
    assert (out[4][~real] == 0).all() and (out[None][~real] == 0).all()  # padding positions come back as 0
    assert out[4][real].abs().sum() > 1.0


def _step(engine, batch, loss):
    """Train one step; returns (metrics, grad norm, router token counts, sequence aux loss per layer)."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    counts = []
    finalize = engine.config.finalize_model_grads_func

    def spy(*a, **kw):  # the counts before finalize_model_grads turns them into the bias update (and zeroes them)
        counts.extend(m.local_tokens_per_expert.clone() for m, _, _ in engine._router_state())
        return finalize(*a, **kw)

    engine.config.finalize_model_grads_func = spy
    st = engine.train_step(batch, loss)
    engine.config.finalize_model_grads_func = finalize
    aux = get_moe_layer_wise_logging_tracker()["seq_load_balancing_loss"]["values"].clone()
    return st.metrics, st.grad_norm, torch.stack(counts), aux


def _grpo():
    return GRPOLoss(GRPOConfig(kl_coef=0.0, loss_agg_mode="seq-mean-token-mean"))


def _with_old(engine, b):
    with torch.no_grad():
        lp = engine.logprobs(b)
    return {**b, "old_logprobs": lp + 0.05 * torch.sign(b["advantages"])[:, None] * b["loss_mask"]}


def test_trimmed_sorted_train_step_matches_untrimmed():
    runs = []
    for trimmed in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if not trimmed:
                _untrimmed(mp)
            e = _engine(mbs=4)
            runs.append(_step(e, _with_old(e, _batch()), _grpo()) + (e.logprobs(_batch()),))
    (m, g, c, a, after), (m0, g0, c0, a0, after0) = runs
    assert g == pytest.approx(g0, rel=1e-5) and g > 0
    assert m["loss/pg"] == pytest.approx(m0["loss/pg"], abs=1e-6)
    assert torch.equal(c, c0) and c.sum() > 0  # the expert-bias token counts: padding never counted
    torch.testing.assert_close(a, a0, rtol=1e-5, atol=0)  # sequence aux loss (r1mega.platform.megatron_moe_padding)
    torch.testing.assert_close(after, after0, atol=2e-5, rtol=0)  # the same weights after the step


@pytest.mark.parametrize("trimmed", [True, False])
def test_router_statistics_ignore_extra_padding(trimmed):
    """Extra padding positions and all-padding rows change neither the router's token counts nor its aux loss."""
    lengths = [12, 39, 14, 20, 13, 15]
    runs = []
    for extra in (False, True):
        b = _batch(lengths)
        if extra:  # 7 more padding positions, 2 more rows of padding only
            b = pad_batch(pad_batch(b, seq_multiple=b["tokens"].size(1) + 7), rows_multiple=8)
            b["global_num_seqs"] = torch.tensor(6.0)  # (the loss normalisers are the same rows' anyway)
        with pytest.MonkeyPatch.context() as mp:
            if not trimmed:
                _untrimmed(mp)
            runs.append(_step(_engine(mbs=4), b, SFTLoss()))
    (m, g, c, a), (m0, g0, c0, a0) = runs
    assert torch.equal(c, c0) and c.sum() == 2 * sum(lengths)  # one MoE layer, top-2: every real token twice
    torch.testing.assert_close(a, a0, rtol=1e-5, atol=0)
    assert a.sum() > 0 and m["sft/nll"] == pytest.approx(m0["sft/nll"], rel=1e-6) and g == pytest.approx(g0, rel=1e-5)


def test_a_pairwise_loss_keeps_its_rows_in_order():
    seen = {}

    class Recorder:
        def __init__(self, pairs):
            self.pairs_rows = pairs

        def __call__(self, logprobs, mb):
            seen.setdefault(self.pairs_rows, []).append((mb["row"].tolist(), logprobs.size(1)))
            return (logprobs * mb["loss_mask"]).sum() * 0.0, {}

    e = _engine(mbs=4)
    for pairs in (True, False):
        e.train_step(_batch(), Recorder(pairs))
    rows = [r for got, _ in seen[True] for r in got]
    assert rows == list(range(len(LENGTHS)))                             # in order, pairs together
    assert [w for _, w in seen[True]] == [39, 38, 25]                    # each microbatch still cut to its rows
    assert [r for got, _ in seen[False] for r in got][:2] == [1, 6]      # (the others are sorted longest first)


def test_sequence_aux_loss_is_megatrons_without_padding():
    """The per-row sequence aux loss (r1mega.platform.megatron_moe_padding) equals Megatron's own when no
    position is padding, and a row of padding only adds nothing."""
    from megatron.core.transformer.moe.moe_utils import compute_routing_scores_for_aux_loss

    router = next(m for c in _engine().chunks for m in c.modules() if hasattr(m, "_apply_seq_aux_loss"))
    got = []
    router.attach_and_log_load_balancing_loss = lambda probs, coeff, aux, *a, **kw: got.append(aux) or probs
    S, E = 7, router.config.num_moe_experts
    logits = torch.randn(S, 3, E)
    padded = torch.cat([logits, torch.randn(S, 1, E)], 1)  # a 4th row, all padding
    for lg, mask in ((logits, None), (logits, torch.zeros(S, 3, dtype=torch.bool)),
                     (padded, torch.arange(4).expand(S, 4) == 3)):
        flat = mask.reshape(-1) if mask is not None else None
        rmap, scores = compute_routing_scores_for_aux_loss(lg.reshape(-1, E), router.topk, "sigmoid", padding_mask=flat)
        router._apply_seq_aux_loss(lg, scores, rmap, S, lg.size(1), with_padding_mask=mask is not None)
    torch.testing.assert_close(got[1], got[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[2], got[0] * 3 / 4, rtol=1e-6, atol=0)  # the mean over 4 rows, one of them 0
