"""Strict nested dataclasses from plain mappings: the machinery under :mod:`selfplay.config`.

Generic over any tree of dataclasses (nothing here knows a config section): every dotted key of a tree, a
value checked against its type hint (YAML's strings accepted for numbers, int for float), a dataclass built
from a nested dict with an unknown key refused naming the nearest known one, deep merges of the layers and
``a.b=c`` assignments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml

from selfplay.errors import ConfigError, suggest


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass tree, e.g. ``train.beta``."""
    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, key + "."))
    return keys


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against type ``hint``; allow int->float and YAML's strings for numbers."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in get_args(hint):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(value, arm, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': expected {type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"config key '{key}': {value!r} is not one of {choices}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (arm,) = get_args(hint)
        return [coerce(v, arm, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        _, varm = get_args(hint)
        return {str(k): coerce(v, varm, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-7" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {hint}")


def type_name(hint: Any) -> str:
    if get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if arm is type(None) else type_name(arm) for arm in get_args(hint))
    if get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build(cls: type, data: dict[str, Any], keys: list[str], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, strictly; ``keys``: the tree's dotted keys (for
    suggestions)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key '{key}'.{suggest(key, keys)}")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, keys, key + ".")
        else:
            kwargs[name] = coerce(value, hint, key)
    return cls(**kwargs)


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``, section by section (``schedule`` mappings are replaced whole)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "schedule":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``tree[a][b] = value`` for ``dotted`` = ``a.b``."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is not a section.")
    node[parts[-1]] = value


def parse_set(item: str, keys: list[str]) -> tuple[str, Any]:
    """Parse one ``--set a.b=c`` (``a.b`` one of ``keys``); the value is read as YAML (numbers, bools, lists)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key not in keys:
        raise ConfigError(f"unknown config key '{key}'.{suggest(key, keys)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value
