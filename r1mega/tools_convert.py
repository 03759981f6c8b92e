"""``r1mega convert``: Hugging Face safetensors <-> Megatron distributed checkpoints.

    r1mega convert hf-to-megatron --hf DIR|FILE.gguf --out CKPT_ROOT [--tp N --pp N --ep N --etp N] [--dtype D]
    r1mega convert megatron-to-hf --ckpt CKPT_DIR --out HF_DIR [--tokenizer DIR] [--tp/--pp/--ep N]

Run under ``torchrun --nproc-per-node N`` for N > 1 ranks (TP*PP*DP = N). hf-to-megatron
validates the HF directory (shard files, names, shapes) before building the model, streams the
HF shards into each rank's Megatron shards (FP8 weights dequantised) and saves step 0 with
:class:`~r1mega.train.checkpoint.CheckpointManager`, so ``r1mega train`` can init from it at any
layout; a GGUF file is dequantised by transformers (:mod:`r1mega.bridge.gguf`). The source's
tokenizer files and config.json go to ``CKPT_ROOT/tokenizer/``. megatron-to-hf loads a checkpoint
(any saved layout) at the layout given, gathers the weights to rank 0 in buckets and writes
safetensors shards, the index and config.json.
See docs/bridge.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")
TOKENIZER_DIR = "tokenizer"
"""hf-to-megatron writes the source's tokenizer files and config.json into <out>/tokenizer/ (data.tokenizer_path)."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="r1mega convert", description="Convert checkpoints between Hugging Face and Megatron.")
    sub = ap.add_subparsers(dest="direction", required=True, metavar="DIRECTION")

    def layout(p):
        p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (sequence parallel is on for MoE when > 1)")
        p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
        p.add_argument("--ep", type=int, default=1, help="expert-parallel size")
        p.add_argument("--etp", type=int, default=None, help="expert tensor-parallel size (default: = --tp)")
        p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                       help="parameter dtype (default: the source's dtype; megatron-to-hf: the model's params_dtype)")
        p.add_argument("--no-mtp", action="store_true", help="leave out the multi-token-prediction layers")

    a = sub.add_parser("hf-to-megatron", help="HF safetensors + config.json -> Megatron distributed checkpoint")
    a.add_argument("--hf", required=True, help="directory with config.json and *.safetensors (+ index), or a .gguf file "
                   "(or a directory holding one; needs the 'real' extra)")
    a.add_argument("--out", required=True, help="checkpoint root (step_<N>/ is written under it)")
    a.add_argument("--step", type=int, default=0, help="step number of the written checkpoint")
    layout(a)
    b = sub.add_parser("megatron-to-hf", help="Megatron distributed checkpoint -> HF safetensors + config.json")
    b.add_argument("--ckpt", required=True, help="a step_<N> directory, or a checkpoint root (its latest)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--tokenizer", help="directory whose tokenizer files are copied next to the weights")
    b.add_argument("--shard-mb", type=int, default=5000, help="largest safetensors shard, MiB")
    b.add_argument("--bucket-mb", type=int, default=256, help="gather bucket size, MiB")
    layout(b)
    return ap


def _parallel(args, is_moe: bool):
    from r1mega.config.parallel import ParallelConfig

    return ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp, expert_parallel=args.ep,
                          expert_tensor_parallel=args.etp, sequence_parallel=args.tp > 1 and is_moe)


