"""Megatron-Core's own inference engine as a rollout engine: the fallback where vLLM cannot serve
an architecture, and the reference the vLLM engine is compared with.

It generates with the trainer's live model (no copy, no refit), through Megatron-Core's legacy
static-batching path (``GPTInferenceWrapper`` + ``StaticInferenceContext`` KV cache +
``TextGenerationController.generate_all_output_tokens_static_batch``), which runs MLA on CPU. Our
controller subclass replaces Megatron's sampling and stopping:

* every completion samples from its own ``torch.Generator`` seeded by
  :func:`~r1mega.rollout.sampling.sample_seed`, through :func:`~r1mega.rollout.sampling.filter_logits`
  (temperature, top-k, top-p together, as vLLM; Megatron's own sampler forbids top-k with top-p and
  has one RNG for the batch);
* the log-prob of each sampled token is taken from the logits it was sampled from (KV-cached
  decode), so it equals ``TrainEngine.logprobs`` of the finished sequence up to fp32 rounding;
* a completion ends at the end-of-sequence token, at a ``stop_token_ids`` token (``stop_reason`` = the
  token id, as vLLM), at a stop string (checked on the decoded text),
  or after ``max_new_tokens``; the end-of-sequence token is kept in ``token_ids`` (as vLLM does).

Limits: the trainer must be built without MTP layers (``TrainEngine(..., mtp=False)``, as RL does)
and without virtual pipeline stages. Prompts are sharded over the trainer's data-parallel replicas
except with expert parallelism, where the ranks of an EP group must run the same number of
forward steps, so every rank generates every prompt.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Iterable, Optional, Sequence

import torch

from .engine import Completion, RefitStats, RolloutEngine, Rollouts, gather_shares
from .sampling import Sampling, filter_logits, sample_seed, sample_token, split_evenly


class _Row:
    """The state of one completion while its batch generates."""

    def __init__(self, prompt_index: int, sample_index: int, seed: int, device):
        self.key = (prompt_index, sample_index)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.tokens: list = []
        self.logprobs: list = []
        self.done = False
        self.reason = "length"
        self.stop_reason = None
        self.text = None  # set when a stop string cuts it, else decoded at the end
        self.routed_experts = None  # R3: [prompt + completion - 1, L, K]


def _controller_class():
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    class Controller(TextGenerationController):
        """Megatron's static-batch loop with per-completion sampling and stopping (see module doc)."""

        rows: list = []
        sampling: Optional[Sampling] = None
        vocab_size: int = 0
        eos_id: Optional[int] = None
        decode = None
        record = None  # R3: called after every forward step, while the routers record (see MegatronEngine)

        def sample_from_logits(self, last_token_logits, sampling_params=None, vocab_size=None,
                               generation_started=None, top_n_logprobs_dict=None, logits=None, **kwargs):
            if self.record is not None:
                self.record(len(self.rows))
            s = self.sampling
            out = torch.argmax(last_token_logits, dim=-1)
            for b, row in enumerate(self.rows):
                if row.done or not bool(generation_started[b]):
                    continue  # its token is ignored: no RNG draw, nothing recorded
                processed = filter_logits(last_token_logits[b], s.temperature, s.top_k, s.top_p, self.vocab_size)
                tok, lp = sample_token(processed, s.greedy, row.gen)
                out[b] = tok
                row.tokens.append(tok)
                row.logprobs.append(lp)
                self._check_stop(row, tok)
            return out

        def _check_stop(self, row: _Row, tok: int) -> None:
            s = self.sampling
            if self.eos_id is not None and tok == self.eos_id:
                row.done, row.reason = True, "stop"  # stop_reason stays None, as vLLM reports EOS
            elif tok in s.stop_token_ids:
                row.done, row.reason, row.stop_reason = True, "stop", tok  # kept in token_ids, as vLLM does
            elif s.stop:
                text = self.decode(row.tokens)
                hits = [(text.find(x), x) for x in s.stop if x in text]
                if hits:
                    at, stop = min(hits)
                    row.done, row.reason, row.stop_reason = True, "stop", stop
                    row.text = text[:at + len(stop)] if s.include_stop_str_in_output else text[:at]
            if not row.done and len(row.tokens) >= s.max_new_tokens:
                row.done, row.reason = True, "length"

        def update_generation_status(self, updated_prompts_tokens, generation_started, current_context_end_position,
                                     is_generation_done_tensor, generated_sequence_lengths, termination_id=None):
            done = torch.tensor([r.done for r in self.rows], device=is_generation_done_tensor.device)
            lengths = torch.tensor([len(r.tokens) for r in self.rows], device=generated_sequence_lengths.device)
            return done, lengths.int()

    return Controller


