"""GRPO objective configuration (used by ``r1mega.algorithms``).

Defaults follow the DeepSeek-R1 recipe (see /work/shared/notes/anchors.md, "The recipe"): group
size 16, 32 prompts per step, temperature 1.0, KL coefficient 0.001 with the k3 estimator,
group mean/std advantages, sequence-mean of per-sequence token means, reference refreshed every
400 steps. Options beyond R1 (clip-higher and dynamic sampling from DAPO, Dr.GRPO's unscaled
advantages and constant normaliser, RLOO, dual-clip, GSPO's sequence-level importance ratio, truncated
importance sampling and token/sequence masks against the rollout engine) are off by default.

About the clip range: the R1 paper reports a clip value of 10 (not verified from the PDF). Our
``clip_eps_low/high`` are the usual PPO epsilons (ratio clipped to [1-eps_low, 1+eps_high]); to
reproduce a very loose R1-style clip set e.g. ``clip_eps_low=1.0`` (no lower clip: the ratio is
positive) and ``clip_eps_high=9.0`` (ratio capped at 10). The defaults keep the standard 0.2/0.2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigError, check, check_choice, check_int, check_positive, doc

ADVANTAGE_MODES = ("group-norm", "group-mean", "rloo", "batch-norm")
LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-sum-token-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
OLD_LOGPROBS = ("auto", "recompute")
IMPORTANCE_LEVELS = ("token", "sequence", "sequence_token")
TIS_LEVELS = ("token", "sequence")
REWARD_GRANULARITIES = ("outcome", "process")


@dataclass
class GRPOConfig:
    # Sampling / batch shape
    group_size: int = doc(16, "Completions sampled per prompt (G). R1: 16. A group of 1 gives advantage 0 in every group mode.")
    prompts_per_step: int = doc(32, "Distinct prompts per RL step; rollouts per step = prompts_per_step * group_size. R1: 32 (512 rollouts).")
    temperature: float = doc(1.0, "Rollout sampling temperature. R1: 1.0. Trainer log-probs must use the same temperature.")
    # Advantages
    advantage_mode: str = doc("group-norm", "'group-norm' (R1: (r-mean_g)/(std_g+eps)), 'group-mean' (Dr.GRPO: r-mean_g), 'rloo' (leave-one-out mean baseline), 'batch-norm' ((r-mean_g)/(std over the whole batch+eps)).")
    adv_epsilon: float = doc(1e-6, "Added to the std in the advantage denominator. Groups whose rewards are all equal get advantage exactly 0.")
    reward_granularity: str = doc("outcome", "'outcome': one reward per completion (the only one the GRPO stage can use). "
                                             "'process' (DeepSeekMath per-step rewards -> token-level advantages, "
                                             "r1mega.algorithms.process_advantages) is refused: no reward of the "
                                             "pipeline scores reasoning steps yet.")
    dynamic_sampling: bool = doc(False, "DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts until the batch is full.")
    dynamic_sampling_max_rounds: int = doc(4, "Generation rounds dynamic sampling may run; when they run out, the step trains on the kept groups, trimmed to the most that split evenly over the data-parallel ranks and the step's minibatches (r1mega.algorithms.dynamic_sampling).")
    # Policy loss
    clip_eps_low: float = doc(0.2, "Lower PPO clip: ratio >= 1-eps_low for negative advantages. Values >= 1 disable the lower clip (R1 reports clip 10*).")
    clip_eps_high: float = doc(0.2, "Upper PPO clip: ratio <= 1+eps_high for positive advantages. DAPO clip-higher: 0.28.")
    dual_clip_c: Optional[float] = doc(None, "Dual-clip constant c > 1: for negative advantages the per-token loss is capped at c*|A|. None = off.")
    importance_level: str = doc("token", "Importance ratio of the clipped surrogate. 'token' (PPO/GRPO): exp(logp - old_logp) per token, clipped per token. 'sequence' (GSPO): one length-normalised ratio per sequence, s = exp(mean over its loss tokens of (logp - old_logp)), clipped per sequence (GSPO uses tiny clips, e.g. clip_eps_low=3e-4, clip_eps_high=4e-4); needs one advantage per sequence. 'sequence_token' (GSPO-token): value s, gradient through each token's own log-prob (sg[s] * pi_t / sg[pi_t]); equal to 'sequence' for sequence advantages.")
    loss_agg_mode: str = doc("seq-mean-token-mean", "'seq-mean-token-mean' (GRPO/R1), 'token-mean' (DAPO: mean over all loss tokens of the global batch), 'seq-sum-token-norm' (Dr.GRPO: token sums / loss_norm_constant, mean over sequences).")
    loss_norm_constant: Optional[float] = doc(None, "Divisor C of per-sequence token sums in 'seq-sum-token-norm'; None = rollout.max_new_tokens (given to GRPOLoss by the engine).")
    # KL to the reference
    kl_coef: float = doc(0.001, "beta, weight of the per-token KL penalty to the reference policy in the loss. R1: 0.001. 0 = no reference model needed.")
    kl_estimator: str = doc("k3", "Per-token KL estimator: 'k1' (log pi - log ref), 'k2' (0.5*(log pi - log ref)^2), 'k3' (r - log r - 1, r = pi_ref/pi; R1).")
    ref_refresh_interval: Optional[int] = doc(400, "Copy the current policy into the reference every N steps (R1: 400*; DeepSeekMath iterative RL). None = never.")
    # Updates per rollout batch
    ppo_epochs: int = doc(1, "Passes over each rollout batch (policy updates per rollout = ppo_epochs * rollouts / minibatch_size).")
    minibatch_size: Optional[int] = doc(None, "Sequences per optimizer step; None = all rollouts of the step (one update: strictly on-policy, ratio = 1).")
    old_logprobs: str = doc("auto", "Where the behaviour policy's log-probs come from. 'recompute': a separate trainer forward over the rollouts before the update. 'auto': the same, unless the step makes exactly one optimizer update (ppo_epochs 1, minibatch_size None or all rollouts): the policy being trained then IS the behaviour policy, so the training forward's own log-probs (detached) serve, one forward pass fewer; the rollout/trainer mismatch check still runs before the weights change.")
    # Trainer/rollout mismatch
    tis: bool = doc(False, "Truncated importance sampling against the rollout engine: multiply the policy-gradient term by a detached weight min(trainer/rollout ratio, tis_cap) (per token or per sequence: tis_level).")
    tis_cap: float = doc(2.0, "Cap C of the truncated importance weight.")
    tis_level: str = doc("token", "'token': w_t = min(exp(old_logp_t - rollout_logp_t), tis_cap). 'sequence': one weight per sequence, min(exp(mean over its loss tokens of (old_logp - rollout_logp)), tis_cap) (the geometric mean of the token ratios).")
    tis_on_kl: bool = doc(False, "Also multiply the KL-to-reference term by the TIS weight (l = w (pg + beta kl), r1mega's behaviour before issue 19). False: only the policy-gradient term is reweighted (l = w pg + beta kl): the KL penalty is a regulariser of the trainer's policy, not an expectation under the rollout policy.")
    mismatch_token_threshold: Optional[float] = doc(None, "Per-token |old_logp_trainer - rollout_logp| above which a token counts as mismatched (metric mismatch/over_threshold_frac; the batch-level failure check is rollout.mismatch_threshold). None = off.")
    mismatch_mask: bool = doc(False, "Also drop mismatched tokens from the loss (weight 0; the global normalisers are unchanged). Needs mismatch_token_threshold.")
    mismatch_seq_low: Optional[float] = doc(None, "Sequence-level masked importance sampling: a sequence whose geometric-mean trainer/rollout ratio exp(mean over its loss tokens of (old_logp - rollout_logp)) is below this bound is dropped from the loss (pg and KL; the global normalisers are unchanged). A number in (0, 1]; None = no lower bound.")
    mismatch_seq_high: Optional[float] = doc(None, "Upper bound of the same sequence mask: sequences whose geometric-mean ratio is above it are dropped. A number >= 1; None = no upper bound.")

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def num_minibatches(self) -> int:
        """Optimizer updates per pass over a step's rollouts (a short dynamic-sampling batch makes as many)."""
        return self.rollouts_per_step // (self.minibatch_size or self.rollouts_per_step)

    @property
    def updates_per_step(self) -> int:
        return self.ppo_epochs * self.num_minibatches

    @property
    def reuse_old_logprobs(self) -> bool:
        """True when the behaviour log-probs are taken from the training forward (see ``old_logprobs``)."""
        return self.old_logprobs == "auto" and self.updates_per_step == 1

    def validate(self, where: str = "grpo") -> None:
        for name in ("group_size", "prompts_per_step", "ppo_epochs", "dynamic_sampling_max_rounds"):
            check_int(getattr(self, name), f"{where}.{name}")
        check_positive(self.temperature, f"{where}.temperature")
        check_choice(self.advantage_mode, ADVANTAGE_MODES, f"{where}.advantage_mode")
        check_choice(self.reward_granularity, REWARD_GRANULARITIES, f"{where}.reward_granularity")
        check(self.reward_granularity == "outcome", f"{where}.reward_granularity",
              f"got {self.reward_granularity!r}, but the GRPO stage has no per-step rewards: its rule rewards and the "
              "reward model score whole completions, so it always uses outcome advantages; use 'outcome' "
              "(process supervision exists only as r1mega.algorithms.process_advantages)")
        check_choice(self.loss_agg_mode, LOSS_AGG_MODES, f"{where}.loss_agg_mode")
        check_choice(self.kl_estimator, KL_ESTIMATORS, f"{where}.kl_estimator")
        check_choice(self.old_logprobs, OLD_LOGPROBS, f"{where}.old_logprobs")
        check_choice(self.importance_level, IMPORTANCE_LEVELS, f"{where}.importance_level")
        check_choice(self.tis_level, TIS_LEVELS, f"{where}.tis_level")
        check_positive(self.adv_epsilon, f"{where}.adv_epsilon", allow_zero=True)
        check_positive(self.clip_eps_low, f"{where}.clip_eps_low", allow_zero=True)
        check_positive(self.clip_eps_high, f"{where}.clip_eps_high", allow_zero=True)
        check_positive(self.kl_coef, f"{where}.kl_coef", allow_zero=True)
        if self.dual_clip_c is not None:
            check(isinstance(self.dual_clip_c, (int, float)) and not isinstance(self.dual_clip_c, bool)
                  and self.dual_clip_c > 1.0, f"{where}.dual_clip_c",
                  f"got {self.dual_clip_c!r}, expected None or a number > 1")
        if self.loss_norm_constant is not None:
            check_positive(self.loss_norm_constant, f"{where}.loss_norm_constant")
        check_int(self.ref_refresh_interval, f"{where}.ref_refresh_interval", allow_none=True)
        check_int(self.minibatch_size, f"{where}.minibatch_size", allow_none=True)
        if self.minibatch_size is not None:
            v = self.minibatch_size
            check(self.rollouts_per_step % v == 0, f"{where}.minibatch_size",
                  f"got {v}, expected a divisor of prompts_per_step*group_size = "
                  f"{self.prompts_per_step}*{self.group_size} = {self.rollouts_per_step}")
        check(isinstance(self.tis_cap, (int, float)) and not isinstance(self.tis_cap, bool) and self.tis_cap >= 1.0,
              f"{where}.tis_cap", f"got {self.tis_cap!r}, expected a number >= 1")
        if self.mismatch_token_threshold is not None:
            check_positive(self.mismatch_token_threshold, f"{where}.mismatch_token_threshold")
        if self.mismatch_mask and self.mismatch_token_threshold is None:
            raise ConfigError(f"{where}.mismatch_mask", "got True, but mismatch_token_threshold is None; set a threshold")
        for name, value in (("tis_level", self.tis_level != "token"), ("tis_on_kl", self.tis_on_kl)):
            check(self.tis or not value, f"{where}.{name}", f"got {getattr(self, name)!r}, but tis is False "
                  "(it only applies to the truncated importance weight); set grpo.tis=true or leave it at its default")
        lo, hi = self.mismatch_seq_low, self.mismatch_seq_high
        if lo is not None:
            check(_number(lo) and 0 < lo <= 1, f"{where}.mismatch_seq_low",
                  f"got {lo!r}, expected None or a number in (0, 1] (a sequence with ratio 1 matches the rollout exactly)")
        if hi is not None:
            check(_number(hi) and hi >= 1, f"{where}.mismatch_seq_high",
                  f"got {hi!r}, expected None or a number >= 1 (a sequence with ratio 1 matches the rollout exactly)")

    @property
    def mismatch_seq_mask(self) -> bool:
        """Whether sequence-level masked importance sampling is on (either bound set)."""
        return self.mismatch_seq_low is not None or self.mismatch_seq_high is not None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
