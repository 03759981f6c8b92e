"""The exported model answers as r1mega did: greedy generation with transformers on the Hugging Face export of
the trained checkpoint (``r1mega convert megatron-to-hf``) against the greedy samples r1mega's own evaluation
wrote (vLLM, refitted from Megatron), on the same held-out questions rendered with the same chat template.

    python examples/smollm2-135m/check_export.py RUN_DIR [--export DIR] [--stage eval_greedy]

Prints one line per question that differs and a summary; exits 1 when fewer than --min-equal of them are equal.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--export", type=Path, default=None, help="HF folder (default RUN_DIR/export)")
    ap.add_argument("--stage", default="eval_greedy", help="the greedy eval stage whose samples are compared")
    ap.add_argument("--min-equal", type=float, default=1.0, help="share of questions that must be identical")
    args = ap.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = args.export or args.run_dir / "export"
    stage = args.run_dir / args.stage
    settings = json.loads((stage / "eval.json").read_text())["settings"]
    if settings.get("temperature", 1) != 0 or settings.get("k") != 1:
        raise SystemExit(f"{stage}: not a greedy evaluation (temperature {settings.get('temperature')}, k {settings.get('k')})")
    from r1mega.data.jsonl import read_jsonl

    samples = read_jsonl(stage / "eval_samples.jsonl")  # a bad line: an error naming the file and line
    prompts = {r["id"]: r["prompt"] for r in read_jsonl(args.run_dir / "data" / "heldout.jsonl", ("id", "prompt"))}
    tok = AutoTokenizer.from_pretrained(str(export))
    model = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    prefill = "<think>\n" if settings.get("think_prefilled") else ""
    stop = [s for s in settings.get("stop", [])]
    equal = 0
    for row in samples:
        ids = tok.apply_chat_template([{"role": "user", "content": prompts[row["id"]]}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        ids = ids + tok.encode(prefill, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=settings["max_new_tokens"], do_sample=False,
                                 eos_token_id=model.generation_config.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
        for s in stop:  # r1mega stops at (and keeps) its stop strings
            if s in text:
                text = text[:text.index(s) + len(s)]
        same = text.strip() == row["text"].strip()
        equal += same
        if not same:
            print(f"differs {row['id']}:\n  r1mega:       {row['text']!r}\n  transformers: {text!r}")
    share = equal / max(1, len(samples))
    print(f"greedy answers identical: {equal}/{len(samples)} ({100 * share:.1f}%) -- transformers on {export} vs "
          f"r1mega's {args.stage}")
    return 0 if share >= args.min_equal else 1


if __name__ == "__main__":
    sys.exit(main())
