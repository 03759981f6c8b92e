"""The context-parallel rules of a config (r1mega.config.checks, r1mega.platform.device): without Transformer
Engine CP > 1 is refused (tests/config/test_stage_fields.py); with it (simulated here: TE cannot load on a CPU
machine) the sequence length must split into 2 x CP (x TP with sequence parallelism) equal chunks, the data-
parallel size is the world over TP x PP x CP, and the Megatron rollout engine is refused."""
import importlib

import pytest

from r1mega.config import ConfigError, load_config

device = importlib.import_module("r1mega.platform.device")  # (the package's name `device` is a function)


@pytest.fixture
def with_te(monkeypatch):
    monkeypatch.setattr(device, "have_transformer_engine", lambda: True)


def error(*overrides, world_size=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides), world_size=world_size)
    return str(e.value)


def test_without_te_the_platform_refuses_it_at_engine_start_too():
    from r1mega.config.parallel import ParallelConfig
    from r1mega.platform.distributed import init_model_parallel

    with pytest.raises(ConfigError, match=r"^parallel.context_parallel: got 2: context parallelism needs Transformer "
                                          r"Engine attention"):
        init_model_parallel(ParallelConfig(context_parallel=2))  # before any process group or model is built


def test_sequence_length_splits_into_2cp_chunks(with_te):
    cfg = load_config(None, ["parallel.context_parallel=2", "data.seq_length=512"], world_size=2)
    assert cfg.parallel.context_parallel == 2 and cfg.parallel.resolved_dp(2) == 1
    assert error("parallel.context_parallel=2", "data.seq_length=510") == (
        "parallel.context_parallel: data.seq_length=510 is not divisible by 2 x CP = 4 (each sequence is cut into "
        "2 x 2 equal chunks)")


def test_with_sequence_parallelism_each_chunk_splits_over_tp(with_te):
    over = ["parallel.context_parallel=2", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true"]
    load_config(None, over + ["data.seq_length=512"], world_size=4)
    assert error(*over, "data.seq_length=516") == (
        "parallel.context_parallel: data.seq_length=516 is not divisible by 2 x CP x TP = 8 (each sequence is cut "
        "into 2 x 2 equal chunks, split again over the tensor-parallel ranks)")


def test_world_size_counts_the_cp_ranks(with_te):
    cfg = load_config(None, ["parallel.context_parallel=2", "data.seq_length=512"], world_size=4)
    assert cfg.parallel.resolved_dp(4) == 2
    assert error("parallel.context_parallel=2", "data.seq_length=512", "parallel.data_parallel=4", world_size=4) == (
        "parallel.data_parallel: world size 4 != TP*PP*CP*DP = 1*1*2*4 = 8")
    assert "TP*PP*CP = 1*1*2 = 2 does not divide it" in error("parallel.context_parallel=2", "data.seq_length=512",
                                                               world_size=3)


def test_megatron_rollout_engine_is_refused(with_te):
    from r1mega.config.checks import check_rollout

    cfg = load_config(None, ["parallel.context_parallel=2", "data.seq_length=512"])
    cfg.rollout.engine = "megatron"
    with pytest.raises(ConfigError, match=r"^rollout.engine: 'megatron' generates with the trainer's model, whose "
                                          r"attention under parallel.context_parallel=2 expects split sequences"):
        check_rollout(cfg, 2, rl=True)
