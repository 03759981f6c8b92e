"""One rank of a 2-process colocated run (torchrun, gloo): trainer + vLLM engine in the same process.

Writes ``OUT.rank<r>.json`` with what the test checks: parity after refits, the completions every
rank returns (gathered) and how many this rank's replica generated itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch.distributed as dist

    from r1mega.config import load_config
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.rollout import Sampling, check_rollouts, make_engine
    from r1mega.train.batching import lm_batch
    from r1mega.train.engine import TrainEngine
    from rollout_support import max_abs_diff, perturb, randomize

    cfg = load_config(None, [f"model.preset={args.preset}", "data.seq_length=256", "rollout.max_new_tokens=12",
                             "rollout.kv_cache_memory_bytes=67108864", *args.set], world_size=2)
    trainer = TrainEngine(cfg.model, cfg.parallel, None, mtp=False)
    randomize(trainer, 0)
    rank = dist.get_rank()
    t0 = time.perf_counter()
    engine = make_engine(cfg, trainer)
    start_s = time.perf_counter() - t0
    refit1 = engine.refit(trainer)
    tok = load_tokenizer()
    seqs = [tok.encode(t) for t in ["What is 12+7? <think> 12+7 = 19 </think>", "Hello there, general.",
                                    "<answer>42</answer> is the answer", "step by step: 第一步", "one more prompt"]]

    def parity() -> float:
        lp = trainer.logprobs(lm_batch(seqs))
        return max_abs_diff(engine.prompt_logprobs(seqs), [lp[i, :len(s) - 1].tolist() for i, s in enumerate(seqs)])

    out = {"rank": rank, "start_s": start_s, "refit1": vars(refit1), "parity1": parity()}
    s = Sampling(max_new_tokens=12, temperature=1.0, stop=(), seed=7)
    r = engine.generate(seqs, s, n=2, step=0)
    out["completions"] = [[c.prompt_index, c.sample_index, c.token_ids] for c in r.completions]
    out["mismatch"] = check_rollouts(r, trainer, 0.01)
    local = engine.generate(seqs, s, n=2, step=0, gather=False)
    out["local"] = [[c.prompt_index, c.sample_index, c.token_ids] for c in local.completions]
    perturb(trainer, seed=5, scale=0.1)
    out["stale"] = parity()
    refit2 = engine.refit(trainer)
    out["refit2"] = vars(refit2)
    out["parity2"] = parity()
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump(out, f)
    dist.barrier()


if __name__ == "__main__":
    main()
    from r1mega.platform.distributed import destroy

    destroy(barrier=True)  # exiting with live gloo groups can abort
