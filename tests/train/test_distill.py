"""Logit distillation (distill stages with distill.alpha > 0): hand-computed loss values (T^2
scaling, response mask, padded vocabulary), microbatch invariance through the Megatron engine,
alpha=0 == SFT exactly, and the config checks."""
from __future__ import annotations

import math

import pytest
import torch

from r1mega.algorithms import SFTLoss, distill_kl_per_token, finalize_metrics
from r1mega.config.base import ConfigError
from r1mega.config.distill import DistillConfig
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train.batching import lm_batch
from r1mega.train.distill import LogitDistillLoss, vocab_parallel_distill_kl
from r1mega.train.engine import TrainEngine

LN3 = math.log(3.0)
BIG = 60.0  # padded-vocabulary columns: huge logits that must not count


def _hand_batch():
    # vocab_size 2, logits padded to 4 columns; 3 positions, the last one outside the response mask.
    s = torch.tensor([[[0.0, LN3, BIG, -BIG], [1.0, 2.0, BIG, BIG], [9.0, -9.0, 0.0, 0.0]]], requires_grad=True)
    t = torch.tensor([[[0.0, 0.0, -BIG, BIG], [1.0, 2.0, -BIG, 0.0], [-9.0, 9.0, 0.0, 0.0]]])
    logp = torch.tensor([[-1.0, -2.0, -50.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    return s, t, logp, {"loss_mask": mask, "teacher_logits": t, "global_num_tokens": mask.sum(),
                        "global_num_seqs": torch.tensor(1.0)}


def test_hand_values_mask_padded_vocab(megatron_world):
    s, t, logp, mb = _hand_batch()
    # position 0: p = [.5,.5], q = [.25,.75] -> KL = .5 ln(4/3) = 0.1438410; position 1: identical -> 0
    per_tok = vocab_parallel_distill_kl(s, t, vocab_size=2)
    torch.testing.assert_close(per_tok[0, :2], torch.tensor([0.1438410, 0.0]), atol=1e-6, rtol=0)
    loss, m = LogitDistillLoss(alpha=0.25, temperature=1.0, vocab_size=2)(logp, {**mb, "logits": s})
    kd = 0.1438410 / 2
    assert loss.item() == pytest.approx(0.75 * 1.5 + 0.25 * kd, abs=1e-6)
    f = finalize_metrics(m)
    assert f["distill/ce"] == pytest.approx(1.5) and f["distill/kd"] == pytest.approx(kd, abs=1e-6)
    assert f["distill/loss"] == pytest.approx(0.75 * 1.5 + 0.25 * kd, abs=1e-6) and f["sft/nll"] == pytest.approx(1.5)
    loss.backward()
    # d/ds = alpha * T * (q - p) / N_tokens on real columns of response positions; 0 elsewhere
    want = torch.zeros(1, 3, 4)
    want[0, 0, :2] = torch.tensor([-0.25, 0.25]) * 0.25 / 2
    torch.testing.assert_close(s.grad, want, atol=1e-7, rtol=0)
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.375, -0.375, 0.0]]))


def test_temperature_scaling_and_global_normaliser(megatron_world):
    s, t, logp, mb = _hand_batch()
    # T=2 at position 0: KL = 0.0372523, times T^2 = 0.1490091 (tests/algorithms hand value)
    loss, _ = LogitDistillLoss(alpha=1.0, temperature=2.0, vocab_size=2)(
        logp, {**mb, "logits": s, "global_num_tokens": torch.tensor(4.0)})
    assert loss.item() == pytest.approx(0.1490091 / 4, abs=1e-6)
    loss.backward()
    want = torch.zeros(1, 3, 4)
    want[0, 0, :2] = torch.tensor([-0.0669873, 0.0669873])  # T (q - p) / N = 2 * [-0.1339746, 0.1339746] / 4
    torch.testing.assert_close(s.grad, want, atol=1e-6, rtol=0)
    assert logp.grad.abs().sum() == 0  # alpha = 1: no CE gradient
    # without padding this is exactly the existing distill_kl_per_token
    x, y = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    torch.testing.assert_close(vocab_parallel_distill_kl(x, y, 7, 1.5), distill_kl_per_token(x, y, 1.5))
    with pytest.raises(ValueError, match="differ in shape"):
        vocab_parallel_distill_kl(x, y[..., :6])
    with pytest.raises(ValueError):
        LogitDistillLoss(alpha=1.5)


def _seqs_batch():
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(1, 500, (int(n),), generator=g).tolist() for n in (20, 17, 24, 11)]
    return lm_batch(seqs, loss_from=[6, 5, 9, 4])


