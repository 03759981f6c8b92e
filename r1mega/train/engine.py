"""The Megatron-Core training engine every stage calls: optimizer steps and log-prob passes.

One :class:`TrainEngine` per model (policy, reference, student...). It owns this rank's model
chunks wrapped in Megatron ``DistributedDataParallel``, the Megatron optimizer (distributed
optimizer option, grad clipping) and the LR schedule, and runs Megatron's
``get_forward_backward_func`` schedule (no pipelining / 1F1B / interleaved 1F1B).

Batches are dicts of tensors whose first dimension is the sequence index *on this
data-parallel rank* (see :func:`r1mega.train.batching.dp_shard`): ``tokens [B,S]``,
``labels [B,S]`` (the token each position predicts), ``loss_mask [B,S]``, plus whatever the loss
reads. A loss is ``loss_fn(logprobs [b,S], microbatch) -> (loss, metrics)``; it must normalise
with the injected ``global_num_seqs`` / ``global_num_tokens`` so that the *sum* of its returns
over all microbatches and data-parallel ranks is the global-batch loss. The engine undoes
Megatron's own averaging (1/num_microbatches in the schedule, 1/DP in DDP) to honour that.
A loss with ``needs_logits = True`` (logit distillation) also receives the microbatch's
vocab-parallel logits as ``mb['logits']``; one with ``pairs_rows = True`` (Bradley-Terry) reads
consecutive rows together, so the engine keeps the rows of its batch in their order.

A batch with ``lengths [B]`` (see :mod:`r1mega.train.batching`) has its padding masked out of the
MoE router statistics (expert-bias token counts, sequence aux loss) and, on a layout without
pipeline stages or context parallelism, runs in microbatches cut to their rows' lengths, rows
sorted longest first unless the loss pairs them (see :meth:`TrainEngine._run`).

Context parallelism (``parallel.context_parallel > 1``, Transformer Engine attention only): every CP rank of a
data-parallel rank trains on CP rank 0's copy of the batch; each microbatch is cut into this rank's 2 of
2 x CP chunks of every row, with what the loss needs of the whole rows (:mod:`r1mega.train.context_parallel`),
and the log-probs of a frozen pass are gathered back to whole rows on every rank.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from r1mega.config.model import ModelConfig
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.builder import build_model
from r1mega.platform.distributed import init_model_parallel
from r1mega.train import context_parallel as cpar
from r1mega.train.batching import microbatches, pad_batch, take_rows, trim_positions
from r1mega.train import router_replay as rr
from r1mega.train.logprobs import vocab_parallel_logprobs
from r1mega.train.metrics import finalize_metrics, reduce_metric_sums, reduce_metrics
from r1mega.train.offload import require_resident

LossFn = Callable[[torch.Tensor, dict], tuple]


@dataclass
class StepStats:
    metrics: dict
    grad_norm: float
    lr: float
    skipped: bool
    sums: Optional[dict] = None  # ``metrics`` before finalising: fold several steps together with accumulate_metrics


class TrainEngine:
    def __init__(self, model: ModelConfig, parallel: ParallelConfig, optim: Optional[OptimizerConfig] = None, *,
                 seed: int = 1234, mtp: Optional[bool] = None, total_steps: Optional[int] = None,
                 forward_micro_batch_size: Optional[int] = None, router_replay: bool = False):
        """``optim=None`` builds a frozen, forward-only model (reference policy, teacher).
        ``mtp=False`` drops the MTP layers (RL and log-prob passes); the default follows the config.
        ``forward_micro_batch_size``: rows per microbatch of a frozen engine's passes (None: the whole
        batch at once); short rows then share microbatches cut to their length (see ``_run``).
        ``router_replay``: build the MoE routers with Megatron's RouterReplay, so that a batch's
        ``routed_experts`` is replayed and :meth:`logprobs` can record (:mod:`r1mega.train.router_replay`)."""
        from megatron.core.utils import get_model_config

        init_model_parallel(parallel, seed)
        self.model_cfg, self.parallel, self.optim_cfg = model, parallel, optim
        self.forward_micro_batch_size = forward_micro_batch_size
        self.mtp = bool(model.num_nextn_predict_layers) if mtp is None else mtp
        if router_replay and not model.is_moe:
            raise ValueError("router replay needs a MoE model (model.n_routed_experts > 0)")
        chunks = build_model(model, parallel, mtp=self.mtp, **({"moe_enable_routing_replay": True} if router_replay else {}))
        self.config = get_model_config(chunks[0])  # one config object, shared by every chunk
        self.router_replay = router_replay
        # a pipeline stage of dense layers only (DeepSeek's first layers) holds no router: nothing to replay there
        self.replay_routers = rr.routers(chunks, model.first_k_dense_replace,
                                         allow_none=parallel.pipeline_parallel > 1) if router_replay else []
        self._recording = False
        if parallel.virtual_pipeline:
            # Interleaved schedule: with PP=2 a rank's previous and next stage are the same peer, and
            # one batched p2p call both sends an activation and a gradient to it. Point-to-point
            # messages between a pair of ranks match in posting order (gloo, NCCL), and
            # _batched_p2p_ops posts send_prev before send_next but recv_prev before recv_next:
            # activation and gradient (same shape) are silently swapped. Megatron's unbatched
            # _p2p_ops orders them consistently (and uses a second group for PP=2), as Megatron-LM
            # does by default with VPP (batch_p2p_comm = not overlap_p2p_comm).
            self.config.batch_p2p_comm = False
        self.optimizer = self.scheduler = None
        if optim is None:
            for c in chunks:
                c.eval()
                c.requires_grad_(False)
            self.chunks = chunks
        else:
            self.chunks = self._wrap_ddp(chunks)
            self.optimizer, self.scheduler = self._build_optimizer(optim, total_steps)
        self.step = 0

    # ----------------------------------------------------------------- set-up
    def _wrap_ddp(self, chunks):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

        ddp_cfg = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=self.parallel.overlap_grad_reduce,
            use_distributed_optimizer=self.parallel.distributed_optimizer)
        wrapped = [DistributedDataParallel(self.config, ddp_cfg, c, disable_bucketing=i > 0) for i, c in enumerate(chunks)]
        # finalize_model_grads all-reduces DP grads, SP-norm and embedding grads, and updates the
        # aux-loss-free expert bias from the token counts of this step.
        self.config.finalize_model_grads_func = finalize_model_grads
        if self.parallel.overlap_grad_reduce:
            self.config.no_sync_func = [w.no_sync for w in wrapped]
            if len(wrapped) == 1:
                self.config.no_sync_func = self.config.no_sync_func[0]
        return wrapped

    def _build_optimizer(self, o: OptimizerConfig, total_steps: Optional[int]):
        from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        mcfg = MegatronOptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
            bf16=self.config.bf16, fp16=self.config.fp16, params_dtype=self.config.params_dtype,
            use_distributed_optimizer=self.parallel.distributed_optimizer)
        optimizer = get_megatron_optimizer(mcfg, self.chunks)
        steps = max(1, o.total_steps or total_steps or 1)
        warmup = min(o.warmup_steps, steps - 1) if steps > 1 else 0
        scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0 if warmup else o.lr, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=warmup,
            lr_decay_steps=steps, lr_decay_style=o.decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
            wd_incr_steps=steps, wd_incr_style="constant")
        return optimizer, scheduler

    # ----------------------------------------------------------- parallel info
    @staticmethod
    def dp_rank_size() -> tuple[int, int]:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()

    @staticmethod
    def _is_last_stage() -> bool:
        from megatron.core import parallel_state as ps

        return ps.is_pipeline_last_stage(ignore_virtual=True)

    def _seq_multiple(self) -> int:
        p = self.parallel
        return (p.tensor_parallel if p.sequence_parallel else 1) * (2 * p.context_parallel if p.context_parallel > 1 else 1)

    # ------------------------------------------------------------ forward step
    def _forward_step(self, loss_wrapper, data_iterator, model):
        mb = next(data_iterator)
        tokens = mb["tokens"]
        pos = mb.get("position_ids")  # context parallelism: the positions of this rank's chunks
        if pos is None:
            pos = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0).expand_as(tokens)
        kw = {"padding_mask": self._padding_mask(model, pos, mb["lengths"])} if "lengths" in mb else {}
        # full recompute re-runs each router in the backward: a replayed microbatch's ids stay queued for it
        in_backward = self.config.recompute_granularity == "full" and model.training and torch.is_grad_enabled()
        routers = self._chunk_routers(model)
        replay = self._routing_action(mb, routers, in_backward)
        try:
            if self.mtp:  # MTP needs labels: the model returns per-token CE and hooks in the MTP loss
                out = model(tokens, pos, None, labels=mb["labels"], **kw)
            else:
                out = model(tokens, pos, None, **kw)
            if replay == "record":
                mb = {**mb, "_routing": rr.take_recorded(
                    self.replay_routers, tokens.size(0), rr.moe_layer_count(self.model_cfg),
                    rr.routing_dtype(self.model_cfg.n_routed_experts), self.config.sequence_parallel)}
        finally:
            if replay == "replay" and in_backward:
                rr.replay_in_backward(routers)
            elif replay:
                rr.stop(routers)
        return out, functools.partial(loss_wrapper, mb)

    def _chunk_routers(self, model) -> list:
        """The replay routers of ``model``, one of this rank's chunks (all of them without interleaving)."""
        if len(self.chunks) == 1 or not self.replay_routers:
            return self.replay_routers
        mine = {id(m.router_replay) for m in model.modules() if getattr(m, "router_replay", None) is not None}
        return [(layer, r) for layer, r in self.replay_routers if id(r) in mine]

    def _routing_action(self, mb: dict, routers: list, in_backward: bool = False) -> Optional[str]:
        """Arm the routers for this microbatch's forward: replay its ``routed_experts`` (queued for the
        recompute in the backward too when ``in_backward``), or record the routing (:meth:`logprobs` with
        ``record_routing``); None: ordinary routing."""
        if not self.router_replay:
            if "routed_experts" in mb:
                raise ValueError("the batch carries routed_experts but the engine was built without router_replay")
            return None
        if "routed_experts" in mb:
            rr.set_replay(routers, mb["routed_experts"], self.config.sequence_parallel, keep_queued=in_backward)
            return "replay"
        if self._recording:
            rr.start_record(self.replay_routers)
            return "record"
        return None

    def _padding_mask(self, model, pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Megatron's MoE ``padding_mask``: ``[b, S]``, True at padding (``pos >= lengths``), which the routers
        leave out of their expert-bias token counts and aux losses. Megatron splits it over the
        sequence-parallel ranks on the first pipeline stage only: a later stage's share is cut here.
        (Megatron 0.16 gives the MTP layer's router no mask: it still counts padding. See also
        :mod:`r1mega.platform.megatron_moe_padding`.)"""
        from megatron.core.tensor_parallel import scatter_to_sequence_parallel_region
        from megatron.core.utils import get_attr_wrapped_model

        mask = pos >= lengths.to(pos.device)[:, None]
        if self.parallel.sequence_parallel and not get_attr_wrapped_model(model, "pre_process"):
            mask = scatter_to_sequence_parallel_region(mask.t().contiguous()).t().contiguous()
        return mask

    def _token_logprobs(self, output, mb, temperature: float, with_entropy: bool):
        if self.mtp:
            if temperature != 1.0 or with_entropy:
                raise ValueError("log-probs with temperature/entropy need a model built with mtp=False")
            return -output.float(), None
        return vocab_parallel_logprobs(output, mb["labels"], self.model_cfg.vocab_size, temperature, with_entropy)

    def _with_logits(self, loss_fn, mb: dict, output) -> dict:
        """A loss with ``needs_logits = True`` (logit distillation) also gets this microbatch's
        vocab-parallel logits ``[b, S, V_local]`` (with gradient) as ``mb['logits']``."""
        if not getattr(loss_fn, "needs_logits", False):
            return mb
        if self.mtp:
            raise ValueError("a loss that reads the logits needs a model built with mtp=False")
        return {**mb, "logits": output}

    def _run(self, batch: dict, loss_wrapper, forward_only: bool, sort: bool = True, trim: bool = True) -> tuple:
        """Run the schedule over ``batch``; returns ``(stores, order)``: the microbatches' outputs and the
        order of the (padded) batch's rows in them (None: their own order).

        With ``lengths`` in the batch and no pipeline stages or context parallelism (those need every
        microbatch at the same length), ``trim`` cuts each microbatch after its longest row
        (:func:`trim_positions`), and ``sort`` first orders the rows longest first, so that short rows
        share short microbatches."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        mbs, n_micro = self._microbatch_layout(batch["tokens"].size(0))
        batch = pad_batch(batch, rows_multiple=mbs * n_micro, seq_multiple=self._seq_multiple())
        p = self.parallel
        trim = trim and "lengths" in batch and p.pipeline_parallel == 1 and p.context_parallel == 1
        order = None
        if trim and sort and n_micro > 1:
            order = torch.argsort(batch["lengths"], descending=True, stable=True)
            batch = take_rows(batch, order)
        mb_list = microbatches(batch, mbs)
        if trim:
            mb_list = [trim_positions(mb, self._seq_multiple()) for mb in mb_list]
        if p.context_parallel > 1:
            mb_list = [self._cp_split(mb) for mb in mb_list]
        assert len(mb_list) == n_micro, (len(mb_list), n_micro)
        iters = [iter(mb_list) for _ in self.chunks]
        return get_forward_backward_func()(
            forward_step_func=functools.partial(self._forward_step, loss_wrapper),
            data_iterator=iters if len(iters) > 1 else iters[0], model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=len(mb_list), seq_length=batch["tokens"].size(1), micro_batch_size=mbs,
            forward_only=forward_only), order

    def _cp_split(self, mb: dict) -> dict:
        """This CP rank's chunks of a microbatch, with the whole rows' counts, sums and reporting rank."""
        from megatron.core import parallel_state as ps

        group = ps.get_context_parallel_group()
        return cpar.split_microbatch(mb, self.parallel.context_parallel, ps.get_context_parallel_rank(),
                                     cpar.seq_sum_fn(group))

    def same_rows(self, batch: dict) -> dict:
        """Under context parallelism, CP rank 0's copy of ``batch`` on every rank of its CP group (they must train
        on the same rows); the batch itself otherwise."""
        from megatron.core import parallel_state as ps

        if self.parallel.context_parallel == 1:
            return batch
        group = ps.get_context_parallel_group()
        return cpar.broadcast_rows(batch, group, dist.get_global_rank(group, 0))

    def _global_counts(self, batch: dict) -> dict:
        from megatron.core import parallel_state as ps

        # counted on whole rows, before any context-parallel split: over the DP group (CP ranks hold the same rows)
        counts = torch.tensor([float(batch["tokens"].size(0)), float(batch["loss_mask"].sum())])
        if ps.get_data_parallel_world_size() > 1:
            dist.all_reduce(counts, group=ps.get_data_parallel_group())
        return {"global_num_seqs": counts[0], "global_num_tokens": counts[1]}

    # --------------------------------------------------------------- public
    def train_step(self, batch: dict, loss_fn: LossFn, temperature: float = 1.0, with_entropy: bool = False,
                   before_update: Optional[Callable[[dict], None]] = None) -> StepStats:
        """One optimizer step on this DP rank's ``batch`` (all its microbatches).

        ``before_update(metrics)`` runs on every rank once the gradients are in and before the optimizer
        touches the weights, with the step's reduced loss metrics; an exception from it leaves the weights,
        the optimizer state and the routers' expert biases as they were."""
        from megatron.core import parallel_state as ps

        from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

        assert self.optimizer is not None, "train_step on a frozen engine (built with optim=None)"
        require_resident(self, "train_step")  # (rollout.offload_trainer: parked state is freed memory)
        clear_aux_losses_tracker()  # per-step values; never read here, so keep them from accumulating
        for c in self.chunks:
            c.train()
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        batch = self.same_rows(batch)
        batch = {**batch, **self._global_counts(batch)}
        n_micro = self._num_microbatches(batch)
        dp = ps.get_data_parallel_world_size()

        def loss_wrapper(mb, output):
            logprobs, entropy = self._token_logprobs(output, mb, temperature, with_entropy)
            if entropy is not None:
                mb = {**mb, "entropy": entropy.detach()}
            mb = self._with_logits(loss_fn, mb, output)
            loss, metrics = loss_fn(logprobs, mb)
            # the returns summed over microbatches, DP and CP ranks are the global loss; Megatron averages them
            return loss * cpar.loss_scale(n_micro, dp), metrics

        routers = self._router_state() if before_update is not None else []
        # No trimming with MTP: its loss counts padding positions and its router takes no padding mask.
        try:
            stores, _ = self._run(batch, loss_wrapper, forward_only=False, sort=not _pairs_rows(loss_fn), trim=not self.mtp)
        finally:
            rr.stop(self.replay_routers)  # drop what a recompute did not consume (e.g. after an exception)
        sums = reduce_metric_sums(stores if self._is_last_stage() else [], src_last_stage=True)
        metrics = finalize_metrics(sums)
        if before_update is not None:
            try:
                before_update(metrics)
            except BaseException:
                # Megatron applied the aux-loss-free expert-bias update when it finalised the gradients: undo it
                for module, bias, counts in routers:
                    module.expert_bias.copy_(bias)
                    module.local_tokens_per_expert.copy_(counts)
                raise
        ok, grad_norm, _ = self.optimizer.step()
        if ok:
            self.scheduler.step(increment=1)
        self.step += 1
        lr = self.optimizer.param_groups[0]["lr"]
        return StepStats(metrics, float(grad_norm or 0.0), float(lr), not ok, sums)

    def _cp_gather(self, local: torch.Tensor, dim: int) -> torch.Tensor:
        """A microbatch output's CP chunks (positions along ``dim``) back to whole rows, on every CP rank."""
        from megatron.core import parallel_state as ps

        if self.parallel.context_parallel == 1:
            return local
        return cpar.gather(local, ps.get_context_parallel_group(), self.parallel.context_parallel, dim)

    def _router_state(self) -> list:
        """``(router, expert_bias, local_tokens_per_expert)`` copies of every MoE router with a load bias."""
        return [(m, m.expert_bias.detach().clone(), m.local_tokens_per_expert.detach().clone())
                for c in self.chunks for m in c.modules() if getattr(m, "expert_bias", None) is not None]

    def _num_microbatches(self, batch: dict) -> int:
        return self._microbatch_layout(batch["tokens"].size(0))[1]

    def _microbatch_layout(self, rows: int) -> tuple[int, int]:
        """``(micro_batch_size, num_microbatches)`` for ``rows`` sequences on this rank; the batch is
        zero-padded (``loss_mask == 0``) to ``micro_batch_size * num_microbatches`` rows.

        Training uses ``optimizer.micro_batch_size``; a frozen engine ``forward_micro_batch_size`` (None:
        the whole batch as one microbatch). The interleaved schedule (virtual pipeline) needs a multiple of PP microbatches
        (Megatron groups PP consecutive microbatches per virtual stage): a frozen engine then splits
        its batch in PP microbatches, and training adds all-padding microbatches up to the next
        multiple (``check_batch`` refuses configs whose global batch needs that)."""
        rows = max(1, rows)
        mbs = self.optim_cfg.micro_batch_size if self.optim_cfg else (self.forward_micro_batch_size or rows)
        mbs = max(1, min(mbs, rows))
        n = -(-rows // mbs)
        if self.parallel.virtual_pipeline:
            pp = self.parallel.pipeline_parallel
            if self.optim_cfg is None:
                mbs, n = -(-rows // pp), pp
            else:
                n = -(-n // pp) * pp
        return mbs, n

    @torch.no_grad()
    def evaluate(self, batch: dict, loss_fn: LossFn) -> dict:
        """Forward-only loss and metrics of ``batch`` (same normalisation as training)."""
        for c in self.chunks:
            c.eval()
        batch = self.same_rows(batch)
        batch = {**batch, **self._global_counts(batch)}

        def loss_wrapper(mb, output):
            logprobs, _ = self._token_logprobs(output, mb, 1.0, False)
            loss, metrics = loss_fn(logprobs, self._with_logits(loss_fn, mb, output))
            return loss, {**metrics, "loss": loss.detach().reshape(1)}

        stores, _ = self._run(batch, loss_wrapper, forward_only=True, sort=not _pairs_rows(loss_fn))
        return reduce_metrics(stores if self._is_last_stage() else [], src_last_stage=True)

    @torch.no_grad()
    def logprobs(self, batch: dict, temperature: float = 1.0, with_entropy: bool = False,
                 record_routing: bool = False):
        """Per-token log-probs ``[B,S]`` of ``batch['labels']`` (and entropy if asked), on every rank; 0 at
        the padding positions (``t >= lengths[i]``) of a batch with ``lengths``.

        ``record_routing`` (an engine built with ``router_replay``; R2): also return the experts every
        token was routed to, ``routed_experts [B, S, L, K]`` (:mod:`r1mega.train.router_replay`), as the
        last item. A batch that carries ``routed_experts`` is replayed instead."""
        from megatron.core import parallel_state as ps

        for c in self.chunks:
            c.eval()
        batch = self.same_rows(batch)
        B, S = batch["tokens"].shape
        if record_routing:
            if not self.router_replay:
                raise ValueError("record_routing needs an engine built with router_replay=True")
            if "routed_experts" in batch:
                raise ValueError("record_routing: the batch already carries routed_experts (they would be replayed)")
            if self.parallel.pipeline_parallel > 1:
                raise ValueError("recording the routing (R2) needs pipeline_parallel=1 (R3 replays at any layout)")

        def keep(mb, output):
            lp, ent = self._token_logprobs(output, mb, temperature, with_entropy)
            out = torch.stack([lp, ent if ent is not None else torch.zeros_like(lp)])
            extra = {"_routing": mb["_routing"]} if record_routing else {}
            return torch.zeros((), device=lp.device), {"_out": out, **extra}

        self._recording = record_routing
        try:
            stores, order = self._run(batch, keep, forward_only=True)
        finally:
            self._recording = False
        if record_routing:
            routing = _unsplit([self._cp_gather(s["_routing"], 1) for s in stores], order, B, S)
            if "lengths" in batch:  # padding positions were routed too: keep them unrecorded (zeros)
                routing[torch.arange(S)[None] >= batch["lengths"].cpu()[:, None]] = 0
        if self._is_last_stage():
            outs = [self._cp_gather(s["_out"], 2) for s in stores]  # [2, b, S'], S' cut to the microbatch's rows: pad back
            width = max(S, max(o.size(2) for o in outs))
            out = torch.cat([F.pad(o, [0, width - o.size(2)]) for o in outs], dim=1)
            if order is not None:
                out = out[:, torch.argsort(order)]
            out = out[:, :B, :S]
            if "lengths" in batch:
                pos = torch.arange(S, device=out.device)
                out = out.masked_fill(pos >= batch["lengths"].to(out.device)[:, None], 0.0)
            out = out.contiguous()
        else:
            out = torch.empty(2, B, S)
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(out, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group())
        res = (out[0], out[1]) if with_entropy else (out[0],)
        res = res + (routing,) if record_routing else res
        return res if len(res) > 1 else res[0]


def _unsplit(parts: list, order, B: int, S: int, dim: int = 0) -> torch.Tensor:
    """Microbatch outputs (rows along ``dim``, positions cut to their microbatch) back into the batch's
    row order, ``B`` rows of ``S`` positions (the zero padding rows and positions dropped)."""
    width = max(S, max(p.size(dim + 1) for p in parts))
    pads = [[0, 0] * (p.dim() - dim - 2) + [0, width - p.size(dim + 1)] for p in parts]
    out = torch.cat([F.pad(p, pad) for p, pad in zip(parts, pads)], dim=dim)
    if order is not None:
        out = out.index_select(dim, torch.argsort(order).to(out.device))
    return out.narrow(dim, 0, B).narrow(dim + 1, 0, S)


def _pairs_rows(loss_fn) -> bool:
    """Whether ``loss_fn`` reads consecutive rows together (``pairs_rows = True``): their order must stay."""
    return getattr(loss_fn, "pairs_rows", False)
