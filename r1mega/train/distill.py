"""Logit distillation on Megatron: a frozen teacher, a vocab-parallel KL, and the mixed loss.

``distill`` stages with ``distill.alpha > 0`` train the student on::

    loss = (1 - alpha) * CE(student, data) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))

token-mean over the response tokens (``loss_mask``) of the global batch, the CE term being
exactly :class:`r1mega.algorithms.SFTLoss` ('token-mean') and the KL term
:func:`r1mega.algorithms.distill_kl_per_token`.

* :class:`Teacher`: a frozen Megatron model (``TrainEngine`` with ``optim=None``, MTP off) whose
  architecture is read from its checkpoint (a MoE teacher may teach a dense student). It runs on
  the student's own microbatch inside the student's loss, so only one microbatch of teacher
  logits ever exists (pipeline_parallel=1 only; see docs/distill.md).
* :func:`vocab_parallel_distill_kl`: under tensor parallelism both logit tensors are sharded over
  the vocabulary; the KL is computed from the shards with three all-reduces of ``[b, s]`` tensors
  (never gathering ``[b, s, V]``). Padded vocabulary columns (``model.vocab_size`` rounded up to
  a multiple of 128) are masked out of both softmaxes.
* :class:`LogitDistillLoss`: the engine-facing loss (reads the logits the engine passes in
  ``mb['logits']`` because it sets ``needs_logits``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from r1mega.algorithms.aggregation import aggregate_loss
from r1mega.algorithms.distill_loss import distill_kl_per_token
from r1mega.algorithms.metrics import masked_mean_metric
from r1mega.algorithms.sft_loss import SFTLoss
from r1mega.train.logprobs import _sum_tp, _tp_group


def _mask_padded_vocab(x: Tensor, start: int, vocab_size: Optional[int]) -> Tensor:
    v_local = x.size(-1)
    if vocab_size is None or start + v_local <= vocab_size:
        return x
    cols = torch.arange(start, start + v_local, device=x.device)
    return x.masked_fill(cols >= vocab_size, float("-inf"))


def vocab_parallel_distill_kl(student_logits: Tensor, teacher_logits: Tensor, vocab_size: Optional[int] = None,
                              temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` per position ``[...]`` from logits
    ``[..., V_local]`` sharded over the TP group (identical on every TP rank). ``vocab_size`` (the
    real, unpadded size) masks the padding columns out of both softmaxes. Differentiable w.r.t.
    the student logits; the teacher is detached. Without TP this is
    :func:`r1mega.algorithms.distill_kl_per_token` on the masked logits."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}, expected > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits "
                         "differ in shape (same vocabulary and tensor-parallel layout needed)")
    group = _tp_group()
    v_local = student_logits.size(-1)
    start = (dist.get_rank(group) if group is not None else 0) * v_local
    s = _mask_padded_vocab(student_logits.float(), start, vocab_size)
    t = _mask_padded_vocab(teacher_logits.detach().float(), start, vocab_size)
    if group is None:
        return distill_kl_per_token(s, t, temperature)
    s, t = s / temperature, t / temperature
    with torch.no_grad():  # teacher: log p over the whole vocabulary from the shards
        mt = t.max(dim=-1).values
        dist.all_reduce(mt, op=dist.ReduceOp.MAX, group=group)
        t_shift = t - mt.unsqueeze(-1)
        zt = t_shift.exp().sum(-1)
        dist.all_reduce(zt, group=group)
        log_p = t_shift - zt.log().unsqueeze(-1)
        p = log_p.exp()
        ms = s.detach().max(dim=-1).values
        dist.all_reduce(ms, op=dist.ReduceOp.MAX, group=group)
    s_shift = s - ms.unsqueeze(-1)
    log_zs = _sum_tp(s_shift.exp().sum(-1), group).log()
    # KL = sum_v p_v (log p_v - s_v + log Z_s) = [sum_v p_v (log p_v - s_v)] + log Z_s, as sum_v p_v = 1.
    # log Z_s must only enter replicated (post-all-reduce) terms: _sum_tp's backward is the identity,
    # which is right only when what consumes the all-reduced value is the same on every TP rank.
    cross = torch.where(p > 0, p * (log_p - s_shift), torch.zeros_like(p)).sum(-1)
    return (_sum_tp(cross, group) + log_zs) * (temperature ** 2)


class LogitDistillLoss:
    """``(1-alpha) * SFT token-mean CE + alpha * token-mean T^2 KL(teacher || student)`` on ``loss_mask``.

    Engine interface: ``loss(logprobs, mb) -> (loss, metrics)`` with ``mb['logits']`` (the
    student's vocab-parallel logits, set by the engine because ``needs_logits``) and the teacher's
    logits either in ``mb['teacher_logits']`` or from ``teacher(mb)``. Both terms are normalised by
    the global token count, so microbatch losses sum to the global-batch loss.

    Metrics: ``distill/ce``, ``distill/kd``, ``distill/loss`` (token means; ``distill/loss`` is
    the objective), plus :class:`SFTLoss`'s ``sft/nll`` and ``response/length``.
    """

    needs_logits = True

    def __init__(self, alpha: float, temperature: float = 1.0, teacher: Optional[Callable[[dict], Tensor]] = None,
                 vocab_size: Optional[int] = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha}, expected a value in [0, 1]")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}, expected > 0")
        self.alpha, self.temperature, self.teacher, self.vocab_size = float(alpha), float(temperature), teacher, vocab_size
        self.sft = SFTLoss("token-mean")

    def __call__(self, logprobs: Tensor, mb: dict) -> tuple[Tensor, dict]:
        ce_loss, metrics = self.sft(logprobs, mb)
        t_logits = mb.get("teacher_logits")
        if t_logits is None:
            if self.teacher is None:
                raise ValueError("LogitDistillLoss needs mb['teacher_logits'] or a teacher")
            t_logits = self.teacher(mb)
        if "logits" not in mb:
            raise ValueError("LogitDistillLoss needs the student logits in mb['logits'] (engine with needs_logits)")
        kd = vocab_parallel_distill_kl(mb["logits"], t_logits, self.vocab_size, self.temperature)
        mask = mb["loss_mask"].bool()
        kd_loss = aggregate_loss(kd, mask, "token-mean", global_num_tokens=mb.get("global_num_tokens"))
        loss = (1.0 - self.alpha) * ce_loss + self.alpha * kd_loss
        with torch.no_grad():
            nll = -logprobs.detach().float()
            kd_d = kd.detach()
            total = (1.0 - self.alpha) * nll + self.alpha * kd_d
            metrics.update({"distill/ce": masked_mean_metric(nll, mask), "distill/kd": masked_mean_metric(kd_d, mask),
                            "distill/loss": masked_mean_metric(total, mask)})
        return loss, metrics


class Teacher:
    """A frozen Megatron teacher loaded from a checkpoint; ``teacher(mb)`` -> vocab-parallel logits
    ``[b, S, V_local]`` of ``mb['tokens']`` (no gradient).

    The architecture is the checkpoint's own (``r1mega_meta.json``), so the teacher preset may differ
    from the student's; the vocabulary must match ``student_model`` (same tokenizer)."""

    def __init__(self, checkpoint: str | Path, student_model, parallel, seed: int = 1234, name: Optional[str] = None):
        from r1mega.config.distill import check_vocab
        from r1mega.config.model import ModelConfig
        from r1mega.config.schema import build
        from r1mega.train.checkpoint import CheckpointManager
        from r1mega.train.engine import TrainEngine

        if parallel.pipeline_parallel != 1:
            raise ValueError("logit distillation supports pipeline_parallel=1 only (the teacher runs inside the student's loss)")
        self.path = Path(checkpoint)
        meta = CheckpointManager.read_meta(self.path)
        self.model_cfg = build(ModelConfig, dict(meta.get("model") or {}), "teacher checkpoint model")
        check_vocab(self.model_cfg, student_model, name or str(self.path))
        self.engine = TrainEngine(self.model_cfg, parallel, None, seed=seed, mtp=False)
        CheckpointManager(self.path.parent).load(self.engine, self.path, load_optimizer=False)
        self.model = self.engine.chunks[0]

    @torch.no_grad()
    def __call__(self, mb: dict) -> Tensor:
        tokens = mb["tokens"]
        pos = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0).expand_as(tokens)
        self.model.eval()
        return self.model(tokens, pos, None)

