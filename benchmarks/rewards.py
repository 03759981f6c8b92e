"""Reward throughput through RewardComputer and its process pool.

Prints math rewards/s (math-verify on varied LaTeX answers), code rewards/s (all 164 HumanEval canonical
solutions, each run with its tests in the sandbox), gym rewards/s and language-consistency rewards/s.

    .venv/bin/python benchmarks/rewards.py [--workers N] [--math N]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1mega.config.rewards import PoolConfig, RewardsConfig  # noqa: E402
from r1mega.rewards import RewardComputer, RewardSample  # noqa: E402
from r1mega.rewards.humaneval import canonical_response, humaneval_spec, load_humaneval  # noqa: E402
from r1mega.rewards.pool import Task  # noqa: E402


def math_samples(n: int, seed: int = 0) -> list[RewardSample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(2, 999)
        kind = i % 4
        if kind == 0:
            pred, gold = f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}"
        elif kind == 1:
            pred, gold = f"{a * b}", f"{a} \\times {b}"
        elif kind == 2:
            pred, gold = f"\\sqrt{{{a * a}}}", f"{a + rng.randint(0, 1)}"
        else:
            pred, gold = f"x = {a}", f"{a}"
        out.append(RewardSample(f"<think>work</think><answer>{pred}</answer>", "math", gold))
    return out


def timed(rc: RewardComputer, samples: list) -> tuple[float, list]:
    t = time.perf_counter()
    out = rc.score(samples)
    return time.perf_counter() - t, out.components["accuracy"] if "accuracy" in out.components else out.totals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--math", type=int, default=2000)
    args = ap.parse_args()
    cfg = RewardsConfig(preset="accuracy_only", pool=PoolConfig(num_workers=args.workers))
    print(f"reward workers: {args.workers} (cpu cores here: {os.cpu_count()})")
    with RewardComputer(cfg) as rc:
        rc.pool.run([Task("echo", (0,), 300.0)] * args.workers)  # start + warm the workers

        samples = math_samples(args.math)
        dt, acc = timed(rc, samples)
        print(f"math (math-verify):   {len(samples) / dt:8.1f} rewards/s  ({len(samples)} in {dt:.2f} s, "
              f"{sum(acc) / len(acc):.2f} correct)")

        probs = load_humaneval()
        code = [RewardSample(canonical_response(p), "code", humaneval_spec(p)) for p in probs]
        dt, acc = timed(rc, code)
        print(f"code (HumanEval x164, sandbox): "
              f"{len(code) / dt:8.1f} rewards/s  ({dt:.2f} s, {sum(1 for a in acc if a == 1.0)}/164 pass)")

        try:
            from r1mega.rewards import gym

            gp = [p for t in ("basic_arithmetic", "countdown", "knights_knaves", "word_sorting")
                  for p in gym.generate(t, 100, seed=1)]
            gs = [RewardSample(f"<answer>{p.answer}</answer>", "gym", metadata=p.metadata) for p in gp]
            dt, acc = timed(rc, gs)
            print(f"gym (reasoning-gym):  {len(gs) / dt:8.1f} rewards/s  ({len(gs)} in {dt:.2f} s)")
        except ImportError:
            print("gym: reasoning-gym not installed")

    lang_cfg = RewardsConfig(weights={t: {"language": 1.0} for t in ("math",)}, preset="accuracy_only",
                             pool=PoolConfig(num_workers=args.workers))
    cot = "Let me think about this step by step, 3 + 4 = 7. 我们再检查一下。 " * 200
    with RewardComputer(lang_cfg) as rc:
        rc.pool.run([Task("echo", (0,), 300.0)] * args.workers)
        ls = [RewardSample(f"<think>{cot}</think><answer>7</answer>", "math", "7") for _ in range(500)]
        t = time.perf_counter()
        rc.score(ls)
        dt = time.perf_counter() - t
        print(f"language (~{len(cot) // 1000} k chars CoT): {len(ls) / dt:8.1f} rewards/s")


if __name__ == "__main__":
    main()
