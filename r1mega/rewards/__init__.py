"""Rule-based rewards for GRPO: math/choice accuracy, code tests in a sandbox, reasoning-gym scorers,
format, language consistency and the DAPO overlong penalty. Entry point::

    from r1mega.rewards import RewardComputer, RewardSample
    with RewardComputer(cfg.rewards) as rc:
        out = rc.score([RewardSample(response=text, task_type="math", gold="\\\\frac{1}{2}",
                                     response_tokens=812, max_tokens=4096), ...])
        out.totals, out.components["accuracy"], out.metrics["reward/timeouts"]

See docs/rewards.md.
"""
from r1mega.rewards.computer import RewardComputer, RewardOutput, RewardSample
from r1mega.rewards.extract import extract_answer, extract_code
from r1mega.rewards.format import format_reward
from r1mega.rewards.language import language_consistency
from r1mega.rewards.overlong import overlong_penalty

__all__ = ["RewardComputer", "RewardOutput", "RewardSample", "extract_answer", "extract_code", "format_reward",
           "language_consistency", "overlong_penalty"]
