"""The reward model: a Megatron-Core GPTModel whose scalar score is the log-odds of two tokens.

Score definition (why not a separate scalar head)::

    r(prompt, response) = logit_good - logit_bad   at the last position of  prompt + response + <eos>

* It stays entirely inside Megatron's ``GPTModel``: no extra module, so the model builds, shards
  (TP/PP/EP), checkpoints and reshards exactly like the policy, and a reward model can be
  initialised from any stage checkpoint (pretrain, SFT) with nothing left randomly initialised.
* It is shift-invariant (the log-softmax normaliser cancels: it equals ``log p(good) - log p(bad)``)
  and unbounded, as a Bradley-Terry reward should be; a designated single-token logit would be
  bounded above (log-prob) or tied to the whole vocabulary's scale.
* Under tensor parallelism the logits are vocabulary-parallel: every rank takes
  ``logits_local @ w_local`` with ``w`` the (+1 at good, -1 at bad) column vector restricted to its
  slice (zeros elsewhere), and the TP group sums those ``[b, s]`` partials. Nothing of size ``V`` is
  gathered, and every rank's result stays connected to its logits, so the backward pass runs the
  same collectives on every TP rank.

:class:`RewardModelEngine` is a :class:`~r1mega.train.engine.TrainEngine` whose per-token quantity is
that score instead of a log-prob; training (``train_step`` with
:class:`~r1mega.algorithms.bt_loss.BradleyTerryLoss`) and scoring (``logprobs``) therefore go through
the engine's Megatron forward/backward schedules unchanged. Batches mark the scoring position with
``loss_mask`` (:func:`score_batch`).

In RL, :class:`ModelRewardScorer` holds the frozen reward model and :func:`apply_model_rewards`
turns its scores into the ``model`` reward component.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from r1mega.train.engine import TrainEngine
from r1mega.train.logprobs import _sum_tp, _tp_group

KIND = "reward_model"  # checkpoint meta extra["kind"] of reward-model checkpoints


def vocab_parallel_logit_diff(logits: torch.Tensor, good: int, bad: int) -> torch.Tensor:
    """``logits[..., good] - logits[..., bad]`` from vocab-parallel logits ``[..., V_local]`` (differentiable,
    same result on every TP rank)."""
    group = _tp_group()
    rank = dist.get_rank(group) if group is not None else 0
    v_local = logits.size(-1)
    start = rank * v_local
    w = torch.zeros(v_local, dtype=torch.float32, device=logits.device)
    if start <= good < start + v_local:
        w[good - start] += 1.0
    if start <= bad < start + v_local:
        w[bad - start] -= 1.0
    return _sum_tp(logits.float() @ w, group)


class RewardModelEngine(TrainEngine):
    """A TrainEngine whose per-token output is the reward score ``logit_good - logit_bad`` (no MTP)."""

    def __init__(self, model, parallel, optim=None, *, score_token_ids: Sequence[int], seed: int = 1234,
                 total_steps: Optional[int] = None):
        good, bad = (int(t) for t in score_token_ids)
        if good == bad:
            raise ValueError(f"score tokens must differ, got {good} twice")
        for t in (good, bad):
            if not 0 <= t < model.vocab_size:
                raise ValueError(f"score token id {t} is outside the vocabulary (size {model.vocab_size})")
        super().__init__(model, parallel, optim, seed=seed, mtp=False, total_steps=total_steps)
        self.score_token_ids = (good, bad)

    def _token_logprobs(self, output, mb, temperature: float, with_entropy: bool):
        return vocab_parallel_logit_diff(output, *self.score_token_ids), None


# ---------------------------------------------------------------------------------------- batches
def score_token_ids(tokenizer, tokens: Sequence[str], where: str = "reward_model.score_tokens") -> list[int]:
    """The ids of the two score tokens; each must be exactly one token of ``tokenizer``."""
    from r1mega.config.base import ConfigError

    ids = []
    for t in tokens:
        got = tokenizer.encode(t, add_special_tokens=False)
        if len(got) != 1:
            raise ConfigError(where, f"{t!r} is {len(got)} tokens ({got}) for this tokenizer; expected a single token")
        ids.append(got[0])
    return ids


def encode_scored(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of ``prompt + response + <eos>``, at most ``max_length`` (the response is cut, the EOS kept).
    The response is re-encoded from text, the same way for training pairs and for RL samples."""
    p = tokenizer.encode(prompt)
    r = tokenizer.encode(response, add_special_tokens=False)
    return (p + r)[:max(1, max_length - 1)] + [tokenizer.eos_token_id]


