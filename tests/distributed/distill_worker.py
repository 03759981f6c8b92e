"""Logit distillation at a given parallel layout, for the parity test (run under torchrun or python).

    distill_worker.py --make-init DIR --out OUT.json           (world of 1: writes teacher/student step-0 weights)
    distill_worker.py --layout tp=2,sp=1 --init DIR --out OUT.json

A tiny MoE teacher (loaded by r1mega.train.distill.Teacher from its checkpoint, resharded) and a
tiny-dense student, vocabulary 500 (padded to 512), 3 steps of (1-a) CE + a T^2 KL. Under TP the
worker also checks vocab_parallel_distill_kl (values and gradients) against the gathered
single-tensor computation.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from worker import parse_layout  # noqa: E402

from r1mega.algorithms import distill_kl_per_token  # noqa: E402
from r1mega.config.optimizer import OptimizerConfig  # noqa: E402
from r1mega.config.parallel import ParallelConfig  # noqa: E402
from r1mega.model.presets import get_preset  # noqa: E402
from r1mega.train.batching import dp_shard, lm_batch  # noqa: E402
from r1mega.train.checkpoint import CheckpointManager  # noqa: E402
from r1mega.train.distill import LogitDistillLoss, Teacher, vocab_parallel_distill_kl  # noqa: E402
from r1mega.train.engine import TrainEngine  # noqa: E402

VOCAB = 500
TEACHER = dict(num_layers=2, vocab_size=VOCAB, num_nextn_predict_layers=0)
STUDENT = dict(num_layers=2, vocab_size=VOCAB)


def batch():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, VOCAB, (int(n),), generator=g).tolist() for n in (32, 27, 30, 21, 32, 18, 25, 32)]
    return lm_batch(seqs, loss_from=[8, 5, 10, 4, 12, 3, 6, 9])


def check_kl_shards() -> float:
    """max |sharded - gathered| over per-token KL and student-logit gradients (0 without TP)."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return 0.0
    r = ps.get_tensor_model_parallel_rank()
    g = torch.Generator().manual_seed(3)
    s_full = torch.randn(2, 5, 512, generator=g) * 3
    t_full = torch.randn(2, 5, 512, generator=g) * 3
    w = torch.randn(2, 5, generator=g)
    ref_s = s_full.clone().requires_grad_(True)
    ref = distill_kl_per_token(ref_s[..., :VOCAB], t_full[..., :VOCAB], 2.0)
    (ref * w).sum().backward()
    n = 512 // tp
    s_loc = s_full[..., r * n:(r + 1) * n].clone().requires_grad_(True)
    got = vocab_parallel_distill_kl(s_loc, t_full[..., r * n:(r + 1) * n], VOCAB, 2.0)
    (got * w).sum().backward()
    return max(float((got - ref).abs().max()), float((s_loc.grad - ref_s.grad[..., r * n:(r + 1) * n]).abs().max()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", default="")
    ap.add_argument("--init")
    ap.add_argument("--make-init")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    par = parse_layout(a.layout)
    init = Path(a.make_init or a.init)
    if a.make_init:
        t = TrainEngine(get_preset("tiny", **TEACHER), ParallelConfig(), None, seed=99, mtp=False)
        CheckpointManager(init / "teacher").save(t, 0)
    teacher = Teacher(init / "teacher" / "step_00000000", get_preset("tiny-dense", **STUDENT), par, seed=1)
    oc = OptimizerConfig(lr=3e-3, warmup_steps=0, decay_style="constant", micro_batch_size=2, global_batch_size=8)
    student = TrainEngine(get_preset("tiny-dense", **STUDENT), par, oc, seed=1234, total_steps=10)
    if a.make_init:
        CheckpointManager(init / "student").save(student, 0)
    else:
        CheckpointManager(init / "student").load(student, load_optimizer=False)
    loss = LogitDistillLoss(0.5, 2.0, teacher, vocab_size=VOCAB)
    dp_rank, dp_size = student.dp_rank_size()
    out = {"losses": [], "kd": [], "grad_norms": [], "kl_shard_err": check_kl_shards()}
    for _ in range(a.steps):
        st = student.train_step(dp_shard(batch(), dp_rank, dp_size), loss)
        out["losses"].append(st.metrics["distill/loss"])
        out["kd"].append(st.metrics["distill/kd"])
        out["grad_norms"].append(st.grad_norm)
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
    from r1mega.platform.distributed import destroy

    destroy(barrier=True)  # exiting with live gloo groups can abort
