"""Held-out accuracy of a pretrained (base) checkpoint on the built-in arith/word tasks.

    .venv/bin/python tools/heldout_accuracy.py                       # runs/tiny/pretrain, latest checkpoint
    .venv/bin/python tools/heldout_accuracy.py --run-dir runs/x/pretrain --n 60 --k 8 --difficulties 1 2

For each (task, difficulty): ``--n`` held-out problems (``generate_problems(task, n, seed=7, split="test",
difficulty=d)``, the hash-based held-out split that the pretraining corpus never contains), prompted in the
R1-Zero template, generation stopped at ``</answer>``. Reports

* greedy accuracy (temperature 0, one sample) and its format rate;
* sampled pass@1 and pass@k (temperature 1.0, top-p 1, ``--k`` samples per problem; unbiased estimator);
* the copy rate (share of single-operation problems whose greedy first step restates the question) and, for
  multi-step problems (level 2 and up), how often the model works step by step vs answers directly, and how
  accurate each mode is (the gap R1-Zero's RL can exploit).

The checkpoint is loaded into a frozen Megatron model (``TrainEngine(..., optim=None, mtp=False)``) and the
vLLM engine (default; refitted once from it) or the Megatron rollout engine generates; grading is the rewards' accuracy/format
(:class:`r1mega.eval.runner.EvalRunner` + :class:`r1mega.rewards.RewardComputer`). ``--json`` writes the rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples/tiny/pretrain.yaml"))
    ap.add_argument("--run-dir", default=None, help="the stage directory (default: the config's pretrain stage dir)")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint directory (default: the latest in RUN_DIR)")
    ap.add_argument("--n", type=int, default=60, help="held-out problems per task and difficulty")
    ap.add_argument("--k", type=int, default=8, help="samples per problem at temperature 1.0 (0: greedy only)")
    ap.add_argument("--difficulties", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tasks", nargs="+", default=["arith", "word"])
    ap.add_argument("--lang", choices=("en", "zh"), default="en", help="the language the questions are asked in")
    ap.add_argument("--split", choices=("test", "train"), default="test",
                    help="test: held-out problems (default); train: training-split problems (recall, for comparison)")
    ap.add_argument("--show", type=int, default=6, help="greedy examples to print")
    ap.add_argument("--seed", type=int, default=7, help="problem-generation seed")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=64, help="completions per engine batch")
    ap.add_argument("--engine", choices=("vllm", "megatron"), default="vllm",
                    help="rollout engine (megatron: no vLLM needed, but ~20x slower on CPU)")
    ap.add_argument("--json", default=None, help="also write the result rows here")
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    from r1mega.config import load_config
    from r1mega.eval.benchmark import task_problems
    from r1mega.eval.runner import EvalRunner, summarize
    from r1mega.platform.distributed import destroy
    from r1mega.train.checkpoint import CheckpointManager

    cfg = load_config(a.config, [f"rollout.engine={a.engine}", *a.overrides], world_size=1)
    stage = cfg.pipeline.stages[0]
    run_dir = Path(a.run_dir) if a.run_dir else Path(cfg.stage_dir(stage))
    ckpt = Path(a.checkpoint) if a.checkpoint else CheckpointManager(run_dir / "checkpoints").latest()
    if ckpt is None:
        sys.exit(f"no checkpoint under {run_dir / 'checkpoints'}")
    tok_dir = run_dir / "tokenizer"
    if tok_dir.is_dir() and not cfg.data.tokenizer_path:
        cfg.data.tokenizer_path = str(tok_dir)  # the tokenizer the checkpoint was trained with

    t0 = time.perf_counter()
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.rollout import make_engine
    from r1mega.train.engine import TrainEngine

    cfg.rollout.max_model_len = cfg.rollout.max_model_len or 512  # the R1-Zero prompt + completion
    policy = TrainEngine(cfg.model, cfg.parallel, None, seed=cfg.data.seed, mtp=False)
    CheckpointManager(ckpt.parent).load(policy, ckpt, load_optimizer=False)
    tok = load_tokenizer(cfg.data.tokenizer_path)
    if a.engine == "vllm":  # a fresh vLLM engine holds dummy weights: refit it once from the policy
        engine = make_engine(cfg, trainer_engine=policy, load_trainer_weights=True)
    else:
        engine = make_engine(cfg, trainer_engine=policy, tokenizer=tok, max_batch=a.batch)
    problems = [p for t in a.tasks for p in task_problems(t, a.n, a.difficulties, seed=a.seed, split=a.split,
                                                               lang=a.lang)]
    print(f"[heldout] checkpoint {ckpt}: {len(problems)} {'held-out' if a.split == 'test' else 'train-split'} problems, engine ready in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    rows: dict = {}
    common = dict(max_new_tokens=a.max_new_tokens, template="r1_zero", stop=("</answer>",),
                  batch_prompts=max(1, a.batch), seed=1234)
    from r1mega.rewards import RewardComputer

    with RewardComputer() as rc:
        t1 = time.perf_counter()
        greedy = EvalRunner(engine, tok, k=1, temperature=0.0, top_p=1.0, reward_computer=rc, **common).run(problems)
        g = summarize(greedy.problems, greedy.ks, 1)
        print(f"[heldout] greedy: {time.perf_counter() - t1:.1f} s", flush=True)
        for n, r in g.items():
            print(f"[heldout] greedy {n}: {100 * r['pass@1']:.1f}% (format {100 * r['format_rate']:.1f}%)", flush=True)
        s = {}
        if a.k > 0:
            t1 = time.perf_counter()
            sampled = EvalRunner(engine, tok, k=a.k, temperature=1.0, top_p=1.0, reward_computer=rc,
                                 **{**common, "batch_prompts": max(1, a.batch // a.k)}).run(problems)
            s = summarize(sampled.problems, sampled.ks, a.k)
            print(f"[heldout] sampled k={a.k}: {time.perf_counter() - t1:.1f} s", flush=True)
    ex = {}
    for r in greedy.problems[:: max(1, len(problems) // max(1, a.show))][:a.show]:
        ex[r.problem.id] = (r.problem.prompt, r.problem.gold, r.samples[0].text)

    # copying: share of single-operation problems whose greedy first step restates the question's operation
    import re

    from r1mega.data.tasks import STEP_WORDS

    first_step = "(?:" + "|".join(re.escape(w["step"].format(k=1)) for w in STEP_WORDS.values()) + ")"
    single = [r for r in greedy.problems if re.fullmatch(r"\d+[+\-*/]\d+", r.problem.metadata["key"].split("|", 1)[1])]
    if single:
        hit = sum(bool(re.search(first_step + re.escape(r.problem.metadata["key"].split("|", 1)[1]) + "=",
                                 r.samples[0].text)) for r in single)
        print(f"[heldout] greedy first step restates the question's operation: {100 * hit / len(single):.1f}% "
              f"of {len(single)} single-operation problems", flush=True)
    # working vs answering directly, on multi-step problems (level 2 and up): how often each, how accurate
    multi = [r for r in (sampled.problems if a.k > 0 else greedy.problems) if (r.problem.difficulty or 1) >= 2]
    if multi:
        outs = [(bool(re.search(first_step, x.text)), x.correct) for r in multi for x in r.samples]
        for mode, name in ((True, "worked"), (False, "direct")):
            sel = [c for w, c in outs if w == mode]
            acc = f"{100 * sum(sel) / len(sel):.1f}% correct" if sel else "-"
            print(f"[heldout] multi-step problems, {name} answers ({'T=1' if a.k > 0 else 'greedy'}): "
                  f"{100 * len(sel) / len(outs):.1f}% of {len(outs)}, {acc}", flush=True)
        zh_step = re.escape(STEP_WORDS["zh"]["step"].format(k=1))
        worked = [x.text for r in multi for x in r.samples if re.search(first_step, x.text)]
        if worked:
            share = sum(bool(re.search(zh_step, t)) for t in worked) / len(worked)
            print(f"[heldout] worked answers with Chinese step words: {100 * share:.1f}% (questions asked in "
                  f"{a.lang})", flush=True)
    names = [n for n in g if n != "all"] + ["all"] if "all" in g else list(g)
    hdr = f"{'set':10s} {'n':>4s} {'greedy':>7s} {'format':>7s} {'pass@1':>7s} {f'pass@{a.k}':>7s} {'fmt(T=1)':>8s}"
    print(hdr)
    for n in names:
        gr, sr = g[n], s.get(n, {})
        row = {"n": gr["n"], "greedy": gr["pass@1"], "greedy_format": gr["format_rate"],
               "pass@1": sr.get("pass@1"), f"pass@{a.k}": sr.get(f"pass@{a.k}"), "sampled_format": sr.get("format_rate")}
        rows[n] = row
        f = lambda v: "    -  " if v is None else f"{100 * v:6.1f}%"
        print(f"{n:10s} {row['n']:4d} {f(row['greedy'])} {f(row['greedy_format'])} {f(row['pass@1'])} "
              f"{f(row[f'pass@{a.k}'])} {f(row['sampled_format'])} ")
    for d in a.difficulties:
        parts = [rows[f"{t}/d{d}"]["greedy"] for t in a.tasks if f"{t}/d{d}" in rows]
        if parts:
            print(f"greedy d{d} (tasks averaged): {100 * sum(parts) / len(parts):.1f}%")
    print("examples (greedy):")
    for pid, (prompt, gold, text) in ex.items():
        print(f"  {pid}: {prompt!r} gold={gold} -> {text!r}")
    if a.json:
        Path(a.json).write_text(json.dumps({"checkpoint": str(ckpt), "n": a.n, "k": a.k, "rows": rows}, indent=1))
    engine.shutdown()
    destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
