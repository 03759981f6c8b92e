"""Load a RunConfig: YAML file (with includes) + dotted command-line overrides, validated once.

A YAML file may start from other files with ``base: common.yaml`` or ``defaults: [a.yaml, b.yaml]``
(paths relative to the including file); its own keys then apply on top, mappings merging key by
key and lists being replaced. Overrides look like ``grpo.group_size=16``, ``model.preset=tiny``,
``rollout.stop=["</answer>","x"]``, ``checkpoint.keep_last=null`` or
``pipeline.stages.sft.steps=5`` (list elements by name or index); values are converted to the
field's annotated type.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

from . import yamlio
from .base import ConfigError
from .model_source import check_init_checkpoints, fill_models
from .run import RunConfig
from .schema import Raw, build, deep_merge, set_dotted

INCLUDE_KEYS = ("base", "defaults")


def read_yaml(path: str, _chain: tuple = ()) -> dict:
    """The mapping in a YAML file with its includes merged in."""
    real = os.path.realpath(path)
    if real in _chain:
        raise ConfigError(path, "include cycle: " + " -> ".join(list(_chain) + [real]))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read config file: {e.strerror}") from None
    data = yamlio.parse(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"the top level must be a mapping of sections (model:, grpo:, ...), got a {type(data).__name__}")
    merged: dict = {}
    for key in INCLUDE_KEYS:
        if key not in data:
            continue
        includes = data.pop(key)
        includes = [includes] if isinstance(includes, str) else includes
        if not isinstance(includes, list) or not all(isinstance(p, str) for p in includes):
            raise ConfigError(f"{path}:{key}", f"got {includes!r}, expected a file name or a list of file names")
        for inc in includes:
            inc_path = inc if os.path.isabs(inc) else os.path.join(os.path.dirname(path), inc)
            if not os.path.exists(inc_path):
                raise ConfigError(f"{path}:{key}", f"included file not found: {inc_path}")
            merged = deep_merge(merged, read_yaml(inc_path, _chain + (real,)))
    return deep_merge(merged, data)


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Raw]]:
    """['a.b=1', ...] -> [('a.b', Raw('1')), ...]; an item without '=' is an error."""
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"override {item!r}", "expected KEY=VALUE, e.g. grpo.group_size=16"
                              " (only the first argument may be a config file: a .yaml path)")
        out.append((key, Raw(value)))
    return out


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value)
    return data


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), *,
                world_size: Optional[int] = None, validate: bool = True) -> RunConfig:
    """Read path (None = defaults only), apply overrides, build the typed RunConfig and, when
    validate, check it for world_size ranks (None = skip the world-size checks).

    Raises ConfigError for every problem: file, YAML syntax, unknown key, wrong type, bad value.
    """
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides)
    data = fill_models(data)  # model.hf_config, or the init checkpoint's model when none is named
    cfg = build(RunConfig, data)
    for stage in cfg.pipeline.stages:  # catch unknown keys / types in stage overrides even when not validating
        if stage.name:
            cfg.for_stage(stage)
    if validate:
        cfg.validate(world_size)
        check_init_checkpoints(cfg)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML; loading it again gives the same config."""
    return yamlio.dump(cfg.to_dict())
