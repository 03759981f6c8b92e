"""`r1mega model info --preset NAME [--json]`: shapes and parameter counts of a model preset."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from r1mega.model.counting import count_parameters
from r1mega.model.presets import PUBLISHED, get_preset, preset_names


def _fmt(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def info(name: str) -> dict:
    m = get_preset(name)
    m.validate()
    c = count_parameters(m)
    out = {"preset": name, "config": dataclasses.asdict(m), **c.to_dict()}
    if name in PUBLISHED:
        pub = PUBLISHED[name]
        out["published"] = pub
        out["relative_error"] = {k: (out[k] - v) / v for k, v in pub.items()}
    return out


def render_text(d: dict) -> str:
    m = d["config"]
    lines = [f"preset {d['preset']}: {m['arch']}, {m['num_layers']} layers, hidden {m['hidden_size']}, "
             f"{m['num_attention_heads']} heads, vocab {m['vocab_size']}"]
    if m["arch"] == "deepseek_v3":
        lines.append(f"  MLA: q_lora_rank {m['q_lora_rank']}, kv_lora_rank {m['kv_lora_rank']}, "
                     f"qk nope/rope {m['qk_nope_head_dim']}/{m['qk_rope_head_dim']}, v {m['v_head_dim']}")
    if m["arch"] != "dense" and m["n_routed_experts"]:
        lines.append(f"  MoE: {m['n_routed_experts']} routed (top-{m['num_experts_per_tok']}, {m['scoring_func']}, "
                     f"groups {m['n_group']} top {m['topk_group']}) + {m['n_shared_experts']} shared, "
                     f"expert ffn {m['moe_intermediate_size']}; first {m['first_k_dense_replace']} layers dense "
                     f"(ffn {m['intermediate_size']}); MTP {m['num_nextn_predict_layers']}")
    lines.append(f"  {'layer':>5} {'kind':5} {'attention':>10} {'mlp':>10} {'total':>10} {'activated':>10}")
    for l in d["layers"]:
        lines.append(f"  {l['index']:>5} {l['kind']:5} {_fmt(l['attention']):>10} {_fmt(l['mlp_total']):>10} "
                     f"{_fmt(l['total']):>10} {_fmt(l['activated']):>10}")
    lines.append(f"  embedding {_fmt(d['embedding'])}, output head {_fmt(d['output_head'])}, "
                 f"MTP {_fmt(d['mtp'])} (activated {_fmt(d['mtp_activated'])})")
    lines.append(f"  total {_fmt(d['total'])} ({d['total']:,}), activated {_fmt(d['activated'])} ({d['activated']:,})")
    if "published" in d:
        p = d["published"]
        lines.append(f"  published: total {_fmt(p['total'])} ({d['relative_error']['total']:+.2%}), "
                     f"activated {_fmt(p['activated'])} ({d['relative_error']['activated']:+.2%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="r1mega model info", description=__doc__)
    ap.add_argument("--preset", required=True, help=f"one of: {', '.join(preset_names())}")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    d = info(args.preset)
    print(json.dumps(d, indent=2) if args.json else render_text(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
