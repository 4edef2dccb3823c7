"""Search files for known user data in the plain encodings a leaky store would use.

Encodings: decimal text, and 32- and 64-bit integers packed in either byte order, at every byte offset.
Two kinds of needle, because not every number is distinctive:
- ``values``: numbers distinctive on their own (timestamps): a single occurrence is a finding (but
  see the 32-bit rule below).
- ``sequences``: small numbers (item ids) that occur by chance in any binary file (SQLite page headers
  are full of 1s and 2s), so only a run of ``run`` consecutive, distinct entries of a sequence counts: packed
  back to back, or as text with one common delimiter ("12,34,56", "[12, 34, 56]", "12\\t34\\t56", "12::34::56";
  see ``_SEPARATORS``).
  Pass a user's items in time order and in sorted order to cover both ways a store might keep them.
A single 32-bit value is not evidence on its own either: with 100 needles, 32 random bits at one of
30,000 offsets match about once in 1,400 files per byte order, so over a fleet of ciphertext files some match by chance
(it happened in 2 of 6 scans of the 943 ML-100K stores). A 32-bit encoding counts once it holds at
least ``MIN_DISTINCT_32`` different needles (chance: about one in a million files); a real leak holds
all of them. Text and 64-bit matches count singly.
A clean scan says these encodings are absent; it says nothing about others (varints, floats, compression).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKED = {"int32le": (4, "<"), "int32be": (4, ">"), "int64le": (8, "<"), "int64be": (8, ">")}
ENCODINGS = ("text", *PACKED)
_SEPARATORS = {
    sep: i
    for i, sep in enumerate(
        (b",", b", ", b";", b"; ", b"|", b" ", b"\t", b"\n", b"\r\n", b":", b"::", b"\x00", b"\x1f", b"/", b"-", b"_")
    )
}
_TOKEN = re.compile(rb"\d{1,20}")
MIN_DISTINCT_32 = 2
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


def _member(big: np.ndarray, small: np.ndarray) -> np.ndarray:
    """``np.isin`` without sorting the big array (binary search in the few needles): ~10x faster here."""
    if not len(small) or not len(big):
        return np.zeros(len(big), dtype=bool)
    needles = np.sort(small)
    at = np.minimum(np.searchsorted(needles, big), len(needles) - 1)
    return needles[at] == big


def _hash_rows(rows: np.ndarray) -> np.ndarray:
    """One uint64 hash per row of words (wrapping arithmetic: collisions are re-checked by exact comparison)."""
    keys = np.zeros(len(rows), dtype=np.uint64)
    for j in range(rows.shape[1]):
        keys = keys * _HASH_MULT + rows[:, j]
    return keys


def _windows(sequences: Sequence[Sequence[int] | np.ndarray], run: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``run`` consecutive distinct entries of every sequence, as words of ``width`` bytes, and their hashes."""
    rows = []
    for given in sequences:
        seq = np.asarray(given, dtype=np.int64)
        if len(seq) < run:
            continue
        win = np.lib.stride_tricks.sliding_window_view(seq, run)
        if width < 8:
            fits = np.all((win >= -(1 << (8 * width - 1))) & (win < (1 << (8 * width))), axis=1)
        else:
            fits = np.ones(len(win), dtype=bool)
        ordered = np.sort(win, axis=1)
        distinct = np.all(ordered[:, 1:] != ordered[:, :-1], axis=1)
        rows.append(win[fits & distinct])
    if not rows:
        return np.empty((0, run), dtype=np.uint64), np.empty(0, dtype=np.uint64)
    words = np.concatenate(rows).astype(np.uint64)  # two's complement, as packed
    if width < 8:
        words &= np.uint64((1 << (8 * width)) - 1)
    return words, _hash_rows(words)


def _run_findings(
    path: str,
    encoding: str,
    words: np.ndarray,
    offsets: np.ndarray,
    step: int,
    valid: np.ndarray | None,
    windows: tuple[np.ndarray, np.ndarray],
) -> list[Finding]:
    """Offsets where ``run`` words spaced ``step`` apart equal one of the windows."""
    rows, keys = windows
    run = rows.shape[1]
    n = len(words) - (run - 1) * step
    if n <= 0 or not len(keys):
        return []
    found = _hash_rows(np.stack([words[j * step : j * step + n] for j in range(run)], axis=1))
    out = []
    for i in np.flatnonzero(_member(found, keys)):
        if valid is not None and not valid[i]:
            continue
        here = tuple(int(words[i + j * step]) for j in range(run))
        match = rows[keys == found[i]]
        if any(tuple(int(v) for v in m) == here for m in match):
            out.append(Finding(path, "run", encoding, int(offsets[i]), here))
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
        hits = np.flatnonzero(_member(words, needles))
        if width > 4 or len(np.unique(words[hits])) >= MIN_DISTINCT_32:
            found += [Finding(path, "value", encoding, int(off), (_signed(words[off], values),)) for off in hits]
        found += _run_findings(
            path, encoding, words, np.arange(len(words)), width, None, _windows(sequences, run, width)
        )
    tokens, starts, ends = _text_tokens(data)
    needles = _unsigned([v for v in values if v >= 0], 8)
    for i in np.flatnonzero(_member(tokens, needles)):
        found.append(Finding(path, "value", "text", int(starts[i]), (int(tokens[i]),)))
    if len(tokens) >= run:
        # a run of tokens counts when one and the same delimiter separates all of them
        gap = np.array([_SEPARATORS.get(data[e:s], -1) for e, s in zip(ends[:-1], starts[1:])], dtype=np.int64)
        valid = np.ones(len(tokens) - run + 1, dtype=bool)
        for j in range(run - 1):
            valid &= (gap[j : j + len(valid)] >= 0) & (gap[j : j + len(valid)] == gap[: len(valid)])
        positive = [np.asarray(seq, dtype=np.int64) for seq in sequences]
        found += _run_findings(
            path, "text", tokens, starts, 1, valid, _windows([seq[seq >= 0] for seq in positive], run, 8)
        )
    return found


def _signed(raw: np.uint64, values: list[int]) -> int:
    """Report the needle as given (a negative needle is found as its two's-complement word)."""
    word = int(raw)
    for v in map(int, values):
        if v % (1 << 64) == word or v % (1 << 32) == word:
            return int(v)
    return word


def scan_file(
    path: str | Path, values: Iterable[int] = (), sequences: Sequence[Sequence[int]] = (), run: int = 3
) -> list[Finding]:
    """Scan a file and the SQLite side files next to it (a WAL can hold recent pages)."""
    path = Path(path)
    values = list(values)
    out: list[Finding] = []
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal")):
        if candidate.exists():
            out += scan_bytes(candidate.read_bytes(), values, sequences, run, str(candidate))
    return out
