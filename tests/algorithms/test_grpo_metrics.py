"""Metric convention: (sum, count) pairs, /max and /min singletons, exact combination."""
import math
import pytest
import torch

from r1mega.algorithms.metrics import (accumulate_metrics, all_reduce_metrics, finalize_metrics, masked_max_metric,
                                       masked_mean_metric, masked_min_metric, mismatch_metrics, reduce_op, sum_count)


def test_reduce_op_by_suffix():
    assert reduce_op("ratio/max") == "max" and reduce_op("mismatch/abs_diff_max") == "max"
    assert reduce_op("ratio/min") == "min"
    assert reduce_op("ratio/mean") == "sum" and reduce_op("clip/high_frac") == "sum"


def test_masked_helpers_and_empty():
    v = torch.tensor([[1.0, float("nan"), 3.0]])
    m = torch.tensor([[1, 0, 1]])
    assert masked_mean_metric(v, m).tolist() == [4.0, 2.0]
    assert masked_max_metric(v, m).tolist() == [3.0]
    assert masked_min_metric(v, m).tolist() == [1.0]
    empty = torch.zeros(1, 3)
    assert masked_max_metric(v, empty).tolist() == [-math.inf]
    assert masked_min_metric(v, empty).tolist() == [math.inf]
    f = finalize_metrics({"a/mean": masked_mean_metric(v, empty), "a/max": masked_max_metric(v, empty)})
    assert math.isnan(f["a/mean"]) and math.isnan(f["a/max"])


def test_accumulate_and_finalize():
    acc = {}
    accumulate_metrics(acc, {"x/mean": sum_count(3.0, 2), "x/sq_mean": sum_count(5.0, 2), "x/max": torch.tensor([2.0]),
                             "x/min": torch.tensor([1.0])})
    accumulate_metrics(acc, {"x/mean": sum_count(6.0, 1), "x/sq_mean": sum_count(36.0, 1), "x/max": torch.tensor([6.0]),
                             "x/min": torch.tensor([math.inf])})
    f = finalize_metrics(acc)
    # values 1, 2, 6: mean 3, mean of squares 41/3, population std sqrt(41/3 - 9) = sqrt(14/3)
    assert f["x/mean"] == 3.0 and f["x/max"] == 6.0 and f["x/min"] == 1.0
    assert f["x/std"] == pytest.approx(math.sqrt(14 / 3))
    assert "x/sq_mean" not in f
    # a bare [total] SUM metric (the engine's evaluation loss) adds up and is reported as is
    acc = {}
    accumulate_metrics(acc, {"loss": torch.tensor([0.25])})
    accumulate_metrics(acc, {"loss": torch.tensor([0.5])})
    assert finalize_metrics(acc) == {"loss": 0.75}


def test_mismatch_metrics_hand_values():
    trainer = torch.tensor([[-1.0, -2.0, 0.0]])
    rollout = torch.tensor([[-1.2, -1.0, float("nan")]])
    f = finalize_metrics(mismatch_metrics(trainer, rollout, torch.tensor([[1, 1, 0]]), threshold=0.5))
    # diffs +0.2, -1.0 ; k3: exp(.2)-.2-1 = 0.0214028 ; exp(-1)+1-1 = 0.3678794
    assert f["mismatch/abs_diff_mean"] == pytest.approx(0.6)
    assert f["mismatch/abs_diff_max"] == pytest.approx(1.0)
    assert f["mismatch/k3"] == pytest.approx((0.0214028 + 0.3678794) / 2, abs=1e-6)
    assert f["mismatch/over_threshold_frac"] == 0.5


def test_all_reduce_without_process_group_is_identity(monkeypatch):
    # Megatron tests of the same pytest session keep a default group of one alive (tests/conftest.py):
    # the no-group branch is reached by hiding it, so the test does not depend on the order of the suite.
    import torch.distributed as dist
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    m = {"a": sum_count(1.0, 1)}
    assert all_reduce_metrics(m) is m


def test_all_reduce_real_gloo_group(tmp_path):
    """The real torch.distributed API on a one-rank gloo group (in-process, no spawn)."""
    import torch.distributed as dist
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        m = {"b/mean": sum_count(3.0, 2), "a/max": torch.tensor([4.0]), "a/min": torch.tensor([-1.0]), "loss": torch.tensor([0.5])}
        assert finalize_metrics(all_reduce_metrics(m)) == {"b/mean": 1.5, "a/max": 4.0, "a/min": -1.0, "loss": 0.5}
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_ranks_simulated(monkeypatch):
    """Packing and op choice for two ranks: all_reduce is replaced by a combine with rank 1's
    buffer (what rank 1 packs from its own metrics, same sorted layout)."""
    import torch.distributed as dist

    def metrics(rank):
        return {"b/mean": sum_count(1.0 + rank, 1), "a/max": torch.tensor([float(rank * 5)]),
                "a/min": torch.tensor([float(3 - rank)]), "c_frac": sum_count(rank, 2), "z_max": torch.tensor([-rank * 1.0])}

    other = metrics(1)
    ops = {dist.ReduceOp.SUM: ("sum", torch.add), dist.ReduceOp.MAX: ("max", torch.maximum),
           dist.ReduceOp.MIN: ("min", torch.minimum)}

    def fake_all_reduce(flat, op, group=None):
        kind, fn = ops[op]
        names = sorted(k for k in other if reduce_op(k) == kind)
        flat.copy_(fn(flat, torch.cat([other[k].reshape(-1) for k in names])))

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    out = finalize_metrics(all_reduce_metrics(metrics(0)))
    assert out == {"b/mean": 1.5, "a/max": 5.0, "a/min": 2.0, "c_frac": 0.25, "z_max": 0.0}
