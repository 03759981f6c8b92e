"""Corrupt, incomplete and incompatible checkpoints get clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train.checkpoint import META, CheckpointError, CheckpointManager
from r1mega.train.engine import TrainEngine


def _engine(**model):
    return TrainEngine(get_preset("tiny", num_layers=2, **model), ParallelConfig(),
                       OptimizerConfig(micro_batch_size=2, global_batch_size=2), total_steps=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    path = CheckpointManager(root).save(_engine(), 3, extra={"data": 12})
    return root, path


def test_roundtrip_meta_and_latest(saved):
    root, path = saved
    mgr = CheckpointManager(root)
    assert mgr.latest() == path and (root / "latest").read_text() == "step_00000003"
    meta = mgr.load(_engine())
    assert meta["step"] == 3 and meta["extra"] == {"data": 12}


def test_incompatible_model_shape_names_the_field(saved):
    root, path = saved
    with pytest.raises(CheckpointError, match=r"does not fit the model: hidden_size: checkpoint 128 vs model 64"):
        CheckpointManager(root).load(_engine(hidden_size=64), path)


def test_missing_shard_is_a_clear_error(saved, tmp_path):
    import shutil

    root, path = saved
    broken = tmp_path / "step_00000003"
    shutil.copytree(path, broken)
    shards = sorted(broken.glob("*.distcp"))
    assert shards, list(broken.iterdir())
    shards[0].unlink()
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint .*step_00000003"):
        CheckpointManager(tmp_path).load(_engine(), broken)


def test_incomplete_checkpoint_is_refused_and_skipped(saved, tmp_path):
    import shutil

    root, path = saved
    shutil.copytree(path, tmp_path / "step_00000003")
    shutil.copytree(path, tmp_path / "step_00000005")
    (tmp_path / "step_00000005" / META).unlink()  # a save that died before its marker
    mgr = CheckpointManager(tmp_path)
    assert mgr.latest() == tmp_path / "step_00000003"
    with pytest.raises(CheckpointError, match="incomplete"):
        mgr.load(_engine(), tmp_path / "step_00000005")


def test_corrupt_meta(saved, tmp_path):
    import shutil

    root, path = saved
    shutil.copytree(path, tmp_path / "step_00000003")
    (tmp_path / "step_00000003" / META).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        CheckpointManager(tmp_path).load(_engine(), tmp_path / "step_00000003")


def test_nothing_to_load(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        CheckpointManager(tmp_path).load(_engine())