def _student(mbs: int) -> TrainEngine:
    # vocab 500 -> padded to 512: the padded columns are live in every test below
    return TrainEngine(get_preset("tiny-dense", num_layers=2, vocab_size=500), ParallelConfig(),
                       OptimizerConfig(lr=1e-3, warmup_steps=0, decay_style="constant", micro_batch_size=mbs,
                                       global_batch_size=4), seed=7, total_steps=4)


@pytest.fixture(scope="module")
def teacher():
    """A frozen tiny MoE teacher (random weights, MTP off) as a callable on microbatches."""
    t = TrainEngine(get_preset("tiny", num_layers=2, vocab_size=500), ParallelConfig(), None, seed=11, mtp=False)
    model = t.chunks[0]

    @torch.no_grad()
    def run(mb):
        tok = mb["tokens"]
        return model(tok, torch.arange(tok.size(1)).unsqueeze(0).expand_as(tok), None)

    return run


def test_microbatching_does_not_change_the_step(teacher):
    results = []
    for mbs in (1, 2, 4):
        e = _student(mbs)
        st = e.train_step(_seqs_batch(), LogitDistillLoss(0.5, 2.0, teacher, vocab_size=500))
        after = e.logprobs(_seqs_batch())
        results.append((st.grad_norm, st.metrics["distill/loss"], st.metrics["distill/kd"], float(after.sum())))
    g0, l0, k0, a0 = results[0]
    assert g0 > 0 and k0 > 0
    for g, l, k, a in results[1:]:
        assert g == pytest.approx(g0, rel=1e-5) and l == pytest.approx(l0, rel=1e-6)
        assert k == pytest.approx(k0, rel=1e-6) and a == pytest.approx(a0, rel=1e-5)


def test_alpha_zero_is_sft_exactly(teacher):
    out = []
    for loss in (SFTLoss("token-mean"), LogitDistillLoss(0.0, 3.0, teacher, vocab_size=500)):
        e = _student(2)
        st = e.train_step(_seqs_batch(), loss)
        out.append((st.grad_norm, st.metrics["sft/nll"], e.logprobs(_seqs_batch())))
    assert out[0][0] == out[1][0] and out[0][1] == out[1][1]
    assert torch.equal(out[0][2], out[1][2])


def test_distill_config_checks():
    DistillConfig().validate_for_stage()  # alpha 0: plain SFT, no teacher needed
    with pytest.raises(ConfigError, match=r"distill.alpha.*\[0, 1\]"):
        DistillConfig(alpha=1.5).validate()
    with pytest.raises(ConfigError, match="distill.temperature"):
        DistillConfig(temperature=0.0).validate()
    with pytest.raises(ConfigError, match="distill.teacher: missing"):
        DistillConfig(alpha=0.5).validate_for_stage()


def _pipeline_cfg(tmp_path, student_model: dict, distill: dict, stages_before=True):
    from r1mega.config.loader import load_config

    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "1+1=", "response": "2"}\n')
    stages = [{"name": "big", "kind": "pretrain", "steps": 2}] if stages_before else []
    stages.append({"name": "student", "kind": "distill", "steps": 2,
                   "overrides": {"model": student_model, "data": {"train_paths": [str(data)]}, "distill": distill}})
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "pipeline": {"run_dir": str(tmp_path / "run"), "stages": stages}}))
    return lambda: load_config(str(path), [], world_size=1)


def test_distill_stage_validation(tmp_path):
    ok = _pipeline_cfg(tmp_path, {"preset": "tiny-dense"}, {"teacher": "stage:big", "alpha": 0.5})
    cfg = ok()
    assert cfg.for_stage("student").distill.alpha == 0.5
    bad_vocab = _pipeline_cfg(tmp_path, {"preset": "tiny-dense", "vocab_size": 640}, {"teacher": "stage:big", "alpha": 0.5})
    with pytest.raises(ConfigError, match=r"preset 'tiny'.*vocab_size=512.*preset 'tiny-dense'.*vocab_size=640") as e:
        bad_vocab()
    assert "stage 'student': distill.teacher" in str(e.value)
    later = _pipeline_cfg(tmp_path, {"preset": "tiny-dense"}, {"teacher": "stage:nope", "alpha": 0.5})
    with pytest.raises(ConfigError, match="distill.teacher"):
        later()
    no_teacher = _pipeline_cfg(tmp_path, {"preset": "tiny-dense"}, {"alpha": 0.5})
    with pytest.raises(ConfigError, match="stage 'student': distill.teacher: missing"):
        no_teacher()
    with pytest.raises(ConfigError, match="distill.alpha"):
        _pipeline_cfg(tmp_path, {"preset": "tiny-dense"}, {"alpha": -0.1})()
