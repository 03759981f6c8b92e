"""Plain data (parsed YAML, command-line overrides) -> typed config dataclasses, and back.

Values are converted to each field's annotated type (int, float, bool, str, Optional[...],
list[...], dict, nested dataclasses). Unknown keys and values of the wrong type raise
:class:`ConfigError` naming the dotted field; unknown keys get the closest valid key suggested.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from typing import Any, Union, get_args, get_origin

from . import yamlio
from .base import ConfigError

NULLS = ("null", "~", "None")


class Raw(str):
    """An override value exactly as typed on the command line; parsed once its field's type is known."""


def join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def suggest(key: Any, valid: list[str], noun: str = "keys") -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"valid {noun}: {', '.join(valid)}"


def parse_raw(text: str) -> Any:
    """A command-line value as YAML (`16`, `1e-4`, `true`, `null`, `[a, b]`); unparsable text stays a string."""
    if not text.strip():
        return str(text)
    try:
        return yamlio.parse(text, "override")
    except ConfigError:
        return str(text)


def plain(value: Any) -> Any:
    """Deep copy with Raw strings parsed (for untyped places such as dict fields)."""
    if isinstance(value, Raw):
        return plain(parse_raw(value))  # parse_raw never returns a Raw
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def describe(tp: Any) -> str:
    """'a float', 'an integer or null', ... for error messages."""
    if get_origin(tp) is Union:
        inner = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(describe(a) for a in inner)
        return text + " or null" if len(inner) < len(get_args(tp)) else text
    if tp is list or get_origin(tp) is list:
        return "a list"
    if tp is dict or get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a float", bool: "a bool (true/false)", str: "a string"}.get(tp, str(tp))


def _wrong(value: Any, tp: Any, where: str) -> ConfigError:
    return ConfigError(where, f"got {value!r}, expected {describe(tp)}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert value to type tp, or raise ConfigError naming where, the value and the expected type."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return plain(value)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) < len(args) and (value is None or (isinstance(value, Raw) and value in NULLS)):
            return None
        for a in inner:
            try:
                return coerce(value, a, where)
            except ConfigError as e:
                if e.where != where:
                    raise
        raise _wrong(value, tp, where)
    if isinstance(value, Raw):
        if tp is str:
            return str(value)
        parsed = parse_raw(value)
        if (tp is list or origin is list) and not isinstance(parsed, list):
            parsed = [parsed]  # `rollout.stop=</answer>`
        try:
            return coerce(parsed, tp, where)
        except ConfigError as e:
            if e.where == where:
                raise _wrong(value, tp, where) from None  # quote the text as typed
            raise
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            return tp()  # an empty YAML section
        if isinstance(value, dict):
            return build(tp, value, where)
        raise _wrong(value, tp, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(value, tp, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
        raise _wrong(value, tp, where)
    if tp is float:
        number = _number(value)
        if number is not None:
            return float(number)
        raise _wrong(value, tp, where)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _wrong(value, tp, where)
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _wrong(value, tp, where)
        item = args[0] if args else Any
        return [coerce(v, item, _item_where(where, i, v)) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _wrong(value, tp, where)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, vt, join(where, k)) for k, v in value.items()}
    return plain(value)


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _item_where(where: str, i: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"{where}[{name if isinstance(name, str) and name else i}]"


def build(cls: type, data: Any, where: str = "") -> Any:
    """An instance of dataclass cls from a mapping; keys not given keep their defaults.

    A class with a ``from_preset(name, where)`` classmethod (ModelConfig) starts from that preset
    when the mapping has a non-null ``preset``; the other keys then apply on top of it.
    """
    if not isinstance(data, dict):
        raise ConfigError(where or "config", f"got {data!r}, expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    values = {}
    for key, value in data.items():
        if key not in names:
            what = "section" if not where else "key"
            raise ConfigError(join(where, key), f"unknown {what}; {suggest(key, names, what + 's')}")
        values[key] = coerce(value, hints[key], join(where, key))
    preset = values.get("preset")
    if preset is not None and hasattr(cls, "from_preset"):
        return dataclasses.replace(cls.from_preset(preset, join(where, "preset")), **values)
    return cls(**values)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def deep_merge(base: dict, over: dict) -> dict:
    """base with over laid on top: mappings merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict, key: str, value: Any) -> None:
    """data['a']['b']['c'] = value for key 'a.b.c'; list elements are picked by index or by 'name'."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {key!r}", "empty key segment; expected KEY.SUBKEY=VALUE")
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, here)
            if last:
                node[idx] = value
                return
            node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(here, f"is {node!r}, not a mapping, so '{part}' cannot be set inside it")
        if last:
            node[part] = value
            return
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]


def _list_index(items: list, part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(items) <= idx < len(items):
            return idx
        raise ConfigError(f"{where}[{part}]", f"index out of range (the list has {len(items)} elements)")
    names = [e.get("name") if isinstance(e, dict) else None for e in items]
    if part in names:
        return names.index(part)
    raise ConfigError(f"{where}[{part}]", "no element with that name; "
                      + (suggest(part, [str(n) for n in names if n is not None], "names") if items else "the list is empty"))
