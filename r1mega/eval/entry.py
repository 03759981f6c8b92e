"""`r1mega eval CONFIG [--stage NAME] [overrides]`: evaluate a checkpoint on the configured benchmarks.

What is evaluated (first match):

* ``eval.checkpoint`` (a stage name or a checkpoint directory), when set;
* an ``eval`` stage: its ``init_from`` (an earlier stage's latest checkpoint, or a checkpoint directory);
* a training stage: its own latest checkpoint.

Without ``--stage`` the pipeline's only ``eval`` stage is used, else its only stage. The checkpoint is loaded
into a frozen Megatron model (``TrainEngine(..., optim=None, mtp=False)``), the rollout engine of
``rollout.engine`` is built on it with :func:`r1mega.rollout.make_engine` (vLLM: refitted once from that model;
megatron: generates with it), every rank generates (collective), and rank 0 grades, votes and writes
``eval.json`` (+ ``eval_samples.jsonl``) into the stage's output directory and prints the table.

Eval settings: see :mod:`r1mega.eval.config` (``cfg.eval`` once RunConfig has the section, else
``$R1MEGA_EVAL_CONFIG``, else defaults).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from r1mega.config.base import ConfigError


FILE_PROMPT_KINDS = ("grpo", "rejection_sampling", "eval")  # stages whose data.sources / paths are prompt files


def _rank0() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return True
    return not dist.is_initialized() or dist.get_rank() == 0


def pick_stage(cfg, name: Optional[str] = None):
    """The stage to evaluate: ``name``; else the only eval stage; else the only stage; None without stages."""
    if name:
        return cfg.stage(name)
    stages = cfg.pipeline.stages
    if not stages:
        return None
    evals = [s for s in stages if s.kind == "eval"]
    if len(evals) == 1:
        return evals[0]
    if len(stages) == 1:
        return stages[0]
    raise ConfigError("--stage", f"pick the stage to evaluate with --stage (stages: {', '.join(cfg.pipeline.names())})")


def resolve_checkpoint(cfg, stage, eval_cfg) -> Path:
    """The checkpoint directory to evaluate (see the module docstring)."""
    from r1mega.train.entry import resolve_init_checkpoint

    if eval_cfg.checkpoint:
        return resolve_init_checkpoint(cfg, eval_cfg.checkpoint)
    if stage is None:
        raise ConfigError("eval.checkpoint", "the config has no pipeline stages: say what to evaluate with "
                                             "eval.checkpoint (a checkpoint directory)")
    if stage.kind == "eval":
        if not stage.init_from:
            raise ConfigError(f"pipeline.stages[{stage.name}].init_from",
                              "an eval stage needs init_from: the stage or checkpoint directory to evaluate")
        return resolve_init_checkpoint(cfg, stage.init_from)
    return resolve_init_checkpoint(cfg, stage.name)


def output_dir(cfg, stage) -> Path:
    return Path(cfg.stage_dir(stage)) if stage is not None else Path(cfg.run_dir) / "eval"


def check_lengths(prompt_ids: list, max_new_tokens: int, max_len: int) -> None:
    """Every prompt plus max_new_tokens must fit the engine's context."""
    longest = max((len(p) for p in prompt_ids), default=0)
    if longest + max_new_tokens > max_len:
        raise ConfigError("eval.max_new_tokens", f"{max_new_tokens} new tokens after the longest eval prompt "
                                                 f"({longest} tokens) exceed the engine's {max_len}-token context "
                                                 "(rollout.max_model_len or data.seq_length)")


def build_engine(cfg, checkpoint: Path, max_batch: Optional[int] = None):
    """(rollout engine, tokenizer) with the weights of ``checkpoint``; collective over the ranks. ``max_batch``:
    the most sequences one generate call asks for (sizes vLLM-CPU's KV cache)."""
    from r1mega.data.tokenizer import load_tokenizer, run_tokenizer_dir
    from r1mega.rollout import make_engine
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.engine import TrainEngine

    policy = TrainEngine(cfg.model, cfg.parallel, None, seed=cfg.data.seed, mtp=False)
    CheckpointManager(Path(checkpoint).parent).load(policy, checkpoint, load_optimizer=False)
    tok = load_tokenizer(run_tokenizer_dir(cfg.data))
    if cfg.rollout.engine == "vllm":  # a fresh vLLM engine holds dummy weights: refit it once from the policy
        engine = make_engine(cfg, trainer_engine=policy, load_trainer_weights=True, max_batch=max_batch)
    else:  # megatron: generates with the policy's own weights
        engine = make_engine(cfg, trainer_engine=policy, tokenizer=tok)
    return engine, tok