class _TokenizerShim:
    """What Megatron's controller asks of a tokenizer (its defaults are never used here)."""

    def __init__(self, tok):
        self.tok = tok
        self.eod = tok.eos_token_id if tok.eos_token_id is not None else -1
        self.vocab_size = len(tok)

    def tokenize(self, text):
        return self.tok.encode(text)

    def detokenize(self, ids, **kw):
        return self.tok.decode(list(ids), skip_special_tokens=True)


class MegatronEngine(RolloutEngine):
    name = "megatron"

    def __init__(self, trainer_engine, tokenizer, sampling: Sampling, max_batch: int = 32,
                 max_seq_len: Optional[int] = None, record_routing: bool = False):
        super().__init__(sampling)
        from megatron.core import parallel_state as ps
        from megatron.core.inference.contexts import StaticInferenceContext
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
        from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig
        from megatron.core.utils import unwrap_model

        from r1mega.model.builder import padded_vocab_size

        if trainer_engine.mtp:
            raise ValueError("the Megatron rollout engine cannot run MTP layers: build the policy with "
                             "TrainEngine(..., mtp=False) (RL does not train MTP)")
        if len(trainer_engine.chunks) != 1:
            raise ValueError("the Megatron rollout engine does not support virtual pipeline stages")
        self.trainer = trainer_engine
        m, p = trainer_engine.model_cfg, trainer_engine.parallel
        self.model = unwrap_model(trainer_engine.chunks[0])
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len or m.max_position_embeddings
        iwc = InferenceWrapperConfig(
            hidden_size=m.hidden_size, params_dtype=trainer_engine.config.params_dtype,
            inference_batch_times_seqlen_threshold=-1, padded_vocab_size=padded_vocab_size(m.vocab_size, p.tensor_parallel),
            inference_max_requests=max_batch, inference_max_seq_length=self.max_seq_len)
        self.context = StaticInferenceContext.from_config(iwc)
        wrapper = GPTInferenceWrapper(self.model, iwc, self.context)
        self.controller = _controller_class()(wrapper, _TokenizerShim(tokenizer))
        self.controller.vocab_size = m.vocab_size
        self.controller.eos_id = tokenizer.eos_token_id
        self.controller.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
        dp_rank, dp_size = trainer_engine.dp_rank_size()
        # one rank per data-parallel replica contributes its replica's completions to the gather
        self.leader = (ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0
                       and ps.get_context_parallel_rank() == 0)
        if p.expert_parallel > 1:  # EP ranks must step together: no prompt sharding (module doc)
            self.leader = self.leader and dp_rank == 0
            dp_rank, dp_size = 0, 1
        self.replica, self.replicas = dp_rank, dp_size
        self.record_routing = record_routing
        if record_routing and not trainer_engine.replay_routers:
            raise ValueError("recording the routing (R3) needs the trainer built with router_replay=True")

    @classmethod
    def from_run_config(cls, cfg, trainer_engine, **kw) -> "MegatronEngine":
        from r1mega.data.tokenizer import load_tokenizer, run_tokenizer_dir

        tok = kw.pop("tokenizer", None) or load_tokenizer(run_tokenizer_dir(cfg.data))
        sampling = kw.pop("sampling", None) or Sampling.from_config(cfg.rollout)
        max_len = kw.pop("max_seq_len", None) or cfg.rollout.max_model_len or cfg.data.seq_length
        return cls(trainer_engine, tok, sampling, max_seq_len=max_len, **kw)

    # ------------------------------------------------------------------- generate
    def _generate_batch(self, prompts: list, rows: list, s: Sampling) -> None:
        from megatron.core.inference.inference_request import InferenceRequest
        from megatron.core.inference.sampling_params import SamplingParams
        from megatron.core.transformer.utils import set_model_to_sequence_parallel

        longest = max(len(p) for p in prompts)
        if longest + s.max_new_tokens > self.max_seq_len:
            raise ValueError(f"prompt of {longest} tokens + max_new_tokens={s.max_new_tokens} exceeds the engine's "
                             f"max_seq_len={self.max_seq_len}")
        params = SamplingParams(temperature=1.0, top_k=0, top_p=0.0, return_log_probs=False,
                                num_tokens_to_generate=s.max_new_tokens)
        params.add_attributes({"no_early_termination": True})  # our update_generation_status decides
        requests = OrderedDict((str(k), InferenceRequest(request_id=str(k), prompt="", sampling_params=params,
                                                         prompt_tokens=list(p))) for k, p in enumerate(prompts))
        ctl = self.controller
        ctl.rows, ctl.sampling = rows, s
        steps: list = []  # R3: each forward step's routing [b, step tokens, L, K]
        routers = self.trainer.replay_routers if self.record_routing else []
        if routers:
            from r1mega.train import router_replay as rr

            m = self.trainer.model_cfg
            ctl.record = lambda b: steps.append(rr.take_recorded(
                routers, b, rr.moe_layer_count(m), rr.routing_dtype(m.n_routed_experts), False))
            rr.start_record(routers)
        sp = self.model.config.sequence_parallel
        if sp:  # Megatron's static inference runs without SP (it all-gathers in the MoE layers itself)
            set_model_to_sequence_parallel(self.model, False)
        try:
            ctl.generate_all_output_tokens_static_batch(requests)
        finally:
            if sp:
                set_model_to_sequence_parallel(self.model, True)
            ctl.rows, ctl.record = [], None
            if routers:
                rr.stop(routers)
        if routers:  # every input position's routing: the prompt's and each sampled token's but the last
            routing = torch.cat(steps, dim=1)
            for b, (row, p) in enumerate(zip(rows, prompts)):
                row.routed_experts = routing[b, :len(p) + len(row.tokens) - 1].clone()
        for row in rows:
            if row.text is None:
                row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Optional[Sampling] = None,
                 n: Optional[int] = None, gather: bool = True, step: Optional[int] = None) -> Rollouts:
        s = self._resolve(sampling, n)
        call = self._next_call(step)
        t0 = time.perf_counter()
        share = split_evenly(len(prompts), self.replicas, self.replica)
        device = next(self.model.parameters()).device
        rows = [_Row(i, j, sample_seed(s.seed, call, i, j), device) for i in share for j in range(s.n)]
        for k in range(0, len(rows), self.max_batch):
            chunk = rows[k:k + self.max_batch]
            self._generate_batch([prompts[r.key[0]] for r in chunk], chunk, s)
        local = [Completion(r.key[0], r.key[1], r.tokens, r.logprobs, r.text, r.reason, r.stop_reason,
                            routed_experts=r.routed_experts) for r in rows]
        if gather:
            groups = gather_shares([local[k * s.n:(k + 1) * s.n] for k in range(len(share))], share, self.leader,
                                    len(prompts))
            local = [c for g in groups for c in g]
        return Rollouts([list(p) for p in prompts], s.n, local, time.perf_counter() - t0, self.name, s)

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list:
        """The trainer's own log-probs (every rank computes every sequence)."""
        from r1mega.train.batching import lm_batch

        lp = self.trainer.logprobs(lm_batch([list(s) for s in sequences]))
        return [lp[i, :len(s) - 1].tolist() for i, s in enumerate(sequences)]

    # ---------------------------------------------------------------- weights
    def update_weights(self, buckets: Iterable) -> RefitStats:
        raise NotImplementedError("the Megatron rollout engine generates with the trainer's own weights: load "
                                  "weights into the trainer (r1mega.bridge.load_hf_weights) instead")

    def refit(self, trainer_engine) -> RefitStats:
        if trainer_engine is not self.trainer:
            raise ValueError("the Megatron rollout engine is bound to the trainer it was built with")
        return RefitStats(seconds=0.0, bytes=0, tensors=0, buckets=0)
