"""Read and write trees of frozen settings dataclasses in every form fedrec needs, from one definition.

A settings tree is a frozen dataclass whose fields are scalars (bool, int, float, str), tuples of ints,
or further settings dataclasses. From the tree alone this module derives:
- the nested form (TOML tables, report ``meta.config``): ``to_nested`` / ``from_nested``;
- the flat form Flower carries (run config, ConfigRecord): ``flatten`` / ``from_flat``, keys are the
  dotted field paths (``device.training.lr``) and tuples of ints travel as ``"64,32,16"``.
Reading checks every key against the dataclass and every value against its field's type; each class
checks its own ranges in ``__post_init__`` by raising ``SettingError`` with the field's name. Every
problem becomes one ``FedrecError`` line naming the source and the full key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from fedrec.common.errors import FedrecError

T = TypeVar("T")
Scalar = bool | int | float | str


class SettingError(ValueError):
    """A value out of range, raised by a settings class with the name of the field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise SettingError(field, message)


# Upper bounds of the settings that size a loop or an allocation: far beyond any run fedrec is meant for, low
# enough that a typo (an extra zero, 1e20) is refused when the settings are read instead of running without end
# or failing deep inside an allocation.
MAX_COUNT = 100_000  # rounds, epochs, steps, refits, patience, repeats
MAX_NEGATIVES = 1000  # sampled negatives per positive (each multiplies a batch)
MAX_BATCH = 1 << 20  # examples per batch
MAX_WIDTH = 4096  # an embedding half or a hidden layer
MAX_LAYERS = 16  # hidden layers of the MLP tower
MAX_PROCESSES = 1024  # worker processes or threads on one machine


def require_count(value: int, field: str, low: int = 1, high: int = MAX_COUNT) -> None:
    """``value`` in [low, high]; the message states the violated bound."""
    require(value >= low, field, f"must be >= {low}, got {value}")
    require(value <= high, field, f"must be <= {high} (fedrec's limit), got {value}")


def require_finite(value: float, field: str) -> None:
    require(math.isfinite(value), field, f"must be a finite number, got {value}")


_FIELDS: dict[type, dict[str, Any]] = {}


def _fields(cls: Any) -> dict[str, Any]:
    """Field name -> resolved type (annotations are strings under ``from __future__ import annotations``)."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _FIELDS[cls]


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _where(source: str, key: str) -> str:
    return f"{source}: {key}" if key else source


def _is_int(x: Any) -> bool:
    """An int, or the text of one (the flat form of a tuple of ints is "64,32,16")."""
    if isinstance(x, str):
        return x.strip().lstrip("-").isdigit()
    return isinstance(x, int) and not isinstance(x, bool)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    """``value`` as field type ``tp``; ints widen to floats, nothing else converts silently."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):  # no setting means "without bound"; a guarantee never does
                raise FedrecError(f"{_where(source, key)}: must be a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(tp) is tuple:
        element = typing.get_args(tp)[0]  # tuple[int, ...] or tuple[str, ...]
        items = [x for x in value.split(",") if x.strip()] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            if element is str and all(isinstance(x, str) for x in items):
                return tuple(x.strip() for x in items)
            if element is int and all(_is_int(x) for x in items):
                return tuple(int(x) for x in items)
        raise FedrecError(f"{_where(source, key)}: expected a list of {element.__name__}s, got {value!r}")
    else:
        raise TypeError(f"unsupported settings field type {tp!r}")
    name = getattr(tp, "__name__", str(tp))
    raise FedrecError(f"{_where(source, key)}: expected {name}, got {type(value).__name__} {value!r}")


def from_nested(cls: type[T], data: Mapping[str, Any], source: str, base: T | None = None, prefix: str = "") -> T:
    """``cls`` from nested tables; keys absent from ``data`` keep ``base``'s (or the class default's) values."""
    if not isinstance(data, Mapping):
        raise FedrecError(f"{_where(source, prefix.rstrip('.'))}: expected a table, got {type(data).__name__}")
    fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        what = f"[{prefix.rstrip('.')}]" if prefix else "top level"
        raise FedrecError(f"{source}: unknown key {prefix}{unknown[0]} in {what}; known: {', '.join(fields)}")
    base = base if base is not None else cls()
    values: dict[str, Any] = {}
    for name, tp in fields.items():
        current = getattr(base, name)
        if name not in data:
            values[name] = current
        elif _is_settings(tp):
            values[name] = from_nested(tp, data[name], source, current, f"{prefix}{name}.")
        else:
            values[name] = _coerce(tp, data[name], source, prefix + name)
    try:
        return cls(**values)
    except SettingError as exc:
        raise FedrecError(f"{_where(source, prefix + exc.field)}: {exc}") from None


def to_nested(obj: Any) -> dict[str, Any]:
    """Nested plain dicts (tuples as lists): TOML- and JSON-ready."""
    out: dict[str, Any] = {}
    for name in _fields(type(obj)):
        value = getattr(obj, name)
        out[name] = (
            to_nested(value)
            if dataclasses.is_dataclass(value)
            else (list(value) if isinstance(value, tuple) else value)
        )
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Scalar]:
    """Dotted keys and scalar values, as Flower's run config and ConfigRecord carry them."""
    out: dict[str, Scalar] = {}
    for name in _fields(type(obj)):
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = ",".join(str(x) for x in value) if isinstance(value, tuple) else value
    return out


def flat_keys(cls: type, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, tp in _fields(cls).items():
        keys += flat_keys(tp, f"{prefix}{name}.") if _is_settings(tp) else [prefix + name]
    return keys


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FedrecError(f"key {key}: {part} is both a value and a table")
        node[leaf] = value
    return nested


def from_flat(cls: type[T], flat: Mapping[str, Any], source: str, complete: bool = True, base: T | None = None) -> T:
    """``cls`` from dotted keys. ``complete``: every key must be present (what a device receives is sent
    whole, so a missing key is a bug on the sender's side, never a silent default)."""
    if complete:
        missing = [k for k in flat_keys(cls) if k not in flat]
        if missing:
            raise FedrecError(f"{source}: missing key {missing[0]} ({len(missing)} missing)")
    return from_nested(cls, unflatten(flat), source, base)
