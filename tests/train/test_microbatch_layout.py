"""How the engine splits a rank's batch into microbatches, with and without the interleaved schedule
(which needs a multiple of PP microbatches; a frozen engine would otherwise run a single one)."""
from types import SimpleNamespace

import pytest

from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.train.engine import TrainEngine


def layout(rows, parallel, mbs=None, forward_mbs=None):
    optim = OptimizerConfig(micro_batch_size=mbs, global_batch_size=8) if mbs else None
    engine = SimpleNamespace(parallel=parallel, optim_cfg=optim, forward_micro_batch_size=forward_mbs)
    return TrainEngine._microbatch_layout(engine, rows)


PP2 = ParallelConfig(pipeline_parallel=2)
VPP = ParallelConfig(pipeline_parallel=2, virtual_pipeline=2)


@pytest.mark.parametrize("rows,mbs,want", [(8, 2, (2, 4)), (3, 2, (2, 2)), (1, 4, (1, 1)), (5, None, (5, 1))])
def test_without_interleaving(rows, mbs, want):
    assert layout(rows, PP2, mbs) == want


@pytest.mark.parametrize("rows,mbs,want", [
    (8, 2, (2, 4)),      # 4 microbatches: already a multiple of PP
    (6, 2, (2, 4)),      # 3 -> 4 (one all-padding microbatch)
    (1, 2, (1, 2)),
    (8, None, (4, 2)),   # frozen engine: PP microbatches instead of one
    (3, None, (2, 2)),   # ... the last one padded
    (1, None, (1, 2)),
])
def test_interleaved_needs_multiple_of_pp(rows, mbs, want):
    mb, n = layout(rows, VPP, mbs)
    assert (mb, n) == want and n % 2 == 0 and mb * n >= rows


@pytest.mark.parametrize("rows,forward_mbs,want", [(64, None, (64, 1)), (64, 16, (16, 4)), (10, 16, (10, 1)),
                                                   (20, 16, (16, 2))])
def test_frozen_engine_forward_micro_batch_size(rows, forward_mbs, want):
    assert layout(rows, ParallelConfig(), forward_mbs=forward_mbs) == want
