"""Typed dataclass configs from YAML, with ``--set key=value`` overrides: the one config parser.

Every config - the experiment (:class:`salt_seg.training.config.ExperimentConfig`), its adapter section
(:class:`salt_seg.adapters.AdapterConfig`, also read back from adapter files) and the preprocessing record
(:class:`salt_seg.preprocessing.Preprocessing`) - is built from a plain mapping by :func:`from_dict`, after the
overrides were applied to that mapping by :func:`apply_overrides`.

Unknown keys and wrong types are errors that name the key (``train.lr``), never silently ignored. Values given on
the command line are parsed as YAML scalars (``--set train.amp=bf16 --set train.steps=200``). Two hooks let a
dataclass take part:

- a field whose ``metadata`` holds :data:`OWN_CHECK` is passed through as written and checked by the dataclass
  itself (an adapter's ``rank``: an int, a rule or a per-layer-type mapping of them);
- a classmethod ``prepare_raw(raw) -> raw`` fills, on the raw mapping, the values a section takes from another
  (the experiment's preprocessing ``image_size`` from ``model.image_size``).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")

#: ``field(metadata=OWN_CHECK)``: the parser passes the value through; the dataclass validates it
OWN_CHECK: Mapping[str, bool] = types.MappingProxyType({"own_check": True})


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


def apply_overrides(doc: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy is returned)."""
    out = copy.deepcopy(dict(doc))
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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping, rejecting unknown keys and wrong types.

    Args:
        cls: the dataclass.
        data: its raw mapping (not modified).
        prefix: where ``data`` sits in the enclosing config (``adapter``): errors name ``adapter.r_lora``, also
            those the dataclass raises itself as ``AdapterConfig.r_lora``.

    Raises:
        ValueError: unknown key, wrong type, or the dataclass's own validation failed (message names the key).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(cls, "prepare_raw", None)
    raw = prepare(copy.deepcopy(dict(data))) if prepare is not None else dict(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"unknown config key {where}{unknown[0]!r}; valid keys here: {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        if fields[name].metadata.get("own_check"):
            kwargs[name] = copy.deepcopy(value)
            continue
        try:
            kwargs[name] = _check(value, hints[name], key)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        if not prefix:
            raise ValueError(msg) from None
        msg = msg.replace(f"{cls.__name__}.", f"{prefix}.")
        raise ValueError(msg if msg.startswith(prefix) else f"{prefix}: {msg}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (tuples become lists) suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
