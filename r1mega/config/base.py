"""Conventions shared by every config dataclass.

Every config is a plain ``@dataclass`` whose fields are declared with :func:`doc`, so each field
carries a one-line help string (``field.metadata["help"]``) that `r1mega config --help`-style
listings and error messages can show. A config validates itself in ``validate()`` and raises
:class:`ConfigError` naming the dotted field, the bad value and what was expected.
"""
from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A configuration problem found before any heavy work starts."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


def doc(default: Any, help: str, **kw) -> Any:
    """A dataclass field with a help string. Mutable defaults (list/dict) are copied per instance."""
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        value = default
        return dataclasses.field(default_factory=lambda: dataclasses.replace(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def field_help(cls_or_obj: Any, name: str) -> str:
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def check(cond: bool, where: str, message: str) -> None:
    """Raise ConfigError(where, message) unless cond holds."""
    if not cond:
        raise ConfigError(where, message)


def check_choice(value: Any, choices: tuple, where: str) -> None:
    if value not in choices:
        raise ConfigError(where, f"got {value!r}, expected one of {', '.join(map(repr, choices))}")


def check_positive(value: Any, where: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(where, f"got {value!r}, expected a {'non-negative' if allow_zero else 'positive'} number")


def check_int(value: Any, where: str, minimum: int = 1, allow_none: bool = False) -> None:
    """An integer (not a bool) >= minimum; None passes when allow_none."""
    if value is None and allow_none:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ConfigError(where, f"got {value!r}, expected {'None or ' if allow_none else ''}an integer >= {minimum}")