def score_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> dict:
    """``tokens [B,S]`` right-padded, dummy ``labels``, ``loss_mask`` one-hot at each sequence's last token and
    ``lengths [B]`` (see :mod:`r1mega.train.batching`)."""
    S = max(len(s) for s in sequences)
    B = len(sequences)
    tokens = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros(B, S)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, len(s) - 1] = 1.0
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return {"tokens": tokens, "labels": torch.zeros_like(tokens), "loss_mask": mask, "lengths": lengths}


def score_sequences(engine: RewardModelEngine, sequences: Sequence[Sequence[int]], pad_id: int = 0,
                    batch_size: int = 64) -> list[float]:
    """Reward of every sequence, on every rank (collective over the whole world).

    Each data-parallel rank scores its round-robin share (all ranks of one model replica — its TP/PP
    group — score the same share together), then the shares are gathered over the DP group."""
    from megatron.core import parallel_state as ps

    dp_rank, dp = engine.dp_rank_size()
    mine = list(range(dp_rank, len(sequences), dp))
    local: list[float] = []
    for k in range(0, len(mine), batch_size):
        idx = mine[k:k + batch_size]
        b = score_batch([sequences[i] for i in idx], pad_id)
        s = engine.logprobs(b)
        local += (s * b["loss_mask"]).sum(-1).tolist()
    parts = [list(zip(mine, local))]
    if dp > 1:
        parts = [None] * dp
        dist.all_gather_object(parts, list(zip(mine, local)), group=ps.get_data_parallel_group())
    out = [0.0] * len(sequences)
    for part in parts:
        for i, v in part:
            out[i] = float(v)
    return out


# ------------------------------------------------------------------------------------ RL rewards
def normalize_scores(scores: Sequence[float], groups: Sequence[int], mode: str, scale: float = 1.0) -> list[float]:
    """The ``model`` component from raw scores: 'sigmoid' -> sigmoid(s/scale); 'raw' -> s/scale;
    'group_z' -> (s - mean_g) / (std_g + 1e-6) over the scores sharing a group id (population std;
    a group of one gets 0)."""
    if mode == "sigmoid":
        return [1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, s / scale)))) for s in scores]
    if mode == "raw":
        return [s / scale for s in scores]
    if mode == "group_z":
        by: dict = {}
        for s, g in zip(scores, groups):
            by.setdefault(g, []).append(s)
        stats = {}
        for g, v in by.items():
            m = sum(v) / len(v)
            stats[g] = (m, math.sqrt(sum((x - m) ** 2 for x in v) / len(v)))
        return [(s - stats[g][0]) / (stats[g][1] + 1e-6) for s, g in zip(scores, groups)]
    raise ValueError(f"unknown normalisation {mode!r}")


