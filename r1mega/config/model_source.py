"""Where a stage's model config comes from when the user does not restate it.

A user who imported a checkpoint (``r1mega convert hf-to-megatron``) should not have to copy its
shape into the config. On the raw config (before the typed RunConfig is built), for each stage in
order:

* ``model.hf_config: PATH`` (a ``config.json`` or the directory holding one), at the top level or in
  a stage's overrides: the model fields come from that Hugging Face config
  (:func:`r1mega.bridge.hf_config.from_hf_config`), the other ``model.*`` keys given beside it apply
  on top;
* otherwise, when neither the top level nor the stage names a ``model.preset``, and the stage's
  ``init_from`` is a checkpoint (a ``step_*`` directory or a root with one) or an earlier stage whose
  model was derived this way: the model is the checkpoint's (its ``r1mega_meta.json``), with the
  ``model.*`` keys the user did give applied on top (e.g. ``params_dtype``).

A preset keeps today's meaning (the preset, then the keys beside it), and the checkpoint must fit it:
:func:`check_init_checkpoints` compares the shape fields the architecture uses (a dense model is not
compared on MoE/MLA fields it does not have) before any heavy work, with one error naming them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from .base import ConfigError

META = "r1mega_meta.json"  # as r1mega.train.checkpoint.META (not imported: that module imports torch)

_COMMON = ("arch", "vocab_size", "hidden_size", "num_layers", "intermediate_size", "num_attention_heads",
           "tie_word_embeddings")
_DENSE = ("num_key_value_heads", "head_dim", "qkv_bias", "qk_norm")
_MLA = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
_MOE = ("first_k_dense_replace", "n_routed_experts", "n_shared_experts", "moe_intermediate_size")


def shape_fields(model: dict) -> tuple:
    """The fields that decide tensor shapes for this model's architecture (a ModelConfig as a dict)."""
    if model.get("arch") == "dense":
        return _COMMON + _DENSE
    if model.get("arch") == "qwen3_moe":
        return _COMMON + _DENSE + _MOE
    moe = (model.get("n_routed_experts") or 0) > 0
    return _COMMON + _MLA + (_MOE if moe else ())


def _norm(model: dict, key: str):
    """Defaults that mean the same shape compare equal (num_key_value_heads None = all heads, ...)."""
    v = model.get(key)
    if key == "num_key_value_heads" and v is None:
        return model.get("num_attention_heads")
    if key == "head_dim" and v is None and model.get("num_attention_heads"):
        return model.get("hidden_size", 0) // model["num_attention_heads"]
    return v


def shape_mismatches(saved: dict, model: dict) -> list:
    """``['field: checkpoint X vs model Y', ...]`` over the fields the *checkpoint's* architecture uses
    (arch first: a different architecture is one mismatch, not a list of unrelated fields)."""
    if saved.get("arch", "deepseek_v3") != model.get("arch"):
        return [f"arch: checkpoint {saved.get('arch')!r} vs model {model.get('arch')!r}"]
    return [f"{k}: checkpoint {_norm(saved, k)!r} vs model {_norm(model, k)!r}" for k in shape_fields(saved)
            if k in saved and _norm(saved, k) != _norm(model, k)]


def checkpoint_meta_path(path: str) -> Optional[Path]:
    """The ``r1mega_meta.json`` file of a checkpoint directory or of a root's latest complete checkpoint;
    None when ``path`` is not (yet) a checkpoint."""
    p = Path(path)
    candidates = [p]
    pointer = p / "latest"
    if pointer.is_file():
        candidates.append(p / pointer.read_text().strip())
    candidates += sorted(p.glob("step_*"), reverse=True) if p.is_dir() else []
    return next((c / META for c in candidates if (c / META).is_file()), None)


def checkpoint_meta(path: str) -> Optional[dict]:
    """The contents of :func:`checkpoint_meta_path` (None when ``path`` is not (yet) a checkpoint)."""
    meta = checkpoint_meta_path(path)
    if meta is None:
        return None
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError("init_from", f"{meta} is corrupt ({e})") from None


def hf_model_fields(path: str, where: str) -> dict:
    """ModelConfig fields (a dict) from a Hugging Face ``config.json`` (or its directory)."""
    from r1mega.bridge.hf_config import from_hf_config

    p = Path(path)
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(where, f"{path!r}: no such config.json (expected a Hugging Face config.json or its directory)")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(where, f"{f} is not valid JSON ({e})") from None
    try:
        m = from_hf_config(d)
    except ConfigError as e:
        raise ConfigError(where, f"{f}: {e.where}: {e.message}") from None
    return {**dataclasses.asdict(m), "hf_config": str(path)}


def _resolved(user: dict, where: str) -> Optional[dict]:
    """A model dict from ``hf_config`` with the user's other keys on top; None without hf_config."""
    if not isinstance(user, dict) or not user.get("hf_config"):
        return None
    return {**hf_model_fields(user["hf_config"], f"{where}.hf_config"), **user}


def fill_models(data: dict) -> dict:
    """The raw config with each stage's model filled in from ``hf_config`` or its init checkpoint (see the
    module docstring). Changes nothing when every stage names its model."""
    from .schema import plain  # override values still as typed (Raw): parsed here, where no type is known

    data = dict(data)
    top = plain(data.get("model")) if isinstance(data.get("model"), dict) else {}
    top_hf = _resolved(top, "model")
    if top_hf is not None:
        data = {**data, "model": top_hf}
        top = top_hf
    pipeline = data.get("pipeline")
    stages = plain(pipeline.get("stages")) if isinstance(pipeline, dict) else None
    if not isinstance(stages, list):
        return data
    data["pipeline"] = {**pipeline, "stages": stages}
    derived: dict = {}  # stage name -> its derived model dict (None: named by the user)
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            continue
        name, init = st.get("name"), st.get("init_from")
        ov = st.get("overrides") if isinstance(st.get("overrides"), dict) else {}
        own = ov.get("model") if isinstance(ov.get("model"), dict) else {}
        where = f"pipeline.stages[{name}].overrides.model"
        model = _resolved(own, where)
        if model is None and top.get("preset") is None and top_hf is None and own.get("preset") is None and init:
            base = derived.get(init) if init in derived else None
            if base is None and init not in derived:
                meta = checkpoint_meta(init)
                base = meta.get("model") if meta else None
            if base is not None:
                model = {**base, **{k: v for k, v in top.items()}, **own}
        derived[name] = model
        if model is not None:
            stages[i] = {**st, "overrides": {**ov, "model": model}}
    return data


def check_init_checkpoints(cfg) -> None:
    """Every stage whose ``init_from`` is an existing checkpoint directory: its shape fits the stage's model
    (one ConfigError naming the differing fields, before any model is built)."""
    for st in cfg.pipeline.stages:
        if not st.init_from or st.init_from in cfg.pipeline.names():
            continue
        meta = checkpoint_meta(st.init_from)
        if meta is None or "model" not in meta:
            continue
        model = dataclasses.asdict(cfg.for_stage(st).model)
        diff = shape_mismatches(meta["model"], model)
        if diff:
            raise ConfigError(f"pipeline.stages[{st.name}].init_from",
                              f"checkpoint {st.init_from} does not fit the model: {'; '.join(diff)} (leave out "
                              "model.preset and the shape fields to take the model from the checkpoint)")
