"""Typed configuration of an r1mega run: one dataclass per concern, loaded from YAML plus
dotted command-line overrides and validated once before any heavy work.

    from r1mega.config import load_config
    cfg = load_config("examples/tiny/demo.yaml", ["grpo.group_size=4"], world_size=1)
"""
from .base import ConfigError
from .loader import apply_overrides, dump_config, load_config, read_yaml
from .run import RunConfig

__all__ = ["ConfigError", "RunConfig", "apply_overrides", "dump_config", "load_config", "read_yaml"]
