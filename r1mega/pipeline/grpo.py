"""One GRPO stage (R1-Zero, reasoning RL, all-scenario RL): the loop of the design's data flow.

Per iteration, on every rank (SPMD):

    prompts -> rollout (G samples each) -> rewards (split over ranks, gathered) -> group advantages
      -> reference log-probs and, unless the step makes a single update (grpo.old_logprobs), old
         log-probs recomputed by Megatron (rollout log-probs kept for the mismatch check, which runs
         before any weight changes, and truncated IS) -> policy updates over minibatches -> refit

Resumable: the policy (with optimizer), the reference and the iteration are checkpointed. Prompts: with
only the built-in tasks (no ``data.sources`` / ``data.train_paths``) those of iteration ``k`` are a pure
function of (seed, k); with sources, the mixture's position is saved in the checkpoint's ``extra``
(``prompts``), since dynamic sampling consumes a variable number per iteration (see
:mod:`r1mega.data.mixture`). Every rank draws the same global list; the rollout engine splits it over the
data-parallel replicas. Rank 0 appends each iteration's prompt ids to ``prompts.jsonl`` in the stage directory.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.config.base import ConfigError


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def gather_rewards(computer, samples: list) -> tuple[list[float], dict, list[dict]]:
    """Score ``samples`` split round-robin over all ranks; every rank gets every result."""
    rank, world = _world()
    mine = list(range(rank, len(samples), world))
    out = computer.score([samples[i] for i in mine])
    part = [(i, out.totals[k], {c: v[k] for c, v in out.components.items()}) for k, i in enumerate(mine)]
    parts = [part]
    metrics = [out.metrics]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, part)
        metrics = [None] * world
        dist.all_gather_object(metrics, out.metrics)
    totals = [0.0] * len(samples)
    comps: list[dict] = [{} for _ in samples]
    for p in parts:
        for i, t, c in p:
            totals[i], comps[i] = t, c
    counters = {k: sum(m.get(k, 0) for m in metrics) for k in ("reward/timeouts", "reward/errors", "reward/rejected")}
    return totals, counters, comps


def _copy_weights(src_engine, dst_engine) -> None:
    with torch.no_grad():
        for s, d in zip(src_engine.chunks, dst_engine.chunks):
            dst = dict(getattr(d, "module", d).named_parameters())
            for name, p in getattr(s, "module", s).named_parameters():
                dst[name].copy_(p)
            dbuf = dict(getattr(d, "module", d).named_buffers())
            for name, b in getattr(s, "module", s).named_buffers():
                if name in dbuf:
                    dbuf[name].copy_(b)


class GRPOStage:
    def __init__(self, cfg, stage):
        from r1mega.algorithms import GRPOLoss
        from r1mega.data.mixture import load_sources, make_prompts
        from r1mega.data.templates import renderer_for, rewards_for_template
        from r1mega.data.tokenizer import load_tokenizer, run_tokenizer_dir
        from r1mega.rewards import RewardComputer
        from r1mega.rollout import Sampling, make_engine
        from r1mega.train.checkpoint import CheckpointManager
        from r1mega.train.engine import TrainEngine
        from r1mega.train.entry import _rank0, load_tokenizer_for, resolve_init_checkpoint

        self.cfg, self.stage = cfg, stage
        # users' prompt files are read and checked before anything starts (a bad row fails in seconds)
        sources = load_sources(cfg.data, cfg.resolve_path)
        self.out = Path(cfg.stage_dir(stage))
        self.out.mkdir(parents=True, exist_ok=True)
        # think_prefilled and the stop ids follow the template (its tokenizer's, for hf_chat)
        self.renderer = renderer_for(cfg.data, load_tokenizer(run_tokenizer_dir(cfg.data)))
        self.rewards = RewardComputer(rewards_for_template(cfg.rewards, self.renderer)).warm_up()  # (while models load)
        g = cfg.grpo
        self.G, self.P = g.group_size, g.prompts_per_step
        self.policy = TrainEngine(cfg.model, cfg.parallel, cfg.optimizer, seed=cfg.data.seed, mtp=False,
                                  total_steps=stage.steps * max(1, g.updates_per_step),
                                  router_replay=cfg.rollout.router_replay != "none")
        self.tok = load_tokenizer_for(cfg, self.out)
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep_last=cfg.checkpoint.keep_last or 0)
        self.ref_ckpt = CheckpointManager(self.out / "reference", keep_last=1)
        self.start, resumed = 0, {}
        init = resolve_init_checkpoint(cfg, stage.init_from)
        if cfg.checkpoint.resume and self.ckpt.latest() is not None:
            resumed = self.ckpt.load(self.policy)
            self.start = resumed["step"]
        elif init is not None:
            self.ckpt.load(self.policy, init, load_optimizer=False)
        self.ref = self._reference(init) if g.kl_coef > 0 else None
        self.sampling = Sampling.from_config(cfg.rollout, self.renderer, n=self.G, temperature=g.temperature)
        # top-k / top-p: the engine's log-probs are those of the renormalised (filtered) distribution, the
        # trainer's of the full one; they differ by design, so the before-update check would stop healthy runs
        self.check_rollout_logprobs = not self.sampling.filtered
        if self.sampling.filtered and cfg.rollout.mismatch_threshold is not None and _rank0():
            print(f"[r1mega] {stage.name}: rollout.top_k={cfg.rollout.top_k} / top_p={cfg.rollout.top_p} filter the "
                  "sampling distribution, so the engine's log-probs differ from the trainer's by design: the "
                  "before-update rollout/trainer mismatch check is skipped (its figures are still logged; "
                  "the vLLM refit probe still checks the engine's weights)", flush=True)
        vllm = cfg.rollout.engine == "vllm"  # (the Megatron engine generates with the policy itself)
        # the largest generate call: P prompts x G (dynamic sampling's extra rounds ask for up to 2x the missing prompts)
        self.rollout = make_engine(cfg, self.policy, **({"load_trainer_weights": True} if vllm else {}),
                                   max_batch=self.P * self.G * (2 if g.dynamic_sampling else 1),
                                   record_routing=cfg.rollout.router_replay == "r3")
        # All-scenario RL: a frozen Bradley-Terry reward model scores the general (helpfulness) prompts.
        self.model_reward = None
        if cfg.rewards.reward_model:
            from r1mega.rewards.model_reward import ModelRewardScorer

            self.model_reward = ModelRewardScorer.from_run_config(cfg, self.tok)
        # rollout.offload_trainer: the trainer's state in host memory while vLLM generates (docs/rollout.md)
        from r1mega.train.offload import StageOffload

        self.offload = StageOffload.for_stage(cfg.rollout, self.policy, self.ref, stage.name,
                                              log=lambda line: print(line, flush=True) if _rank0() else None)
        self.loss = GRPOLoss(g, max_new_tokens=cfg.rollout.max_new_tokens)
        self.loss_reusing_old = GRPOLoss(g, max_new_tokens=cfg.rollout.max_new_tokens, old_from_current=True)
        self.prompts = make_prompts(cfg.data, self.tok, sources, seed=cfg.data.seed, general=True)
        if hasattr(self.prompts, "restore"):
            self.prompts.restore((resumed.get("extra") or {}).get("prompts"))

    def _reference(self, init):
        """The frozen reference policy for iteration ``self.start`` on: the stage's initial weights (the init
        checkpoint, else the copy saved at step 0) until the first refresh (``grpo.ref_refresh_interval``), then
        the policy of the last refresh step, saved then (the policy is checkpointed at every refresh step too)."""
        from r1mega.train.checkpoint import CheckpointError
        from r1mega.train.engine import TrainEngine

        cfg, every = self.cfg, self.cfg.grpo.ref_refresh_interval or 0
        last = self.start // every * every if every else 0
        saved = self.ref_ckpt.step_dir(last)
        if last == 0 and init is None and self.start > 0 and not saved.is_dir():
            raise CheckpointError(
                f"{self.stage.name}: resuming at iteration {self.start}, the KL reference must be the stage's initial "
                f"weights, but the stage has no init checkpoint (init_from) and no saved copy of them ({saved}; a run "
                "started by an older r1mega). Restart the stage from scratch (remove its checkpoints) or set "
                "grpo.kl_coef=0")
        if 0 < last < self.start and not saved.is_dir():
            raise CheckpointError(f"{self.stage.name}: resuming at iteration {self.start}, the KL reference is the "
                                  f"policy of its last refresh (step {last}), but {saved} is missing")
        ref = TrainEngine(cfg.model, cfg.parallel, None, seed=cfg.data.seed, mtp=False,
                          forward_micro_batch_size=cfg.optimizer.micro_batch_size,
                          router_replay=cfg.rollout.router_replay != "none")
        if last == 0 and init is not None:
            self.ref_ckpt.load(ref, init, load_optimizer=False)
        elif last == self.start:  # a fresh start without init, or a resume exactly at a refresh: the policy
            _copy_weights(self.policy, ref)
            if self.start == 0:
                self.ref_ckpt.save(ref, 0)
        else:
            self.ref_ckpt.load(ref, saved, load_optimizer=False)
        return ref

    def _refresh_due(self, it: int) -> bool:
        every = self.cfg.grpo.ref_refresh_interval
        return self.ref is not None and bool(every) and (it + 1) % every == 0

    def _extra(self) -> dict:
        """The checkpoint's ``extra``: the stage name and the prompt mixture's position."""
        state = self.prompts.state() if hasattr(self.prompts, "state") else None
        return {"stage": self.stage.name, **({"prompts": state} if state else {})}

    def _record_prompts(self, it: int, items: list) -> None:
        from r1mega.train.entry import _rank0

        if _rank0():
            import json

            from r1mega.data.jsonl import open_append

            with open_append(self.out / "prompts.jsonl") as f:  # a row torn by a kill is dropped first
                f.write(json.dumps({"iteration": it + 1, "ids": [i.meta.get("id") for i in items],
                                    "sources": [i.meta.get("source") for i in items]}) + "\n")

    # ------------------------------------------------------------------ pieces
    def _samples(self, items, rollouts) -> list:
        from r1mega.rewards import RewardSample

        return [RewardSample(response=c.text, task_type=items[c.prompt_index].task_type,
                             gold=items[c.prompt_index].gold, prompt=items[c.prompt_index].text,
                             metadata=items[c.prompt_index].reward_metadata(),
                             response_tokens=len(c.token_ids), max_tokens=self.sampling.max_new_tokens,
                             truncated=c.finish_reason == "length")
                for c in rollouts.completions]

    def _generate_scored(self, it: int):
        """:meth:`_generate_rounds` with the trainer's state in host memory meanwhile (``rollout.offload_trainer``;
        the engine sleeps afterwards, then the trainer comes back before its first forward)."""
        self.offload.before_generation()
        try:
            return self._generate_rounds(it)
        finally:
            self.rollout.sleep()  # vLLM's memory back to the trainer (GPU sleep mode; nothing on CPU)
            self.offload.after_generation()

    def _generate_rounds(self, it: int):
        """Rollouts and rewards of iteration ``it``; with dynamic sampling, groups whose rewards are
        all equal are dropped and refilled from extra prompts (at most max_rounds rounds)."""
        from r1mega.algorithms import dynamic_sampling_keep

        g = self.cfg.grpo
        items, comps_all, rewards_all, completions, prompts = [], [], [], [], []
        sampled: list = []  # per round: (groups, informative groups, task types, rewards, components)
        counters: dict = {}
        rounds = g.dynamic_sampling_max_rounds if g.dynamic_sampling else 1
        t_roll = t_rew = 0.0
        for r in range(rounds):
            need = self.P - len(items)
            batch_items = self.prompts.batch(it, need if r == 0 else need * 2, offset=r)
            t = time.time()
            # seeds from (rollout.seed, iteration, round, prompt, sample): a resumed run samples what an
            # uninterrupted one does (the engine's own call counter restarts at 0)
            ro = self.rollout.generate([b.ids for b in batch_items], self.sampling, n=self.G, step=it * rounds + r)
            t_roll += time.time() - t
            t = time.time()
            samples = self._samples(batch_items, ro)
            totals, cnt, comps = gather_rewards(self.rewards, samples)
            totals, comps, mcnt = self._model_rewards(samples, totals, comps)
            t_rew += time.time() - t
            cnt = {**cnt, **mcnt}
            for k, v in cnt.items():
                counters[k] = counters.get(k, 0) + v
            keep = list(range(len(batch_items)))
            group_rows: list = [[] for _ in batch_items]  # group i's completions, wherever the engine put them
            for k, c in enumerate(ro.completions):
                group_rows[c.prompt_index].append(k)
            if g.dynamic_sampling:
                mask = dynamic_sampling_keep(torch.tensor([totals[k] for rows in group_rows for k in rows]), self.G)
                keep = [i for i in range(len(batch_items)) if bool(mask[i])]
            sampled.append((len(batch_items), len(keep), [batch_items[c.prompt_index].task_type for c in ro.completions],
                            totals, comps))
            for i in keep[:self.P - len(items)]:
                rows = group_rows[i]  # with their own rewards
                prompts.append(batch_items[i].ids)
                completions += [dataclasses.replace(ro.completions[k], prompt_index=len(items)) for k in rows]
                rewards_all += [totals[k] for k in rows]
                comps_all += [comps[k] for k in rows]
                items.append(batch_items[i])
            if len(items) >= self.P:
                break
        from r1mega.rollout import Rollouts

        if g.dynamic_sampling:  # rounds ran out: the kept groups that split evenly over the DP ranks and minibatches
            from r1mega.algorithms.dynamic_sampling import dynamic_sampling_trim

            n = len(items) if len(items) == self.P else dynamic_sampling_trim(
                len(items), self.G, self.policy.dp_rank_size()[1], g.num_minibatches)
            trimmed, items, prompts = len(items) - n, items[:n], prompts[:n]
            completions = [c for c in completions if c.prompt_index < n]
            rewards_all, comps_all = rewards_all[:n * self.G], comps_all[:n * self.G]
            counters.update(self._sampled_metrics(sampled, n, trimmed))
        ro = Rollouts(prompts, self.G, completions)
        return items, ro, rewards_all, comps_all, counters, t_roll, t_rew

    def _model_rewards(self, samples: list, totals: list, comps: list) -> tuple[list, list, dict]:
        """The reward-model component of the samples whose task type uses it (collective: every rank
        holds the same samples; each data-parallel rank scores its share, see score_sequences)."""
        from r1mega.rewards.model_reward import apply_model_rewards

        rc = self.cfg.rewards
        if not any(rc.uses_model(s.task_type) for s in samples):
            return totals, comps, {}
        if self.model_reward is None:
            raise ConfigError("rewards.reward_model", "general (non-reasoning) prompts are scored by a reward model, "
                              "but none is set; add a reward_model stage and rewards.reward_model: stage:NAME")
        totals, comps, m = apply_model_rewards(rc, samples, totals, comps, self.model_reward, self.G)
        return totals, comps, m

    def _sampled_metrics(self, sampled: list, kept: int, trimmed: int) -> dict:
        """Dynamic sampling: the reward metrics over every group generated in all rounds (``sampled/...``,
        beside those of the kept groups) and the group counts (``dynamic_sampling/*``)."""
        from r1mega.algorithms.dynamic_sampling import dynamic_sampling_metrics

        types, comps = [t for s in sampled for t in s[2]], [c for s in sampled for c in s[4]]
        r = torch.tensor([x for s in sampled for x in s[3]], dtype=torch.float32)
        return {"sampled/reward/total": float(r.mean()),
                **{f"sampled/{k}": v for k, v in self._reward_metrics(types, r, comps).items()},
                **dynamic_sampling_metrics(sum(s[0] for s in sampled), sum(s[1] for s in sampled), kept, trimmed,
                                           len(sampled))}

    def _reward_metrics(self, types: list, r: torch.Tensor, comps: list) -> dict:
        """Reward means by component (over the samples whose task type has that component) and by task type
        (``types``: each sample's task type)."""
        rc = self.cfg.rewards
        out: dict = {}
        names = sorted({k for c in comps for k in c})
        for k in names:
            base = k[:-4] if k.endswith("_raw") else k
            vals = [c[k] for c, t in zip(comps, types) if k in c and base in rc.task_weights(t)]
            if vals:
                out[f"reward/{k}"] = sum(vals) / len(vals)
        for t in sorted(set(types)):
            sel = [i for i, x in enumerate(types) if x == t]
            out[f"reward/total/{t}"] = float(r[sel].mean())
            out[f"prompts/{t}_frac"] = len(sel) / len(types)
        return out

    def _shard(self, batch: dict) -> dict:
        from r1mega.train.batching import dp_shard

        r, n = self.policy.dp_rank_size()
        if (batch["tokens"].size(0) // self.G) % n:
            raise ConfigError("grpo.prompts_per_step", f"{batch['tokens'].size(0) // self.G} prompts do not split "
                              f"over {n} data-parallel ranks")
        return dp_shard(batch, r, n)

    def _local_minibatch(self, rows: int) -> int:
        """This rank's rows per optimizer step: ``grpo.minibatch_size`` counts sequences over all
        data-parallel ranks (None = every rollout of the step, one update)."""
        mbs = self.cfg.grpo.minibatch_size
        if not mbs:
            return rows
        _, n = self.policy.dp_rank_size()
        if mbs % n:
            raise ConfigError("grpo.minibatch_size", f"got {mbs}, expected a multiple of the {n} data-parallel ranks")
        return rows // self.cfg.grpo.num_minibatches  # (a short dynamic-sampling batch: as many, smaller updates)

    # -------------------------------------------------------------- iteration
    def iteration(self, it: int) -> dict:
        from r1mega.algorithms import accumulate_metrics, advantage_metrics, finalize_metrics, group_advantages
        from r1mega.rollout import check_mismatch, mismatch_stats

        g, T = self.cfg.grpo, self.cfg.grpo.temperature
        t0 = time.time()
        items, ro, rewards, comps, counters, t_roll, t_rew = self._generate_scored(it)
        self._record_prompts(it, items)
        if not items:
            return {"skipped": 1.0, **counters}
        r = torch.tensor(rewards, dtype=torch.float32)
        adv = group_advantages(r, self.G, mode=g.advantage_mode, eps=g.adv_epsilon)
        batch = ro.to_batch(pad_id=self.tok.pad_token_id or 0)
        batch["advantages"] = adv
        local = self.policy.same_rows(self._shard(batch))  # context parallelism: CP rank 0's rollouts on its CP ranks
        from megatron.core import parallel_state as ps

        dp_group = ps.get_data_parallel_group() if ps.get_data_parallel_world_size() > 1 else None
        where = f"{self.stage.name} iteration {it + 1}"
        # One update per rollout batch: the training forward gives the behaviour log-probs (GRPOLoss
        # old_from_current) and the mismatch check runs inside the step, before the weights change.
        reuse = g.reuse_old_logprobs
        t = time.time()
        if not reuse:  # (router replay: R3 rollouts carry routed_experts; R2 records them here, docs/rollout.md)
            r2 = self.cfg.rollout.router_replay == "r2"
            old = self.policy.logprobs(local, temperature=T, record_routing=r2)
            if r2:
                old, local["routed_experts"] = old
            local["old_logprobs"] = old
        if self.ref is not None:
            with self.offload.reference():  # (in host memory outside its pass with rollout.offload_trainer)
                local["ref_logprobs"] = self.ref.logprobs(local, temperature=T)
        t_lp = time.time() - t
        threshold = self.cfg.rollout.mismatch_threshold if self.check_rollout_logprobs else None  # (see __init__)
        if not reuse:
            mm = mismatch_stats(local["rollout_logprobs"], local["old_logprobs"], local["loss_mask"], group=dp_group)
            # Before any update: never learn from samples of a different policy than the one trained.
            check_mismatch(mm, threshold, where=where)
        else:  # the global loss-token count for the stats; the check itself runs inside the step
            tokens = local["loss_mask"].sum().double()
            if dp_group is not None:
                torch.distributed.all_reduce(tokens, group=dp_group)
            mm = {"tokens": int(tokens)}

        def check_before_update(metrics: dict) -> None:
            mm.update({"mean_abs": metrics["mismatch/abs_diff_mean"], "max_abs": metrics["mismatch/abs_diff_max"],
                       "kl_k3": metrics["mismatch/k3"]})
            check_mismatch(mm, threshold, where=where)

        t = time.time()
        sums: dict = {}  # the loss metrics of every update of the step, combined exactly (algorithms.metrics)
        norms, lr = [], float("nan")
        rows = local["tokens"].size(0)
        mb = self._local_minibatch(rows)
        for _ in range(g.ppo_epochs):
            for s in range(0, rows, mb):
                part = {k: (v[s:s + mb] if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == rows else v)
                        for k, v in local.items()}
                st = self.policy.train_step(part, self.loss_reusing_old if reuse else self.loss, temperature=T,
                                            with_entropy=True, before_update=check_before_update if reuse else None)
                accumulate_metrics(sums, st.sums)
                norms.append(st.grad_norm)
                lr = st.lr
        train_metrics = {**finalize_metrics(sums), "grad_norm": sum(norms) / len(norms), "grad_norm_max": max(norms),
                         "lr": lr, "updates": float(len(norms))}
        t_train = time.time() - t
        self.offload.before_refit()  # the optimizer state and gradients to host memory (rollout.offload_trainer)
        t = time.time()
        refit = self.rollout.refit(self.policy)
        t_refit = time.time() - t
        if self._refresh_due(it):  # (saved by run(), after the policy's checkpoint of this step)
            with self.offload.reference():
                _copy_weights(self.policy, self.ref)
        lengths = torch.tensor([len(c.token_ids) for c in ro.completions], dtype=torch.float32)
        comp_means = self._reward_metrics([items[c.prompt_index].task_type for c in ro.completions], r, comps)
        dt = time.time() - t0
        m = {"reward/total": float(r.mean()), **comp_means, "accuracy": comp_means.get("reward/accuracy", float("nan")),
             "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
             "response/clipped_frac": sum(c.finish_reason == "length" for c in ro.completions) / len(ro.completions),
             **finalize_metrics(advantage_metrics(r, adv, self.G)),
             **{f"train/{k}": v for k, v in train_metrics.items()},
             **{f"rollout_mismatch/{k}": float(v) for k, v in mm.items()},
             "rollout_mismatch/checked": float(threshold is not None), **counters,
             "time/rollout": t_roll, "time/reward": t_rew, "time/logprob": t_lp, "time/train": t_train,
             "time/refit": t_refit, "time/step": dt, "tokens_per_s": float(lengths.sum()) / dt,
             "refit/seconds": getattr(refit, "seconds", 0.0) if refit is not None else 0.0,
             **self.offload.take_stats()}
        probe = getattr(self.rollout, "last_probe", None)  # the refit's engine-vs-trainer check (vLLM)
        if probe:
            m.update({"refit/probe_mean_abs": probe["mean_abs"], "refit/probe_max_abs": probe["max_abs"]})
        return m

    # -------------------------------------------------------------------- run
    def run(self) -> dict:
        from r1mega.train.entry import StopFlag, _rank0
        from r1mega.train.logger import MetricLogger

        steps = self.stage.steps
        lg = self.cfg.logging
        log = MetricLogger(str(self.out), lg.jsonl_path, lg.tensorboard_dir, lg.tensorboard, lg.progress_bar,
                           total=steps, initial=self.start, enabled=_rank0(), desc=self.stage.name)
        stop, interval = StopFlag(), self.cfg.checkpoint.save_interval
        last: dict = {}
        try:
            for it in range(self.start, steps):
                last = self.iteration(it)
                log.log(it + 1, last, console=["reward/total", "accuracy", "reward/format", "reward/model",
                                               "response/length_mean", "train/kl/k3", "tokens_per_s"])
                refresh = self._refresh_due(it)
                if (interval and (it + 1) % interval == 0) or it + 1 == steps or refresh:
                    self.offload.reload_all()  # (the optimizer state is in host memory since the refit)
                    self.ckpt.save(self.policy, it + 1, extra=self._extra())
                    if refresh:  # after the policy: a reference save never runs ahead of the policy's checkpoints
                        self.ref_ckpt.save(self.ref, it + 1)
                elif stop.should_stop():
                    self.offload.reload_all()
                    self.ckpt.save(self.policy, it + 1, extra=self._extra())
                    return {"stopped_at": it + 1, **last}
        finally:
            log.close()
            self.rewards.close()
            self.rollout.shutdown()
        return last


def run_grpo_stage(cfg, stage_name: Optional[str] = None) -> dict:
    stage = cfg.select_stage(stage_name)
    if stage.kind != "grpo":
        raise ConfigError(f"pipeline.stages[{stage.name}].kind", f"{stage.kind!r} is not a GRPO stage")
    return GRPOStage(cfg.for_stage(stage), stage).run()
