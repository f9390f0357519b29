"""Typed dataclass configs from YAML, with ``--set key=value`` overrides.

Unknown keys and wrong types are errors that name the key (``train.lr``), never silently ignored. Values given on
the command line are parsed as YAML scalars (``--set train.amp=bf16 --set train.steps=200``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        FileNotFoundError / ValueError: missing file, invalid YAML or not a mapping (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections, got {type(doc).__name__}")
    return doc


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy is returned)."""
    import copy

    out = copy.deepcopy(doc)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"--set {item!r}: empty key component")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"--set {key}: {p!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _check(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{key}: {value!r} does not match {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{key}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{key}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise TypeError(f"{key}: expected a list, got {value!r}")
        item_t = args[0] if args else Any
        items = [_check(v, item_t, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, rejecting unknown keys and wrong types.

    Raises:
        ValueError: unknown key, wrong type, or the dataclass's own validation failed (message names the key).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"unknown config key {where}{unknown[0]!r}; valid keys here: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        try:
            kwargs[name] = _check(value, hints[name], key)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        raise ValueError(f"{prefix}: {msg}" if prefix and not msg.startswith(prefix) else msg) from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (tuples become lists) suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
