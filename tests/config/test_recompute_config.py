"""``parallel.recompute``: what Megatron-Core 0.16.1 would refuse, or would get wrong, is refused by the config
check in one line naming the field, before any model is built; what passes maps onto Megatron's options."""
from __future__ import annotations

import pytest

from r1mega.config import load_config
from r1mega.config.base import ConfigError
from r1mega.model.builder import transformer_config


def _check(*overrides, world_size=None):
    load_config(None, list(overrides)).validate(world_size)


@pytest.mark.parametrize("overrides,match", [
    (["parallel.recompute=all"], r"parallel.recompute: got 'all', expected one of 'none', 'selective', 'full'"),
    (["parallel.recompute=full", "parallel.recompute_method=layer"], r"parallel.recompute_method: got 'layer'"),
    (["parallel.recompute=full", "parallel.recompute_num_layers=0"], r"parallel.recompute_num_layers: got 0"),
    # method and layers mean nothing without full: never silently ignored
    (["parallel.recompute=selective", "parallel.recompute_num_layers=2"],
     r"parallel.recompute_num_layers: got 2, but it is only read with recompute 'full' \(recompute is 'selective'\)"),
    (["parallel.recompute_method=block"], r"parallel.recompute_method: got 'block', but it is only read with recompute 'full'"),
    # uniform units past a stage's last layer (Megatron indexes out of its layer list)
    (["model.preset=tiny-dense", "parallel.recompute=full", "parallel.recompute_num_layers=3"],
     r"parallel.recompute_num_layers: 3 does not divide the 4 decoder layers of each pipeline stage"),
    (["model.preset=tiny-dense", "model.num_layers=6", "parallel.pipeline_parallel=2",
      "parallel.num_layers_in_first_pipeline_stage=2", "parallel.recompute=full", "parallel.recompute_num_layers=4"],
     r"parallel.recompute_num_layers: 4 does not divide the 2/4 decoder layers of each pipeline stage"),
    # Megatron asserts recompute_num_layers == 1 for the MTP layers under uniform recompute
    (["model.preset=tiny", "parallel.recompute=full", "parallel.recompute_num_layers=2"],
     r"parallel.recompute_num_layers: got 2, but Megatron-Core recomputes the MTP layers .* use 1"),
    # block leaves layers without the MoE padding mask (Megatron-Core 0.16.1)
    (["model.preset=tiny", "model.num_nextn_predict_layers=0", "parallel.recompute=full",
      "parallel.recompute_method=block", "parallel.recompute_num_layers=2"],
     r"parallel.recompute_method: 'block' with recompute_num_layers=2 keeps .* padding mask.* recompute_num_layers >= 4"),
    (["model.preset=tiny", "model.fp8=e4m3", "model.fp8_recipe=delayed", "parallel.recompute=selective"],
     r"parallel.recompute: 'selective' recomputes the norms, which Megatron-Core refuses under FP8 with .*'delayed'"),
])
def test_refused_in_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        _check(*overrides, world_size=2 if "parallel.pipeline_parallel=2" in overrides else None)
    assert "\n" not in str(e.value)


def test_accepted_layouts():
    _check("model.preset=tiny", "parallel.recompute=full")  # uniform, 1 layer: MTP included
    _check("model.preset=tiny", "model.num_nextn_predict_layers=0", "parallel.recompute=full",
           "parallel.recompute_num_layers=2")
    _check("model.preset=tiny", "parallel.recompute=full", "parallel.recompute_method=block",
           "parallel.recompute_num_layers=4")  # every layer of the stage: no layer left unmasked
    _check("model.preset=tiny-dense", "parallel.recompute=full", "parallel.recompute_method=block",
           "parallel.recompute_num_layers=1")  # dense: no router, block is fine
    _check("model.preset=tiny", "parallel.recompute=selective")
    # per stage: uneven 2/4 split, units of 2 divide both
    _check("model.preset=tiny-dense", "model.num_layers=6", "parallel.pipeline_parallel=2",
           "parallel.num_layers_in_first_pipeline_stage=2", "parallel.recompute=full",
           "parallel.recompute_num_layers=2", world_size=2)


def test_megatron_options():
    def opts(*overrides):
        cfg = load_config(None, list(overrides))
        c = transformer_config(cfg.model, cfg.parallel)
        return c.recompute_granularity, c.recompute_method, c.recompute_num_layers, c.recompute_modules

    assert opts("model.preset=tiny")[:3] == (None, None, None)
    assert opts("model.preset=tiny", "parallel.recompute=full")[:3] == ("full", "uniform", 1)
    assert opts("model.preset=tiny", "parallel.recompute=full", "parallel.recompute_method=block",
                "parallel.recompute_num_layers=4")[:3] == ("full", "block", 4)
    # selective: the planner's modules less what Megatron refuses here (moe_act needs grouped-GEMM experts: TE)
    assert opts("model.preset=tiny", "parallel.recompute=selective") == (
        "selective", None, None, ["core_attn", "layernorm", "mla_up_proj"])
    assert opts("model.preset=tiny-dense", "parallel.recompute=selective")[3] == ["core_attn", "layernorm"]


def test_stage_kinds_that_read_it():
    """Only training stages recompute; a frozen stage (eval) refuses the field in its overrides."""
    from r1mega.config.stage_fields import kinds_reading

    assert kinds_reading("parallel.recompute") == ("pretrain", "sft", "grpo", "reward_model", "distill")
    with pytest.raises(ConfigError, match=r"parallel.recompute is set in its overrides but eval stages do not read it"):
        load_config(None, ["pipeline.stages=[{name: ev, kind: eval, overrides: {parallel: {recompute: full}}}]"]).validate()