def apply_model_rewards(rewards_cfg, samples: Sequence, totals: list, comps: list, scorer, group_size: int):
    """Add the reward-model component to the samples whose task type uses it (weight != 0).

    ``totals``/``comps`` are :func:`r1mega.pipeline.grpo.gather_rewards`'s outputs (identical on every
    rank; modified in place and returned); ``scorer(prompts, responses) -> raw scores`` is collective
    (:meth:`ModelRewardScorer.scores`); samples are prompt-major, ``group_size`` per prompt.
    Each scored sample gets ``comps[i]['model']`` (normalised) and ``comps[i]['model_raw']`` (the raw
    score), and ``totals[i] += weight * model``. Returns ``(totals, comps, metrics)``.
    """
    idx = [i for i, s in enumerate(samples) if rewards_cfg.uses_model(s.task_type)]
    if not idx:
        return totals, comps, {}
    raw = scorer([samples[i].prompt for i in idx], [samples[i].response for i in idx])
    mc = rewards_cfg.model_reward
    norm = normalize_scores(raw, [i // group_size for i in idx], mc.normalize, mc.scale)
    for i, s, v in zip(idx, raw, norm):
        w = rewards_cfg.task_weights(samples[i].task_type)["model"]
        comps[i] = {**comps[i], "model": float(v), "model_raw": float(s)}
        totals[i] = totals[i] + w * float(v)
    n = len(idx)
    return totals, comps, {"reward/model_samples": float(n)}


class ModelRewardScorer:
    """The frozen reward model of an RL stage, loaded from a reward_model stage checkpoint.

    Its architecture comes from the checkpoint (it may differ from the policy's); its layout is the
    run's ``parallel`` section. Its score tokens come from the checkpoint metadata (``extra``)."""

    def __init__(self, checkpoint: Path, parallel, tokenizer, max_length: int, batch_size: int = 64, seed: int = 1234):
        from r1mega.config.model import ModelConfig
        from r1mega.train.checkpoint import CheckpointError, CheckpointManager

        meta = CheckpointManager.read_meta(checkpoint)
        extra = meta.get("extra") or {}
        if extra.get("kind") != KIND or "score_token_ids" not in extra:
            raise CheckpointError(f"{checkpoint} is not a reward-model checkpoint (no score tokens in its metadata; "
                                  f"train one with a 'reward_model' stage)")
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        model = ModelConfig(**{k: v for k, v in meta["model"].items() if k in names})
        self.engine = RewardModelEngine(model, parallel, None, score_token_ids=extra["score_token_ids"], seed=seed)
        CheckpointManager(checkpoint.parent).load(self.engine, checkpoint, load_optimizer=False)
        if len(tokenizer) > model.vocab_size:
            raise CheckpointError(f"reward model {checkpoint}: vocabulary {model.vocab_size} < tokenizer {len(tokenizer)}")
        self.tok, self.max_length, self.batch_size = tokenizer, max_length, batch_size
        self.checkpoint = checkpoint

    @classmethod
    def from_run_config(cls, cfg, tokenizer) -> "ModelRewardScorer":
        """The scorer named by ``cfg.rewards.reward_model`` ('stage:NAME', a stage name or a checkpoint path).
        The tokenizer saved beside the reward model's stage is used when there is one, else ``tokenizer``."""
        from r1mega.config.stage import stage_ref
        from r1mega.data.tokenizer import load_tokenizer
        from r1mega.train.entry import resolve_init_checkpoint

        ref = cfg.rewards.reward_model
        sref = stage_ref(ref)
        ckpt = resolve_init_checkpoint(cfg, sref[0] if sref else ref)
        tok_dir = ckpt.parent.parent / "tokenizer"
        tok = load_tokenizer(str(tok_dir)) if (tok_dir / "tokenizer.json").exists() else tokenizer
        return cls(ckpt, cfg.parallel, tok, max_length=cfg.data.seq_length, batch_size=cfg.rewards.model_reward.batch_size,
                   seed=cfg.data.seed)

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Raw reward of each (prompt, response); collective: every rank calls it with the same lists."""
        seqs = [encode_scored(self.tok, p, r, self.max_length) for p, r in zip(prompts, responses)]
        return score_sequences(self.engine, seqs, pad_id=self.tok.pad_token_id or 0, batch_size=self.batch_size)

    __call__ = scores


__all__ = ["RewardModelEngine", "ModelRewardScorer", "vocab_parallel_logit_diff", "score_token_ids", "encode_scored",
           "score_batch", "score_sequences", "normalize_scores", "apply_model_rewards", "KIND"]
