"""Rejection sampling (R1 stage 3): turn the reasoning-RL model's samples into SFT data.

Sample k completions per reasoning prompt, keep those that are correct AND readable (proper
<think>/<answer> format, chain of thought in the target language only, no over-long paragraph,
no code block, bounded length), deduplicate per prompt, then mix in non-reasoning examples.
Writes ``samples.jsonl`` for the next SFT stage, which R1 starts again from the *base* model, and
``rejection_stats.json``. Each row holds ``messages`` (the question and the full answer, think/answer tags
included: text free of the sampling template, which SFT and distill stages train on, templated with their own
tokenizer and template), ``prompt``/``response`` (as the sampling model saw and wrote them), source, gold, ...
Prompts: the first ``rejection.num_prompts`` of the stream of ``data.sources`` / ``data.train_paths`` (seeded
by ``rejection.seed``; see :mod:`r1mega.data.mixture`), or of the built-in tasks when no source is set; general rows have no rule-based gold and are rejected as incorrect.
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from pathlib import Path

import torch.distributed as dist


def readability_reasons(text: str, n_tokens: int, comps: dict, rc) -> list[str]:
    """Why a *correct* response is still rejected (empty list = accepted)."""
    reasons = []
    if comps.get("format", 0.0) < 1.0:
        reasons.append("format")
    if comps.get("language", 1.0) < rc.min_language_consistency:
        reasons.append("language_mixing")
    if any(len(p) > rc.max_paragraph_chars for p in re.split(r"\n\s*\n", text)):
        reasons.append("long_paragraph")
    if rc.reject_code_blocks and "```" in text:
        reasons.append("code_block")
    if n_tokens > rc.max_response_tokens:
        reasons.append("too_long")
    return reasons


def select_samples(completions, comps: list, items: list, rc, prefilled_think: bool = False) -> tuple[list, Counter]:
    """The rows rejection sampling keeps from ``completions`` (``comps``: their reward components,
    ``items``: the prompts they answer) and per-reason counts: correct (unless ``rc.require_correct``
    is off), readable (:func:`readability_reasons`), distinct, at most ``rc.max_per_prompt`` per prompt.
    ``prefilled_think``: the prompts ended inside ``<think>`` (the row's ``messages`` get the tag back)."""
    from r1mega.data.chat import sample_messages

    stats: Counter = Counter()
    kept_per_prompt: dict[int, list[str]] = {}
    rows = []
    for c, comp in zip(completions, comps):
        stats["candidates"] += 1
        incorrect = comp.get("accuracy", 0.0) < 1.0
        if incorrect and rc.require_correct:
            stats["rejected/incorrect"] += 1
            continue
        reasons = readability_reasons(c.text, len(c.token_ids), comp, rc)
        if reasons:
            for r in reasons:
                stats[f"rejected/{r}"] += 1
            continue
        seen = kept_per_prompt.setdefault(c.prompt_index, [])
        norm = " ".join(c.text.split())
        if norm in seen or len(seen) >= rc.max_per_prompt:
            stats["rejected/duplicate_or_cap"] += 1
            continue
        seen.append(norm)
        item = items[c.prompt_index]
        question = getattr(item, "question", None)
        question = item.text if question is None else question  # (items made without one)
        rows.append({"messages": sample_messages(question, c.text.strip(), prefilled_think), "prompt": item.text,
                     "response": c.text.strip(), "source": "reasoning", "gold": item.gold,
                     "correct": not incorrect, **item.meta})
        stats["accepted/incorrect"] += incorrect
    stats["accepted/reasoning"] = len(rows)
    return rows, stats


def run_stage(cfg, stage_name: str) -> dict:
    from r1mega.data.chat import sample_messages
    from r1mega.data.mixture import load_sources, make_prompts, make_renderer
    from r1mega.data.tasks import generate_nonreasoning
    from r1mega.data.templates import rewards_for_template
    from r1mega.data.jsonl import write_jsonl
    from r1mega.pipeline.grpo import gather_rewards
    from r1mega.rewards import RewardComputer, RewardSample
    from r1mega.rollout import Sampling, make_engine
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.engine import TrainEngine
    from r1mega.train.entry import load_tokenizer_for, resolve_init_checkpoint

    stage = cfg.stage(stage_name)
    cfg = cfg.for_stage(stage)
    rc = cfg.rejection
    sources = load_sources(cfg.data, cfg.resolve_path)  # users' prompt files: checked before any model loads
    out = Path(cfg.stage_dir(stage))
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer_for(cfg, out)
    renderer = make_renderer(cfg.data, tok)  # think_prefilled and the stop ids follow the template
    stage2 = rewards_for_template(dataclasses.replace(cfg.rewards, preset="r1_stage2"), renderer)
    init = resolve_init_checkpoint(cfg, stage.init_from)
    if init is None:
        from r1mega.config.base import ConfigError

        raise ConfigError(f"pipeline.stages[{stage.name}].init_from", "rejection sampling needs the RL model to sample from")
    # the readability/correctness rewards of stage 2; the workers start while the model loads and samples
    with RewardComputer(stage2).warm_up() as computer:
        policy = TrainEngine(cfg.model, cfg.parallel, None, seed=rc.seed, mtp=False)
        CheckpointManager(init.parent).load(policy, init, load_optimizer=False)
        engine = make_engine(cfg, policy, **({"load_trainer_weights": True} if cfg.rollout.engine == "vllm" else {}),
                             max_batch=rc.num_prompts * rc.samples_per_prompt)
        sampling = Sampling.from_config(cfg.rollout, renderer, n=rc.samples_per_prompt, temperature=rc.temperature,
                                        top_p=rc.top_p, seed=rc.seed)
        # the first num_prompts of the stream (every rank the same list; the engine splits it over replicas)
        items = make_prompts(cfg.data, tok, sources, seed=rc.seed).batch(0, rc.num_prompts)
        try:
            ro = engine.generate([i.ids for i in items], sampling, n=rc.samples_per_prompt)
            samples = [RewardSample(response=c.text, task_type=items[c.prompt_index].task_type,
                                    gold=items[c.prompt_index].gold, prompt=items[c.prompt_index].text,
                                    metadata=items[c.prompt_index].reward_metadata(),
                                    response_tokens=len(c.token_ids), max_tokens=sampling.max_new_tokens,
                                    truncated=c.finish_reason == "length")
                       for c in ro.completions]
            _, _, comps = gather_rewards(computer, samples)
            if dist.is_initialized():
                dist.barrier()
        finally:
            engine.shutdown()  # (vLLM: also ends the process group; only local work follows)
    rows, stats = select_samples(ro.completions, comps, items, rc, prefilled_think=renderer.prefills_think)
    render = renderer.render
    if rc.worked_solutions:
        from r1mega.data.tasks import generate_problems

        # templated solutions written in their question's language: a zh_prompt_fraction share asked in Chinese
        tasks = [t for t in cfg.data.tasks if t in ("arith", "word")] or ["arith", "word"]
        zh_tasks = [t for t in tasks if t in cfg.data.zh_prompt_tasks]
        n_zh = round(rc.worked_solutions * cfg.data.zh_prompt_fraction * len(zh_tasks) / len(tasks))
        for lang, total in (("en", rc.worked_solutions - n_zh), ("zh", n_zh)):
            family = tasks if lang == "en" else zh_tasks
            for i, task in enumerate(family):
                n = total // len(family) + (i < total % len(family))
                for p in generate_problems(task, n, seed=rc.seed, split="train", difficulty=cfg.data.difficulties,
                                           lang=lang, unique=False):
                    rows.append({"messages": sample_messages(p.prompt, p.solution().strip(), False),
                                 "prompt": render(p.prompt)[0], "response": p.solution().strip(),
                                 "source": "worked_solution", "gold": p.answer, "task": task,
                                 "difficulty": p.difficulty, "lang": lang})
        stats["accepted/worked_solutions"] = rc.worked_solutions
    n_non = round(len(rows) * rc.nonreasoning_fraction / max(1e-9, 1 - rc.nonreasoning_fraction))
    for p in generate_nonreasoning(n_non, seed=rc.seed, split="train", difficulty=[1, 2], unique=False):
        rows.append({"messages": sample_messages(p.prompt, p.solution("en").strip(), False),
                     "prompt": render(p.prompt)[0], "response": p.solution("en").strip(),
                     "source": "nonreasoning", "gold": p.answer, "task": p.task})
    stats["accepted/nonreasoning"] = n_non
    if not rows:
        from r1mega.config.base import ConfigError

        raise ConfigError(f"pipeline.stages[{stage.name}]", f"rejection sampling accepted 0 of {stats['candidates']} "
                          f"candidates ({dict(stats)}); the model it samples from ({init}) solves too few prompts: "
                          "train that stage longer, use easier data.difficulties, or add rejection.worked_solutions")
    random.Random(rc.seed).shuffle(rows)
    from r1mega.platform.distributed import dist_info

    if dist_info().rank == 0:  # every rank holds every row (rewards were gathered)
        write_jsonl(out / "samples.jsonl", rows)
        (out / "rejection_stats.json").write_text(json.dumps(dict(stats), indent=1))
    return {"samples": len(rows), "accept_rate": stats["accepted/reasoning"] / max(1, stats["candidates"]),
            **{k: float(v) for k, v in stats.items()}}
