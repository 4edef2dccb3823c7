"""Typed reads of one value of a Flower MetricRecord or ConfigRecord, whose values are a union of
scalars and lists: a value of another kind is a malformed message, reported by key, not a TypeError
deep inside an aggregation."""

from __future__ import annotations

from collections.abc import Mapping

from fedrec.common.errors import FedrecError


def _wrong(key: str, expected: str, value: object) -> FedrecError:
    return FedrecError(f"record key {key!r}: expected {expected}, got {type(value).__name__}")


def scalar_float(record: Mapping[str, object], key: str) -> float:
    """``record[key]`` as a float; an int (or bool) counts as a number."""
    value = record[key]
    if not isinstance(value, int | float):
        raise _wrong(key, "a number", value)
    return float(value)


def scalar_int(record: Mapping[str, object], key: str, default: int | None = None) -> int:
    """``record[key]`` as an int (a float is truncated as ``int()`` does), or ``default`` when the key
    is absent and a default is given."""
    if default is not None and key not in record:
        return default
    value = record[key]
    if not isinstance(value, int | float):
        raise _wrong(key, "a number", value)
    return int(value)


def float_list(record: Mapping[str, object], key: str, default: list[float] | None = None) -> list[float]:
    """``record[key]`` as a list of floats, or ``default`` when the key is absent and a default is given."""
    if default is not None and key not in record:
        return default
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise _wrong(key, "a list of numbers", value)
    return [float(v) for v in value]


def bytes_list(record: Mapping[str, object], key: str) -> list[bytes]:
    """``record[key]`` as a list of byte strings."""
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise _wrong(key, "a list of byte strings", value)
    return value
