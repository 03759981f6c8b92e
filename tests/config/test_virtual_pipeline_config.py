"""Interleaved pipeline (parallel.virtual_pipeline) layouts that Megatron would refuse, or run wrongly,
are refused up front with a ConfigError naming the field (default model: the 4-layer tiny preset)."""
import pytest

from r1mega.config import ConfigError, load_config

PP2 = ["parallel.pipeline_parallel=2"]


def error(overrides, world_size=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides), world_size=world_size)
    return str(e.value)


def test_vpp2_over_pp2_is_valid():
    cfg = load_config(None, PP2 + ["parallel.virtual_pipeline=2"], world_size=2)
    assert cfg.parallel.virtual_pipeline == 2
    load_config(None, PP2 + ["parallel.virtual_pipeline=2", "parallel.num_layers_in_first_pipeline_stage=2",
                             "parallel.num_layers_in_last_pipeline_stage=2"], world_size=2)


def test_vpp_without_pipeline_parallel():
    assert error(["parallel.virtual_pipeline=2"]) == (
        "parallel.virtual_pipeline: got 2, but pipeline_parallel=1; the interleaved schedule needs "
        "pipeline_parallel > 1 (or leave virtual_pipeline null)")


@pytest.mark.parametrize("vp", ["1", "0", "-2"])
def test_vpp_below_two(vp):
    assert error(PP2 + [f"parallel.virtual_pipeline={vp}"]).startswith(
        f"parallel.virtual_pipeline: got {vp}, expected an integer >= 2")


def test_vpp_must_divide_layers_per_stage():
    assert error(PP2 + ["parallel.virtual_pipeline=3"], world_size=2) == (
        "parallel.virtual_pipeline: 3 does not divide the 2 decoder layers of each pipeline stage "
        "(model.num_layers=4 over 2 stages): every virtual stage needs the same whole number of layers")


def test_vpp_must_divide_uneven_first_stage():
    msg = error(PP2 + ["parallel.virtual_pipeline=2", "parallel.num_layers_in_first_pipeline_stage=1",
                       "parallel.num_layers_in_last_pipeline_stage=3"])
    assert msg.startswith("parallel.virtual_pipeline: 2 does not divide parallel.num_layers_in_first_pipeline_stage=1")


def test_vpp_must_divide_remaining_layers():
    msg = error(PP2 + ["parallel.virtual_pipeline=2", "parallel.num_layers_in_first_pipeline_stage=1"])
    assert msg.startswith("parallel.virtual_pipeline: 2 does not divide the 3 decoder layers of each pipeline stage")


def test_uneven_stage_layers_must_be_positive():
    assert error(PP2 + ["parallel.num_layers_in_last_pipeline_stage=0"]) == \
        "parallel.num_layers_in_last_pipeline_stage: got 0, expected an integer > 0"


def test_pp_must_divide_layers_without_vpp():
    assert error(["parallel.pipeline_parallel=3"]).startswith(
        "parallel.pipeline_parallel: 4 decoder layers (model.num_layers=4 minus first/last-stage layers) do not split")


def test_vpp_needs_microbatches_multiple_of_pp():
    msg = error(PP2 + ["parallel.virtual_pipeline=2", "optimizer.global_batch_size=3", "optimizer.micro_batch_size=1"],
                world_size=2)
    assert msg.startswith("optimizer.global_batch_size: 3 gives 3 microbatches per step")
    assert "needs a multiple of pipeline_parallel=2" in msg
