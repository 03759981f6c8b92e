"""Rejection sampling (R1 stage 3): which samples of the RL model become SFT data."""
from __future__ import annotations

from dataclasses import dataclass

from .base import check, check_positive, doc


@dataclass
class RejectionConfig:
    num_prompts: int = doc(256, "Reasoning prompts to sample from (train split of data.tasks / data.difficulties).")
    samples_per_prompt: int = doc(4, "k: completions sampled per prompt.")
    temperature: float = doc(0.7, "Sampling temperature for the candidates.")
    top_p: float = doc(0.95, "Nucleus sampling for the candidates.")
    max_per_prompt: int = doc(2, "Keep at most this many distinct accepted answers per prompt.")
    require_correct: bool = doc(True, "Keep only correct answers (rejection sampling). False keeps the model's own answers whatever "
                                      "their correctness (readability filters still apply): the baseline 'student trained on the "
                                      "base model's own samples'.")
    min_language_consistency: float = doc(1.0, "Reject a chain of thought whose target-language share is below this (R1: no language mixing).")
    max_paragraph_chars: int = doc(400, "Reject responses with a paragraph (text between blank lines) longer than this.")
    max_response_tokens: int = doc(256, "Reject responses longer than this many tokens (bounded length).")
    reject_code_blocks: bool = doc(True, "Reject reasoning responses that contain ``` code blocks.")
    nonreasoning_fraction: float = doc(0.25, "Share of non-reasoning examples in the output (R1: ~200k of ~800k).")
    worked_solutions: int = doc(0, "Add this many templated worked solutions (train split, R1 format) to the output: the cold-start data of R1 stage 1 mixes them with the readable R1-Zero samples.")
    seed: int = doc(4321, "Seed of the prompt draw and the non-reasoning data.")

    def validate(self, where: str = "rejection") -> None:
        for name in ("num_prompts", "samples_per_prompt", "max_per_prompt", "max_paragraph_chars", "max_response_tokens"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{where}.{name}",
                  f"got {getattr(self, name)!r}, expected an integer >= 1")
        check(isinstance(self.require_correct, bool), f"{where}.require_correct", f"got {self.require_correct!r}, expected true or false")
        check_positive(self.temperature, f"{where}.temperature", allow_zero=True)
        check(0 < self.top_p <= 1, f"{where}.top_p", f"got {self.top_p!r}, expected 0 < top_p <= 1")
        check(0 <= self.min_language_consistency <= 1, f"{where}.min_language_consistency", "expected a value in [0, 1]")
        check(isinstance(self.worked_solutions, int) and self.worked_solutions >= 0, f"{where}.worked_solutions",
              f"got {self.worked_solutions!r}, expected an integer >= 0")
        check(0 <= self.nonreasoning_fraction < 1, f"{where}.nonreasoning_fraction", "expected a value in [0, 1)")
