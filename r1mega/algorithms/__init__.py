"""The GRPO objective and its relatives as pure tensor functions (no model, no distributed state).

Files, one job each: ``advantages`` (grouped rewards -> advantages, process supervision),
``kl`` (k1/k2/k3 estimators), ``policy_loss`` (ratio, clipped surrogate, dual-clip, truncated IS),
``gspo`` (sequence-level importance ratios), ``mismatch`` (rollout/trainer TIS weights and masks),
``aggregation`` (loss modes normalised by global counts), ``grpo_loss`` (the engine-facing
:class:`GRPOLoss`), ``sft_loss`` (:class:`SFTLoss`), ``distill_loss`` (logit distillation),
``logits`` (entropy, token log-probs), ``metrics`` (the (sum, count) metric convention), ``rows`` (a row's
whole-row counts and sums when context parallelism splits it over ranks).
See docs/grpo.md.
"""
from .advantages import (advantage_metrics, degenerate_groups, dynamic_sampling_keep, group_advantages,
                         process_advantages)
from .aggregation import aggregate_loss, local_normalisers, masked_token_sum
from .bt_loss import BradleyTerryLoss, bradley_terry, pair_rewards
from .distill_loss import distill_kl, distill_kl_per_token
from .grpo_loss import GRPOLoss
from .gspo import importance_ratios, sequence_mean_log_ratio
from .kl import kl_penalty
from .logits import entropy_from_logits, logprobs_from_logits
from .metrics import (accumulate_metrics, all_reduce_metrics, finalize_metrics, mismatch_metrics, reduce_op,
                      sum_count)
from .mismatch import mismatch_correction
from .policy_loss import clipped_surrogate, importance_ratio, surrogate_from_ratio, truncated_is_weight
from .sft_loss import SFTLoss

__all__ = [
    "BradleyTerryLoss", "bradley_terry", "pair_rewards",
    "GRPOLoss", "SFTLoss", "accumulate_metrics", "advantage_metrics", "aggregate_loss", "all_reduce_metrics",
    "clipped_surrogate", "degenerate_groups", "distill_kl", "distill_kl_per_token", "dynamic_sampling_keep",
    "entropy_from_logits", "finalize_metrics", "group_advantages", "importance_ratio", "importance_ratios",
    "kl_penalty", "local_normalisers", "logprobs_from_logits", "masked_token_sum", "mismatch_correction",
    "mismatch_metrics", "process_advantages", "reduce_op", "sequence_mean_log_ratio", "sum_count",
    "surrogate_from_ratio", "truncated_is_weight",
]
