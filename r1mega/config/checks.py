"""Checks that span sections: the parallel layout against the model, batch sizes against data
parallelism, the rollout engine against the model, and that every input file exists.

All run from :meth:`RunConfig.validate`, once, before any heavy work.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from .base import ConfigError, check, check_choice
from .stage import StageConfig, stage_ref
from .stage_fields import reads

DEVICES = ("auto", "cpu", "cuda")


def validate_run(cfg, world_size: Optional[int] = None, stage: Optional[StageConfig] = None,
                 earlier: Sequence[str] = ()) -> None:
    """Validate one resolved config (the top level, or one stage's view of it)."""
    check_choice(cfg.device, DEVICES, "device")
    check(cfg.cpu_threads is None or (isinstance(cfg.cpu_threads, int) and not isinstance(cfg.cpu_threads, bool)
                                      and cfg.cpu_threads >= 1),
          "cpu_threads", f"got {cfg.cpu_threads!r}, expected a whole number >= 1 or null")
    cfg.model.validate("model")
    cfg.parallel.validate(world_size, "parallel")
    if cfg.parallel.context_parallel > 1:  # needs Transformer Engine attention: the platform layer knows
        from r1mega.platform.device import check_context_parallel

        check_context_parallel(cfg.parallel.context_parallel, "parallel.context_parallel")
    for name in ("optimizer", "data", "rollout", "logging", "checkpoint", "grpo", "rewards", "rejection", "eval",
                 "reward_model"):
        validate = getattr(getattr(cfg, name), "validate", None)
        if callable(validate):
            validate(name)
    if cfg.data.tokenizer_path is None:  # the built-in tokenizer must fit the model's embedding
        check(cfg.data.tokenizer_vocab_size <= cfg.model.vocab_size, "data.tokenizer_vocab_size",
              f"{cfg.data.tokenizer_vocab_size} tokens do not fit model.vocab_size={cfg.model.vocab_size}; "
              "set model.vocab_size to at least that, or use a smaller built-in tokenizer")
    check_layout(cfg.model, cfg.parallel, cfg.data.seq_length, world_size)
    check_recompute(cfg.model, cfg.parallel, mtp=stage is None or stage.kind in MTP_KINDS)
    if stage is None or reads(stage.kind, "optimizer.global_batch_size"):
        check_batch(cfg.optimizer, cfg.parallel, world_size)
    if stage is not None and stage.kind == "grpo":
        check_grpo_batch(cfg.grpo, cfg.parallel, world_size)
    if stage is None or stage.generates:
        check_rollout(cfg, world_size, rl=stage is not None and stage.kind == "grpo")
    if stage is not None and stage.kind == "grpo":
        check_model_reward(cfg, stage, earlier)
    if stage is not None and stage.kind == "reward_model":
        from r1mega.data.templates import TEMPLATES

        check(cfg.data.template in TEMPLATES, "data.template",
              f"{cfg.data.template!r}: a reward_model stage writes its synthetic preference pairs in a built-in "
              f"template ({', '.join(sorted(TEMPLATES))}); the tokenizer's chat template is not supported there yet")
    check_files(cfg, stage, earlier)


def check_layout(model, par, seq_length: int, world_size: Optional[int]) -> None:
    """What Megatron-Core needs of TP/PP/CP/EP given the model shape."""
    tp, pp, ep = par.tensor_parallel, par.pipeline_parallel, par.expert_parallel
    check(model.num_attention_heads % tp == 0, "parallel.tensor_parallel",
          f"{tp} does not divide model.num_attention_heads={model.num_attention_heads} (each TP rank needs whole heads)")
    if not model.mla:
        kv = model.num_key_value_heads or model.num_attention_heads
        check(kv % tp == 0, "parallel.tensor_parallel", f"{tp} does not divide model.num_key_value_heads={kv}")
    if model.is_moe:
        check(model.n_routed_experts % ep == 0, "parallel.expert_parallel",
              f"{ep} does not divide model.n_routed_experts={model.n_routed_experts} (each EP rank needs whole experts)")
        check(tp == 1 or par.sequence_parallel, "parallel.sequence_parallel",
              f"must be true for a MoE model with tensor_parallel={tp} (Megatron-Core refuses MoE + TP without sequence parallelism)")
    else:
        check(ep == 1, "parallel.expert_parallel", f"got {ep}, but the model has no routed experts; expected 1")
    first, last = par.num_layers_in_first_pipeline_stage, par.num_layers_in_last_pipeline_stage
    if (first is not None or last is not None) and pp == 1:
        raise ConfigError("parallel.num_layers_in_first_pipeline_stage", "an uneven pipeline split needs pipeline_parallel > 1")
    middle_layers = model.num_layers - (first or 0) - (last or 0)
    middle_stages = pp - (first is not None) - (last is not None)
    check(middle_layers >= 0 and (middle_stages > 0 or middle_layers == 0), "parallel.num_layers_in_first_pipeline_stage",
          f"first={first} + last={last} layers do not fit model.num_layers={model.num_layers} over {pp} stages")
    for name, n in (("first", first), ("last", last)):
        if n is not None:
            check(n > 0, f"parallel.num_layers_in_{name}_pipeline_stage", f"got {n}, expected an integer > 0")
    vp = par.virtual_pipeline or 1
    stages = max(1, middle_stages)
    check(middle_layers % stages == 0, "parallel.pipeline_parallel",
          f"{middle_layers} decoder layers (model.num_layers={model.num_layers} minus first/last-stage layers) do not "
          f"split evenly over {stages} stages (equal layers per middle stage)")
    check(middle_layers % (stages * vp) == 0, "parallel.virtual_pipeline",
          f"{vp} does not divide the {middle_layers // stages} decoder layers of each pipeline stage "
          f"(model.num_layers={model.num_layers} over {stages} stage{'s' if stages > 1 else ''}"
          f"{' besides the first/last' if first or last else ''}): "
          "every virtual stage needs the same whole number of layers")
    for name, n in (("first", first), ("last", last)):
        if n is not None:
            check(n % vp == 0, "parallel.virtual_pipeline",
                  f"{vp} does not divide parallel.num_layers_in_{name}_pipeline_stage={n} (every virtual stage of the "
                  f"{name} pipeline stage needs the same whole number of layers)")
    cp = par.context_parallel
    if cp > 1:  # 2 x CP equal chunks per sequence, each chunk's share split again over TP by sequence parallelism
        multiple = 2 * cp * (tp if par.sequence_parallel else 1)
        check(seq_length % multiple == 0, "parallel.context_parallel",
              f"data.seq_length={seq_length} is not divisible by 2 x CP{' x TP' if par.sequence_parallel else ''} = "
              f"{multiple} (each sequence is cut into 2 x {cp} equal chunks"
              f"{', split again over the tensor-parallel ranks' if par.sequence_parallel else ''})")
    elif par.sequence_parallel:
        check(seq_length % tp == 0, "parallel.sequence_parallel", f"data.seq_length={seq_length} is not divisible by tensor_parallel={tp}")
    check(seq_length <= model.max_position_embeddings, "data.seq_length",
          f"{seq_length} exceeds model.max_position_embeddings={model.max_position_embeddings}")


MTP_KINDS = ("pretrain", "sft", "distill")  # the stage kinds that train the model's MTP layers (RL drops them)


def stage_layer_counts(model, par) -> list:
    """The decoder layers of each model chunk (one per pipeline stage, or per virtual stage with
    interleaving): first-stage, middle-stage and last-stage counts, as Megatron's TransformerBlock builds them."""
    pp, vp = par.pipeline_parallel, par.virtual_pipeline or 1
    first, last = par.num_layers_in_first_pipeline_stage, par.num_layers_in_last_pipeline_stage
    middle_stages = pp - (first is not None) - (last is not None)
    counts = [n for n in (first, last) if n is not None]
    if middle_stages:
        counts.append((model.num_layers - (first or 0) - (last or 0)) // middle_stages)
    return sorted({n // vp for n in counts})


def check_recompute(model, par, mtp: bool) -> None:
    """What Megatron-Core 0.16.1 refuses or gets wrong with ``parallel.recompute``, refused before it builds a model."""
    if par.recompute == "selective":  # its layernorm module (r1mega.model.builder) under FP8
        check(not (model.fp8 and model.fp8_recipe == "delayed"), "parallel.recompute",
              f"'selective' recomputes the norms, which Megatron-Core refuses under FP8 with model.fp8_recipe="
              "'delayed'; use another fp8_recipe or recompute 'full'")
    if par.recompute != "full":
        return
    n, counts = par.recompute_num_layers, stage_layer_counts(model, par)
    per = "/".join(map(str, counts))
    if par.recompute_method == "uniform":
        check(all(c % n == 0 for c in counts), "parallel.recompute_num_layers",
              f"{n} does not divide the {per} decoder layers of each pipeline {'virtual ' * bool(par.virtual_pipeline)}"
              f"stage: uniform recompute re-runs units of {n} layers from each stage's first (Megatron would run "
              "past the stage's last layer); use a divisor")
        check(n == 1 or not (mtp and model.num_nextn_predict_layers), "parallel.recompute_num_layers",
              f"got {n}, but Megatron-Core recomputes the MTP layers (model.num_nextn_predict_layers="
              f"{model.num_nextn_predict_layers}, trained by {', '.join(MTP_KINDS)} stages) in uniform units of 1 "
              "layer only; use 1")
    elif model.is_moe:
        check(n >= max(counts), "parallel.recompute_method",
              f"'block' with recompute_num_layers={n} keeps the activations of the other layers of a stage ({per} "
              "layers each), and Megatron-Core 0.16.1 runs those layers without the MoE padding mask: their "
              "routers would count padding in the expert-bias counts and the balance loss (gradients change); "
              f"use 'uniform', or recompute_num_layers >= {max(counts)}")


def check_batch(opt, par, world_size: Optional[int]) -> None:
    """optimizer.global_batch_size splits into microbatches (of the kinds that read it: not GRPO)."""
    check(opt.global_batch_size % opt.micro_batch_size == 0, "optimizer.global_batch_size",
          f"{opt.global_batch_size} is not a multiple of micro_batch_size={opt.micro_batch_size}")
    if world_size is None:
        return
    dp = par.resolved_dp(world_size)
    step = opt.micro_batch_size * dp
    check(opt.global_batch_size % step == 0, "optimizer.global_batch_size",
          f"{opt.global_batch_size} is not a multiple of micro_batch_size*DP = {opt.micro_batch_size}*{dp} = {step}")
    if par.virtual_pipeline:
        n, pp = opt.global_batch_size // step, par.pipeline_parallel
        check(n % pp == 0, "optimizer.global_batch_size",
              f"{opt.global_batch_size} gives {n} microbatches per step (global_batch_size / (micro_batch_size*DP) = "
              f"{opt.global_batch_size}/{step}); the interleaved schedule (parallel.virtual_pipeline={par.virtual_pipeline}) "
              f"needs a multiple of pipeline_parallel={pp}")


def check_grpo_batch(g, par, world_size: Optional[int]) -> None:
    """A GRPO step's prompts (with their groups) and its minibatches split evenly over the data-parallel ranks."""
    if world_size is None:
        return
    dp = par.resolved_dp(world_size)
    check(g.prompts_per_step % dp == 0, "grpo.prompts_per_step",
          f"{g.prompts_per_step} prompts do not split over {dp} data-parallel ranks (each rank trains on whole groups)")
    if g.minibatch_size is not None:
        check(g.minibatch_size % dp == 0, "grpo.minibatch_size",
              f"got {g.minibatch_size}, expected a multiple of the {dp} data-parallel ranks")


def check_rollout(cfg, world_size: Optional[int], rl: bool) -> None:
    ro, model = cfg.rollout, cfg.model
    if ro.engine == "vllm":
        rtp = ro.tensor_parallel
        check(model.num_attention_heads % rtp == 0, "rollout.tensor_parallel",
              f"{rtp} does not divide model.num_attention_heads={model.num_attention_heads}")
        if not model.mla:
            kv = model.num_key_value_heads or model.num_attention_heads
            check(kv % rtp == 0, "rollout.tensor_parallel", f"{rtp} does not divide model.num_key_value_heads={kv}")
        if world_size is not None:
            check(world_size % rtp == 0, "rollout.tensor_parallel",
                  f"{rtp} does not divide the world size {world_size} (vLLM runs colocated on the training ranks)")
    check(ro.engine != "megatron" or cfg.parallel.context_parallel == 1, "rollout.engine",
          f"'megatron' generates with the trainer's model, whose attention under parallel.context_parallel="
          f"{cfg.parallel.context_parallel} expects split sequences (Megatron's inference has no context parallelism); "
          "use 'vllm'")
    max_len = ro.max_model_len or cfg.data.seq_length
    check(ro.max_new_tokens < max_len, "rollout.max_new_tokens",
          f"{ro.max_new_tokens} leaves no room for the prompt within {max_len} tokens (rollout.max_model_len or data.seq_length)")
    if rl and ro.router_replay != "none":
        check(model.is_moe, "rollout.router_replay", f"{ro.router_replay!r} replays MoE routing, but the model has no "
              "routed experts (model.n_routed_experts=0); expected 'none' for a dense model")
        check(ro.router_replay == "r3" or cfg.parallel.pipeline_parallel == 1, "rollout.router_replay",
              f"'r2' records the routing in the trainer's log-prob forward, which needs parallel.pipeline_parallel=1 "
              f"(got {cfg.parallel.pipeline_parallel}); use 'r3' or 'none'")
    grpo_temp = getattr(cfg.grpo, "temperature", None)
    if rl and grpo_temp is not None:
        check(ro.temperature == grpo_temp, "rollout.temperature",
              f"{ro.temperature} differs from grpo.temperature={grpo_temp}; GRPO log-probs must use the sampling temperature")


def check_model_reward(cfg, stage: StageConfig, earlier: Sequence[str]) -> None:
    """RL with general (non-reasoning) prompts needs a reward model; 'stage:NAME' must be an earlier
    reward_model stage."""
    rw = cfg.rewards
    ref = getattr(rw, "reward_model", None)
    if "nonreasoning" in cfg.data.tasks and rw.uses_model("general") and not ref:
        raise ConfigError("rewards.reward_model", "data.tasks has 'nonreasoning' (general prompts, scored by a reward "
                          "model in all-scenario RL) but no reward model is set; add a reward_model stage and "
                          "rewards.reward_model: stage:NAME (or drop 'nonreasoning' from data.tasks)")
    if not ref:
        return
    sref = stage_ref(ref)
    name = sref[0] if sref else ref
    names = cfg.pipeline.names()
    if sref or name in names:
        if name not in earlier:
            raise ConfigError("rewards.reward_model", f"{ref!r}: stage {name!r} "
                              + ("does not run before this one" if name in names else "is not in the pipeline"))
        kind = cfg.pipeline.get(name).kind
        check(kind == "reward_model", "rewards.reward_model", f"{ref!r}: stage {name!r} is a {kind} stage, "
              "expected a reward_model stage")
    else:
        check(os.path.exists(ref), "rewards.reward_model", f"checkpoint not found: {ref!r} (neither a path nor an "
              "earlier stage)")


def check_files(cfg, stage: Optional[StageConfig], earlier: Sequence[str]) -> None:
    """Every input path exists (relative to the working directory); 'stage:NAME/...' must name an earlier stage."""
    names = cfg.pipeline.names()
    data = cfg.data
    if data.tokenizer_path is not None:
        _check_path(data.tokenizer_path, "data.tokenizer_path", earlier, names)
    for field in ("train_paths", "eval_paths"):
        for i, path in enumerate(getattr(data, field)):
            _check_path(path, f"data.{field}[{i}]", earlier, names)
    if stage is not None and stage.init_from is not None:
        ref = stage_ref(stage.init_from)
        name = ref[0] if ref else stage.init_from
        if name in earlier:
            return
        if ref or name in names:
            raise ConfigError("init_from", f"stage {name!r} does not run before this one"
                              + (f"; earlier stages: {', '.join(earlier)}" if earlier else ""))
        check(os.path.exists(stage.init_from), "init_from",
              f"checkpoint not found: {stage.init_from!r} (neither a path nor an earlier stage)")


def _check_path(path: str, where: str, earlier: Sequence[str], names: Sequence[str]) -> None:
    ref = stage_ref(path)
    if ref is None:
        check(os.path.exists(path), where, f"file not found: {path!r}")
    elif ref[0] not in earlier:
        raise ConfigError(where, f"{path!r} refers to stage {ref[0]!r}, which "
                          + ("does not run before this one" if ref[0] in names else "is not in the pipeline"))