def _log(msg: str) -> None:
    from r1mega.platform.distributed import is_rank0

    if is_rank0():
        print(f"r1mega convert: {msg}", flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hf_to_megatron(args) -> Path:
    import time

    from r1mega.bridge import BridgeError, from_hf_config, load_hf_weights, mapping_table, open_checkpoint, read_hf_config
    from r1mega.bridge.gguf import find_gguf, load_gguf, write_tokenizer_dir
    from r1mega.platform.distributed import is_rank0
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.engine import TrainEngine

    t0 = time.perf_counter()
    if not Path(args.hf).exists():
        raise BridgeError(f"--hf {args.hf} does not exist (a HF directory or a .gguf file)")
    gguf_file = find_gguf(args.hf)
    if gguf_file is not None:  # dequantised by transformers, served from memory
        hf_cfg, ckpt, tok = load_gguf(gguf_file)
    else:
        hf_cfg = read_hf_config(args.hf)
    m = from_hf_config(hf_cfg, params_dtype=args.dtype)
    if args.no_mtp:
        m = dataclasses.replace(m, num_nextn_predict_layers=0)
    mtp = m.num_nextn_predict_layers > 0
    if gguf_file is not None:
        ckpt.validate(mapping_table(m, include_mtp=mtp), skip_mtp=not mtp)
    else:
        ckpt = open_checkpoint(args.hf, m, mtp, hf_cfg.get("quantization_config"))  # before any heavy work
    parallel = _parallel(args, m.is_moe)
    engine = TrainEngine(m, parallel, None, mtp=mtp)
    stats = load_hf_weights(engine, m, parallel, ckpt, include_mtp=mtp)
    del ckpt
    path = CheckpointManager(args.out).save(engine, args.step)
    tok_dir = Path(args.out) / TOKENIZER_DIR
    if is_rank0():
        if gguf_file is not None:
            write_tokenizer_dir(tok, hf_cfg, tok_dir)
        elif any((Path(args.hf) / f).exists() for f in TOKENIZER_FILES):
            tok_dir.mkdir(parents=True, exist_ok=True)
            for f in TOKENIZER_FILES + ("config.json",):
                if (Path(args.hf) / f).exists():
                    shutil.copy2(Path(args.hf) / f, tok_dir / f)
    _log(f"{stats['tensors']} HF tensors -> {path} (TP{args.tp} PP{args.pp} EP{args.ep}); "
         f"{'tokenizer -> ' + str(tok_dir) + '; ' if tok_dir.is_dir() else ''}"
         f"{time.perf_counter() - t0:.1f} s, peak RSS rank 0: {_peak_rss_mb():.0f} MiB")
    return path


def _resolve_ckpt(path: str) -> Path:
    from r1mega.train.checkpoint import META, CheckpointError, CheckpointManager

    p = Path(path)
    if (p / META).exists():
        return p
    latest = CheckpointManager(p).latest() if p.is_dir() else None
    if latest is None:
        raise CheckpointError(f"{p} is neither a complete checkpoint (no {META}) nor a root with one")
    return latest


def _has_mtp(path: Path) -> bool:
    from megatron.core import dist_checkpointing

    return any(".mtp." in k or k.startswith("mtp.") for k in dist_checkpointing.load_tensors_metadata(str(path)))


def _token_ids(tokenizer: Optional[str]) -> dict:
    """bos/eos/pad ids for config.json, from tokenizer.json (fast) or transformers (fallback)."""
    if not tokenizer:
        return {}
    import json

    d = Path(tokenizer)
    names = {}
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        if (d / f).exists():
            for k, v in json.loads((d / f).read_text()).items():
                if k in ("bos_token", "eos_token", "pad_token") and v:
                    names.setdefault(k, v["content"] if isinstance(v, dict) else v)
    if (d / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        ids = {f"{k}_id": tok.token_to_id(v) for k, v in names.items()}
        return {k: v for k, v in ids.items() if v is not None}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(tok, k, None) is not None}


def megatron_to_hf(args) -> Path:
    import torch

    from r1mega.bridge import export_hf_weights, to_hf_config, write_hf_config
    from r1mega.bridge.hf_io import ShardWriter
    from r1mega.config.model import ModelConfig
    from r1mega.platform.distributed import is_rank0
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.engine import TrainEngine

    path = _resolve_ckpt(args.ckpt)
    saved = CheckpointManager.read_meta(path)["model"]
    m = ModelConfig(**{f.name: saved[f.name] for f in dataclasses.fields(ModelConfig) if f.name in saved})
    if args.tokenizer and not any((Path(args.tokenizer) / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"--tokenizer {args.tokenizer}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    has_mtp = m.num_nextn_predict_layers > 0 and _has_mtp(path)
    include_mtp = has_mtp and not args.no_mtp
    parallel = _parallel(args, m.is_moe)
    engine = TrainEngine(m, parallel, None, mtp=has_mtp)
    CheckpointManager(path.parent).load(engine, path, load_optimizer=False)
    # Every floating tensor in --dtype, else the model's params_dtype (on CPU Megatron keeps the local-spec
    # norms in float32 whatever params_dtype says); DeepSeek's e_score_correction_bias stays float32, as
    # transformers keeps it (_keep_in_fp32_modules_strict) and Megatron holds it.
    out_dtype = getattr(torch, args.dtype or m.params_dtype)
    writer = ShardWriter(args.out, args.shard_mb << 20) if is_rank0() else None
    for bucket in export_hf_weights(engine, m, parallel, bucket_bytes=args.bucket_mb << 20,
                                    include_mtp=include_mtp, target=0):
        for name, t in bucket:
            if t.is_floating_point() and not name.endswith("e_score_correction_bias"):
                t = t.to(out_dtype)
            writer.add(name, t)
    if writer is not None:
        files = writer.close()
        exported = dataclasses.replace(m, num_nextn_predict_layers=m.num_nextn_predict_layers if include_mtp else 0)
        write_hf_config(to_hf_config(exported, dtype=args.dtype or m.params_dtype, extra=_token_ids(args.tokenizer)), args.out)
        for f in TOKENIZER_FILES if args.tokenizer else ():
            if (Path(args.tokenizer) / f).exists():
                shutil.copy2(Path(args.tokenizer) / f, Path(args.out) / f)
        _log(f"{path} -> {args.out}: {len(files)} safetensors file(s), {writer.total / 2**20:.1f} MiB; "
             f"peak RSS rank 0: {_peak_rss_mb():.0f} MiB")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    return Path(args.out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from r1mega.bridge import BridgeError
    from r1mega.config.base import ConfigError
    from r1mega.train.checkpoint import CheckpointError

    import torch.distributed as dist

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    owns_world = not dist.is_initialized()  # tear down only what this call set up
    try:
        (hf_to_megatron if args.direction == "hf-to-megatron" else megatron_to_hf)(args)
    except (BridgeError, ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"r1mega convert: error: {e}", file=sys.stderr)
        return 2
    finally:
        if owns_world:
            from r1mega.platform.distributed import destroy

            destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
