"""Bradley-Terry reward model stage (``kind: reward_model``): data, score definition, objective.

The stage trains on preference pairs (:mod:`r1mega.data.preferences`) with
``loss = -log sigmoid(r_chosen - r_rejected) + center_coef * (r_chosen + r_rejected)^2``, where the
scalar reward ``r`` is the log-odds of two designated tokens at the last position of
prompt + response + EOS (see :mod:`r1mega.rewards.model_reward`). Batch sizes are the optimizer's,
counted in **pairs** (each pair is two sequences in the same microbatch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import check, check_int, check_positive, doc

PAIR_KINDS = ("correctness", "language", "format", "helpfulness")


@dataclass
class RewardModelConfig:
    num_pairs: int = doc(4096, "Training preference pairs generated from the train split of the built-in tasks "
                               "(ignored when pairs_paths is set).")
    eval_pairs: int = doc(256, "Held-out preference pairs (unique problems never used by a training pair) for the "
                               "pairwise accuracy.")
    kinds: dict = doc({k: 1.0 for k in PAIR_KINDS}, "Relative weights of the pair kinds: correctness (right vs wrong "
                      "final answer), language (English vs Chinese/mixed steps), format (R1 tags vs broken ones), "
                      "helpfulness (non-reasoning request: helpful vs off-topic/refusal/wrong).")
    difficulties: list = doc([1, 2], "Difficulty levels (1..5) of the problems the pairs are made from.")
    pairs_paths: list = doc([], "Train on these JSONL files of {prompt, chosen, rejected} instead of generated pairs "
                                "('stage:NAME/file' allowed); eval pairs are still generated.")
    score_tokens: list = doc(["+", "-"], "The two single tokens [good, bad] whose logit difference at the last position "
                                         "is the reward (logit_good - logit_bad).")
    center_coef: float = doc(0.01, "Weight of the centring term (r_chosen + r_rejected)^2 that keeps rewards near 0, "
                                   "so sigmoid(reward) is meaningful (0 = plain Bradley-Terry).")
    max_length: Optional[int] = doc(None, "Longest prompt + response + EOS in tokens (None = data.seq_length); longer "
                                          "ones are cut before the EOS.")
    eval_interval: int = doc(50, "Measure the held-out pairwise accuracy every N steps (and at the end); 0 = end only.")
    seed: int = doc(2024, "Seed of the generated pairs and of their order.")

    def validate(self, where: str = "reward_model") -> None:
        check_int(self.num_pairs, f"{where}.num_pairs")
        check_int(self.eval_pairs, f"{where}.eval_pairs")
        check_int(self.eval_interval, f"{where}.eval_interval", minimum=0)
        check_int(self.seed, f"{where}.seed", minimum=0)
        check_int(self.max_length, f"{where}.max_length", minimum=8, allow_none=True)
        check(isinstance(self.kinds, dict) and self.kinds, f"{where}.kinds",
              f"got {self.kinds!r}, expected a mapping {{kind: weight}} over {PAIR_KINDS}")
        for k, w in self.kinds.items():
            check(k in PAIR_KINDS, f"{where}.kinds.{k}", f"unknown pair kind; expected one of {', '.join(PAIR_KINDS)}")
            check(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0, f"{where}.kinds.{k}",
                  f"got {w!r}, expected a non-negative number")
        check(sum(self.kinds.values()) > 0, f"{where}.kinds", "all weights are 0; at least one kind needs weight > 0")
        check(isinstance(self.difficulties, list) and self.difficulties
              and all(d in (1, 2, 3, 4, 5) for d in self.difficulties), f"{where}.difficulties",
              f"got {self.difficulties!r}, expected a non-empty list of levels from 1..5")
        check(isinstance(self.score_tokens, list) and len(self.score_tokens) == 2
              and all(isinstance(t, str) and t for t in self.score_tokens)
              and self.score_tokens[0] != self.score_tokens[1], f"{where}.score_tokens",
              f"got {self.score_tokens!r}, expected two different non-empty token strings [good, bad]")
        check_positive(self.center_coef, f"{where}.center_coef", allow_zero=True)
        for i, p in enumerate(self.pairs_paths):
            check(isinstance(p, str) and p.strip() != "", f"{where}.pairs_paths[{i}]", f"got {p!r}, expected a path")


__all__ = ["RewardModelConfig", "PAIR_KINDS"]
