"""DAPO dynamic sampling under data parallelism: how many kept groups a partly filled batch trains on.

Dynamic sampling (``grpo.dynamic_sampling``) drops the groups whose rewards are all equal
(:func:`.advantages.dynamic_sampling_keep`) and samples more prompts, for at most
``grpo.dynamic_sampling_max_rounds`` rounds. When the rounds run out with ``K < prompts_per_step`` kept
groups, the step trains on the first :func:`dynamic_sampling_trim` of them: the largest ``K' <= K`` such that

* the groups split whole over the ``dp_size`` data-parallel ranks (``K' % dp_size == 0``), and
* each rank's ``K' * G / dp_size`` rows split into the step's ``num_minibatches`` equal minibatches
  (``rollouts_per_step / minibatch_size``), so a short step makes as many optimizer updates as a full one
  (the LR schedule counts them), each on ``K' * G / num_minibatches`` sequences.

A full batch always qualifies (the config checks make ``prompts_per_step`` a multiple of the unit), so
only a short batch is ever trimmed; ``K' = 0`` skips the step. :func:`dynamic_sampling_metrics` reports
what happened (``dynamic_sampling/*``).
"""
from __future__ import annotations

import math


def dynamic_sampling_unit(group_size: int, dp_size: int, num_minibatches: int) -> int:
    """The smallest number of groups that splits evenly (see the module doc)."""
    for name, v in (("group_size", group_size), ("dp_size", dp_size), ("num_minibatches", num_minibatches)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"dynamic_sampling_unit: {name}={v!r}, expected a positive integer")
    per_update = dp_size * num_minibatches  # K * G must be a multiple of this
    return math.lcm(dp_size, per_update // math.gcd(per_update, group_size))


def dynamic_sampling_trim(num_groups: int, group_size: int, dp_size: int, num_minibatches: int) -> int:
    """The most groups ``<= num_groups`` that split evenly over the ranks and the minibatches."""
    unit = dynamic_sampling_unit(group_size, dp_size, num_minibatches)
    return num_groups // unit * unit


def dynamic_sampling_metrics(sampled: int, informative: int, kept: int, trimmed: int, rounds: int) -> dict[str, float]:
    """``dynamic_sampling/*`` figures of one step: groups generated over all rounds (``groups_sampled``), those
    with unequal rewards (``groups_informative``), those trained on (``groups_kept``), the informative ones
    :func:`dynamic_sampling_trim` left out (``groups_trimmed``), and the rounds run. Informative groups beyond
    ``prompts_per_step`` in the last round are neither kept nor trimmed."""
    return {"dynamic_sampling/groups_sampled": float(sampled), "dynamic_sampling/groups_informative": float(informative),
            "dynamic_sampling/groups_kept": float(kept), "dynamic_sampling/groups_trimmed": float(trimmed),
            "dynamic_sampling/rounds": float(rounds)}
