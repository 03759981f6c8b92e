"""Sampling settings and seeds shared by both rollout engines.

:class:`Sampling` is the engine-neutral form of the ``rollout`` config's sampling fields. Both
engines sample every completion from its *own* random stream, seeded by :func:`sample_seed` from
``(seed, call, prompt index, sample index)``: results do not depend on how prompts are batched or
sharded over data-parallel replicas, and a fresh engine with the same seed reproduces them.

:func:`filter_logits` is the Megatron engine's sampling distribution (temperature, then top-k,
then top-p, as vLLM applies them); the log-prob an engine reports for a sampled token is taken
under this processed distribution. With ``top_k`` and ``top_p`` off it equals the trainer's
``TrainEngine.logprobs(batch, temperature=T)``, which the mismatch check relies on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

_MASK64 = (1 << 64) - 1
GREEDY_EPS = 1e-5
"""Temperatures below this sample greedily (as vLLM does)."""


@dataclass(frozen=True)
class Sampling:
    """How to sample. ``top_k`` <= 0 and ``top_p`` == 1 mean off; ``temperature`` 0 is greedy."""

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple = field(default_factory=lambda: ("</answer>",))
    include_stop_str_in_output: bool = True
    seed: int = 1234
    stop_token_ids: tuple = ()  # besides EOS: e.g. the chat template's end-of-turn (PromptRenderer.stop_token_ids)

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in (self.stop_token_ids or ())))
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def from_config(cls, rollout, renderer=None, **overrides) -> "Sampling":
        """From a :class:`~r1mega.config.rollout.RolloutConfig` (``n`` and any field overridable). With the
        stage's ``renderer`` (:class:`~r1mega.data.templates.PromptRenderer`) generation also stops on its
        tokenizer's EOS / end-of-turn tokens (``stop_token_ids``)."""
        base = dict(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
                    top_k=rollout.top_k, stop=tuple(rollout.stop),
                    include_stop_str_in_output=rollout.include_stop_str_in_output, seed=rollout.seed,
                    stop_token_ids=renderer.stop_token_ids() if renderer is not None else ())
        return cls(**{**base, **overrides})

    def replace(self, **kw) -> "Sampling":
        return dataclasses.replace(self, **kw)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def filtered(self) -> bool:
        """True when top-k or top-p cut the distribution (log-probs then differ from the trainer's)."""
        return (self.top_k is not None and self.top_k > 0) or self.top_p < 1.0


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, call: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one completion: a hash of (engine seed, generate-call counter, global prompt
    index, sample index), in [0, 2**31) so every engine's RNG accepts it."""
    h = _splitmix64(seed & _MASK64)
    for v in (call, prompt_index, sample_index):
        h = _splitmix64(h ^ (v & _MASK64))
    return h % (2**31 - 1)


def split_evenly(n: int, parts: int, index: int) -> range:
    """The contiguous share ``index`` of ``range(n)`` split into ``parts`` (sizes differ by <= 1)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def filter_logits(logits: torch.Tensor, temperature: float, top_k: Optional[int] = None,
                  top_p: float = 1.0, vocab_size: Optional[int] = None) -> torch.Tensor:
    """Processed fp32 logits ``[..., V]`` of the sampling distribution: padding columns beyond
    ``vocab_size`` masked, divided by the temperature (skipped when greedy), then top-k and top-p
    (nucleus: keep the smallest set of most likely tokens whose probability reaches ``top_p``;
    the most likely token always stays). Masked entries are ``-inf``."""
    x = logits.float()
    if vocab_size is not None and x.size(-1) > vocab_size:
        x = x.clone()
        x[..., vocab_size:] = float("-inf")
    if temperature >= GREEDY_EPS and temperature != 1.0:
        x = x / temperature
    if top_k is not None and 0 < top_k < x.size(-1):
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass strictly above each token
        drop = before >= top_p
        drop[..., 0] = False
        x = x.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return x


def sample_token(processed: torch.Tensor, greedy: bool, generator: Optional[torch.Generator]) -> tuple[int, float]:
    """One token from a row of processed logits ``[V]`` and its log-prob under them."""
    logp = processed.log_softmax(-1)
    if greedy:
        tok = int(torch.argmax(processed))
    else:
        tok = int(torch.multinomial(logp.exp(), 1, generator=generator))
    return tok, float(logp[tok])