def evaluate(cfg, stage_name: Optional[str] = None, engine=None, tokenizer=None,
             reward_computer=None) -> Optional[dict]:
    """Run the eval of one stage; returns the summary rows on rank 0 (None elsewhere). ``engine`` and
    ``tokenizer`` may be given (tests, or a caller that already holds them, e.g. a pipeline that evaluates
    its live policy); the checkpoint is then not loaded. ``reward_computer``: grade with this one (its pool)
    instead of starting a new one."""
    from r1mega.eval.benchmark import load_benchmarks
    from r1mega.eval.config import load_eval_config
    from r1mega.eval.report import print_table, write_json, write_samples
    from r1mega.eval.runner import EvalRunner

    stage = pick_stage(cfg, stage_name)
    rcfg = cfg.for_stage(stage) if stage is not None else cfg
    ecfg = load_eval_config(rcfg)
    out = output_dir(cfg, stage)
    say = (lambda msg: print(f"[r1mega] {msg}", flush=True)) if _rank0() else (lambda msg: None)

    files = []
    if stage is None or stage.kind in FILE_PROMPT_KINDS:  # users' eval files, or the training files' held-out rows
        from r1mega.eval.benchmark import source_problems

        files = source_problems(rcfg.data, cfg.resolve_path, ecfg.n_problems)
    # With the user's own eval data, the built-in synthetic benchmarks run only when asked for by name.
    default = files and ecfg.benchmarks == type(ecfg)().benchmarks
    problems = ([] if default else load_benchmarks(ecfg, resolve_path=cfg.resolve_path)) + files
    if not problems:
        raise ConfigError("eval.benchmarks", f"no problems in {ecfg.benchmarks} (n_problems={ecfg.n_problems})")
    names = list(dict.fromkeys(p.benchmark for p in problems))
    ckpt = resolve_checkpoint(cfg, stage, ecfg) if engine is None else None
    say(f"eval {stage.name if stage else ''}: {len(problems)} questions from {', '.join(names)}, "
        f"k={ecfg.k}" + (f", checkpoint {ckpt}" if ckpt else ""))
    if tokenizer is None:
        from r1mega.data.tokenizer import load_tokenizer, run_tokenizer_dir

        tokenizer = load_tokenizer(run_tokenizer_dir(rcfg.data))
    t0 = time.perf_counter()
    owns_engine = engine is None
    probe = EvalRunner.from_config(None, tokenizer, ecfg, rcfg)
    max_len = rcfg.rollout.max_model_len or rcfg.data.seq_length
    check_lengths(probe.prompt_ids(problems), probe.sampling_args["max_new_tokens"], max_len)
    own_rc = None
    if reward_computer is None and _rank0():  # (rank 0 grades) its workers start while the engine loads
        from r1mega.rewards import RewardComputer

        reward_computer = own_rc = RewardComputer(probe.rewards_cfg).warm_up()
    if owns_engine:
        engine, _ = build_engine(rcfg, ckpt, max_batch=min(len(problems), ecfg.batch_prompts) * ecfg.k)
        say(f"eval: engine {getattr(engine, 'name', type(engine).__name__)} ready in {time.perf_counter() - t0:.1f} s")
    try:
        with EvalRunner.from_config(engine, tokenizer, ecfg, rcfg, log=say,
                                    reward_computer=reward_computer) as runner:
            groups = runner.generate(problems)
            if not _rank0():
                return None
            results = runner.score(problems, groups)
    finally:
        if own_rc is not None:
            own_rc.close()
        if owns_engine:
            engine.shutdown()
    results.stats["wall_seconds"] = time.perf_counter() - t0
    extra = {"stage": stage.name if stage else None, "checkpoint": str(ckpt) if ckpt else None,
             "benchmarks": names, "engine": getattr(engine, "name", type(engine).__name__)}
    path = write_json(results, out / ecfg.output, extra)
    if ecfg.save_samples:
        write_samples(results, out / (Path(ecfg.output).stem + "_samples.jsonl"))
    print_table(results)
    say(f"eval: wrote {path}")
    return results.summary


def _teardown() -> None:
    """Tear down Megatron groups / the process group if this run set them up (importing Megatron just to find
    out costs seconds, so a config error exits fast)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if "megatron.core.parallel_state" in sys.modules or (dist is not None and dist.is_initialized()):
        from r1mega.platform.distributed import destroy

        destroy()


def main(cfg, args) -> int:
    try:
        evaluate(cfg, getattr(args, "stage", None))
    finally:
        _teardown()
    return 0


__all__ = ["main", "evaluate", "pick_stage", "resolve_checkpoint", "build_engine", "output_dir", "check_lengths"]


def run_stage(cfg, stage_name: str) -> dict:
    """Pipeline hook (``kind: eval``): evaluate the stage's checkpoint; flat metrics for the manifest."""
    summary = evaluate(cfg, stage_name) or {}
    return {f"{bench}/{k}": float(v) for bench, row in summary.items() if isinstance(row, dict)
            for k, v in row.items() if isinstance(v, (int, float))}
