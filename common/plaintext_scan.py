"""Search files for known user data in the plain encodings a leaky store would use.

Encodings: decimal text, and 32- and 64-bit integers packed in either byte order, at every byte offset.
Two kinds of needle, because not every number is distinctive:
- ``values``: numbers distinctive on their own (timestamps): any single occurrence is a finding.
- ``sequences``: small numbers (item ids) that occur by chance in any binary file (SQLite page headers
  are full of 1s and 2s), so only a run of ``run`` consecutive, distinct entries of a sequence counts: packed
  back to back, or as text separated by 1-3 non-digit bytes ("12,34,56", "[12, 34, 56]", "12\\t34\\t56").
  Pass a user's items in time order and in sorted order to cover both ways a store might keep them.
A clean scan says these encodings are absent; it says nothing about others (varints, floats, compression).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PACKED = {"int32le": (4, "<"), "int32be": (4, ">"), "int64le": (8, "<"), "int64be": (8, ">")}
ENCODINGS = ("text", *PACKED)
_MAX_SEPARATOR = 3
_TOKEN = re.compile(rb"\d{1,20}")
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Finding:
    path: str
    kind: str  # "value" or "run"
    encoding: str  # one of ENCODINGS
    offset: int
    values: tuple[int, ...]


def _words(data: bytes, width: int, order: str) -> np.ndarray:
    """The unsigned ``width``-byte integer starting at every byte offset of ``data``."""
    n = len(data) - width + 1
    if n <= 0:
        return np.empty(0, dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    dtype = np.dtype(f"{order}u{width}")
    for shift in range(width):
        out[shift::width] = np.frombuffer(data, dtype=dtype, count=(len(data) - shift) // width, offset=shift)
    return out


def _text_tokens(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every maximal run of ASCII digits: value, start and end offsets."""
    found = [(int(m.group()), m.start(), m.end()) for m in _TOKEN.finditer(data)]
    if not found:
        empty = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype=np.uint64), empty, empty
    values, starts, ends = zip(*found)
    return (np.array([v & 0xFFFFFFFFFFFFFFFF for v in values], dtype=np.uint64), np.array(starts), np.array(ends))


def _unsigned(values: Iterable[int], width: int) -> np.ndarray:
    """Needles as the unsigned words they would appear as; numbers that do not fit the width are dropped."""
    lo, hi = -(1 << (8 * width - 1)), (1 << (8 * width)) - 1
    kept = [int(v) % (1 << (8 * width)) for v in values if lo <= int(v) <= hi]
    return np.array(kept, dtype=np.uint64)


def _run_keys(words: np.ndarray, step: int, run: int) -> tuple[np.ndarray, np.ndarray]:
    """A hash of each ``run`` words spaced ``step`` apart, and the index of the first word of each."""
    n = len(words) - (run - 1) * step
    if n <= 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    keys = np.zeros(n, dtype=np.uint64)
    for j in range(run):
        keys = keys * _HASH_MULT + words[j * step:j * step + n]
    return keys, np.arange(n)


def _windows(sequences: Sequence[Sequence[int]], run: int, width: int | None) -> dict[int, tuple[int, ...]]:
    """Hash -> window for every ``run`` consecutive entries of every sequence (encoded as for ``width``)."""
    out: dict[int, tuple[int, ...]] = {}
    for seq in sequences:
        seq = [int(v) for v in seq]
        for start in range(len(seq) - run + 1):
            window = tuple(seq[start:start + run])
            if len(set(window)) < run:
                continue  # runs like 0,0,0 fill every binary file: only windows of distinct values are evidence
            words = _unsigned(window, width) if width else np.array([v & (2**64 - 1) for v in window if v >= 0],
                                                                      dtype=np.uint64)
            if len(words) != run:
                continue
            key = np.zeros(1, dtype=np.uint64)
            for w in words:
                key = key * _HASH_MULT + w
            out[int(key[0])] = window
    return out


def _run_findings(path, encoding, words, offsets, step, valid, windows) -> list[Finding]:
    keys, first = _run_keys(words, step, len(next(iter(windows.values()))))
    hits = np.flatnonzero(np.isin(keys, np.fromiter(windows, dtype=np.uint64, count=len(windows))))
    out = []
    for i in hits:
        if valid is not None and not valid[first[i]]:
            continue
        out.append(Finding(path, "run", encoding, int(offsets[first[i]]), windows[int(keys[i])]))
    return out


def scan_bytes(
    data: bytes,
    values: Iterable[int] = (),
    sequences: Sequence[Sequence[int]] = (),
    run: int = 3,
    path: str = "",
) -> list[Finding]:
    """Every place ``data`` holds one of ``values``, or ``run`` consecutive entries of a sequence, in any encoding."""
    values = list(values)
    found: list[Finding] = []
    for encoding, (width, order) in PACKED.items():
        words = _words(data, width, order)
        needles = _unsigned(values, width)
        for off in np.flatnonzero(np.isin(words, needles)):
            found.append(Finding(path, "value", encoding, int(off), (_signed(words[off], values),)))
        windows = _windows(sequences, run, width)
        if windows:
            found += _run_findings(path, encoding, words, np.arange(len(words)), width, None, windows)
    tokens, starts, ends = _text_tokens(data)
    needles = _unsigned([v for v in values if v >= 0], 8)
    for i in np.flatnonzero(np.isin(tokens, needles)):
        found.append(Finding(path, "value", "text", int(starts[i]), (int(tokens[i]),)))
    windows = _windows(sequences, run, None)
    if windows and len(tokens) >= run:
        gaps = starts[1:] - ends[:-1]
        close = (gaps >= 1) & (gaps <= _MAX_SEPARATOR)
        # a run of tokens is valid when every gap inside it is a short separator
        valid = np.ones(len(tokens) - run + 1, dtype=bool)
        for j in range(run - 1):
            valid &= close[j:j + len(valid)]
        found += _run_findings(path, "text", tokens, starts, 1, valid, windows)
    return found


def _signed(word: np.uint64, values: list[int]) -> int:
    """Report the needle as given (a negative needle is found as its two's-complement word)."""
    word = int(word)
    for v in values:
        if v % (1 << 64) == word or v % (1 << 32) == word:
            return int(v)
    return word


def scan_file(path: str | Path, values: Iterable[int] = (), sequences: Sequence[Sequence[int]] = (),
              run: int = 3) -> list[Finding]:
    """Scan a file and the SQLite side files next to it (a WAL can hold recent pages)."""
    path = Path(path)
    values = list(values)
    out: list[Finding] = []
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal")):
        if candidate.exists():
            out += scan_bytes(candidate.read_bytes(), values, sequences, run, str(candidate))
    return out
