"""Load interaction logs (ML-100K, ML-1M, generic CSV) into dense-indexed numpy arrays.

Everything downstream works on dense indices 0..n-1; ``Interactions`` keeps the maps back to the
original ids so that everything exported (recommendations, splits) uses the ids people know.
A (user, item) pair that occurs more than once counts once, at its latest time (docs/protocol.md), so a
held-out item can never also sit in train; ``n_merged`` says how many rows that removed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedrec.common.errors import DataError
from fedrec.common.fetch import KNOWN_DATASETS, dataset_dir


@dataclass(frozen=True)
class Interactions:
    """One implicit-feedback log: every row is one (user, item, time) interaction."""

    name: str
    users: np.ndarray  # int64 dense user index per interaction
    items: np.ndarray  # int64 dense item index per interaction
    timestamps: np.ndarray  # int64 unix seconds
    ratings: np.ndarray  # float32, NaN where the source has no rating
    user_ids: np.ndarray  # dense index -> original user id
    item_ids: np.ndarray  # dense index -> original item id
    item_titles: dict[int, str] = field(default_factory=dict)  # dense item index -> title
    merged: np.ndarray | None = None  # int64 per dense user: repeated (user, item) rows merged away

    @property
    def n_merged(self) -> int:
        return 0 if self.merged is None else int(self.merged.sum())

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def subset_users(self, n: int) -> Interactions:
        """The first ``n`` users (by dense index) with all their interactions, re-indexed densely."""
        keep = self.users < n
        subset = from_raw(
            self.name,
            self.user_ids[self.users[keep]],
            self.item_ids[self.items[keep]],
            self.timestamps[keep],
            self.ratings[keep],
            titles={self.item_ids[i]: t for i, t in self.item_titles.items()},
        )
        # dense order is the sorted original ids, so the first n users keep their order in the subset
        return subset if self.merged is None else replace(subset, merged=self.merged[:n].copy())


def _dense(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map original ids to 0..n-1 in sorted order of the original ids (stable across runs)."""
    uniq, inv = np.unique(raw, return_inverse=True)
    return uniq, inv.astype(np.int64)


def _latest_per_pair(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Indices of the rows kept when repeated (user, item) pairs merge: each pair's latest row (the later
    row in the file on equal times), returned in file order."""
    order = np.lexsort((np.arange(len(users)), timestamps, items, users))
    u, i = users[order], items[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    return np.sort(order[last])


def rating_lookup(data: Interactions) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``rating(users, items)``: the rating of each given (user, item) interaction of ``data`` (NaN unrated)."""
    keys = data.users.astype(np.int64) * data.n_items + data.items
    order = np.argsort(keys)
    sorted_keys, ratings = keys[order], data.ratings[order]

    def rating(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return ratings[np.searchsorted(sorted_keys, users.astype(np.int64) * data.n_items + items)]

    return rating


def from_raw(
    name: str,
    raw_users: np.ndarray,
    raw_items: np.ndarray,
    timestamps: np.ndarray,
    ratings: np.ndarray | None = None,
    titles: dict | None = None,
) -> Interactions:
    """Build ``Interactions`` from parallel arrays of original ids; repeated (user, item) pairs merge."""
    if len(raw_users) == 0:
        raise DataError(f"{name}: no interactions")
    user_ids, users = _dense(np.asarray(raw_users))
    item_ids, items = _dense(np.asarray(raw_items))
    timestamps = np.asarray(timestamps, dtype=np.int64)
    if ratings is None:
        ratings = np.full(len(users), np.nan, dtype=np.float32)
    ratings = np.asarray(ratings, dtype=np.float32)
    keep = _latest_per_pair(users, items, timestamps)
    merged = np.bincount(users, minlength=len(user_ids)) - np.bincount(users[keep], minlength=len(user_ids))
    users, items, timestamps, ratings = users[keep], items[keep], timestamps[keep], ratings[keep]
    item_titles: dict[int, str] = {}
    if titles:
        pos = {orig: i for i, orig in enumerate(item_ids.tolist())}
        item_titles = {pos[k]: v for k, v in titles.items() if k in pos}
    return Interactions(
        name=name,
        users=users,
        items=items,
        timestamps=timestamps,
        ratings=ratings,
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=item_titles,
        merged=merged.astype(np.int64),
    )


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


class _IdColumn:
    """One id column. Its first id decides the type: if that is an integer, every id must be one (that
    fits in 64 bits), so one stray value fails on its line instead of silently turning every id into text."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.values: list[int | str] = []
        self.integers: bool | None = None

    def add(self, text: str, line: int) -> None:
        try:
            value: int | str = int(text)
        except ValueError:
            value = text
        if self.integers is None:
            self.integers = isinstance(value, int)
        if self.integers:
            if not isinstance(value, int):
                raise DataError(
                    f"{self.path}:{line}: {self.name} id {text!r} is not an integer, "
                    f"unlike the {self.name} ids before it"
                )
            if not INT64_MIN <= value <= INT64_MAX:
                raise DataError(f"{self.path}:{line}: {self.name} id {text} does not fit in a signed 64-bit integer")
        self.values.append(value if self.integers else text)

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.int64) if self.integers else np.asarray(self.values, dtype=str)


def _parse_number(value: str, path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{path}:{line}: {column} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{path}:{line}: {column} {value!r} is not a finite number")
    return number


def _parse_timestamp(value: str, path: Path, line: int) -> int:
    try:
        stamp = int(value)  # exact for integers of any size
    except ValueError:
        stamp = int(_parse_number(value, path, line, "timestamp"))
    if not INT64_MIN <= stamp <= INT64_MAX:
        raise DataError(f"{path}:{line}: timestamp {value.strip()!r} is outside the 64-bit range of unix seconds")
    return stamp


def _parse_rating(value: str, path: Path, line: int) -> float:
    rating = _parse_number(value, path, line, "rating")
    if abs(rating) > FLOAT32_MAX:
        raise DataError(f"{path}:{line}: rating {value.strip()!r} is too large for a 32-bit float")
    return rating


@dataclass(frozen=True)
class _Rows:
    users: np.ndarray
    items: np.ndarray
    stamps: np.ndarray
    ratings: np.ndarray | None


def _read_rows(path: Path, rows: Iterable[list[str]], columns: Mapping[str, int], first_line: int) -> _Rows:
    """Validate rows one by one so that an error can name its line."""
    users, items = _IdColumn(path, "user"), _IdColumn(path, "item")
    stamps, ratings = [], []
    width = max(columns.values()) + 1
    for offset, row in enumerate(rows):
        line = first_line + offset
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < width:
            raise DataError(f"{path}:{line}: expected at least {width} fields, found {len(row)}")
        user, item = row[columns["user"]].strip(), row[columns["item"]].strip()
        if not user or not item:
            raise DataError(f"{path}:{line}: empty user or item id")
        users.add(user, line)
        items.add(item, line)
        stamps.append(_parse_timestamp(row[columns["timestamp"]], path, line))
        if "rating" in columns:
            ratings.append(_parse_rating(row[columns["rating"]], path, line))
    if not users.values:
        raise DataError(f"{path}: no interactions (empty file)")
    return _Rows(
        users.array(),
        items.array(),
        np.asarray(stamps, dtype=np.int64),
        np.asarray(ratings, dtype=np.float32) if ratings else None,
    )


def _read_text(path: Path) -> io.StringIO:
    """The whole file as UTF-8 (a BOM is allowed); a byte that is not UTF-8 fails on its line."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: empty file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})") from None
    return io.StringIO(text, newline="")


def load_csv(path: str | Path, name: str | None = None) -> Interactions:
    """Generic CSV with a header naming at least user, item, timestamp (rating optional)."""
    path = Path(path)
    with _read_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file")
        names = [h.strip().lower() for h in header]
        missing = [c for c in ("user", "item", "timestamp") if c not in names]
        if missing:
            raise DataError(
                f"{path}:1: missing column(s) {', '.join(missing)} (header must name user,item,timestamp[,rating])"
            )
        columns: dict[str, int] = {c: names.index(c) for c in ("user", "item", "timestamp", "rating") if c in names}
        rows = _read_rows(path, reader, columns, 2)
    return from_raw(name or path.stem, rows.users, rows.items, rows.stamps, rows.ratings)


def _load_ml100k(directory: Path) -> Interactions:
    inter = directory / "ml-100k.inter"
    with _read_text(inter) as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None) or []
        names = [h.split(":")[0] for h in header]
        missing = [c for c in ("user_id", "item_id", "timestamp") if c not in names]
        if missing:
            raise DataError(f"{inter}:1: missing column(s) {', '.join(missing)}")
        columns = {
            "user": names.index("user_id"),
            "item": names.index("item_id"),
            "timestamp": names.index("timestamp"),
            "rating": names.index("rating"),
        }
        rows = _read_rows(inter, reader, columns, 2)
    titles: dict = {}
    item_file = directory / "ml-100k.item"
    if item_file.exists():
        with item_file.open(encoding="utf-8", errors="replace") as fh:
            next(fh, None)
            for row in fh:
                parts = row.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0].isdigit():
                    titles[int(parts[0])] = parts[1]
    return from_raw("ml-100k", rows.users, rows.items, rows.stamps, rows.ratings, titles)


def _load_ml1m(directory: Path) -> Interactions:
    ratings_file = directory / "ratings.dat"
    with _read_text(ratings_file) as fh:
        lines = (line.rstrip("\r\n").split("::") for line in fh)
        columns = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
        rows = _read_rows(ratings_file, lines, columns, 1)
    titles: dict = {}
    movies = directory / "movies.dat"
    if movies.exists():
        with movies.open(encoding="latin-1") as fh:
            for row in fh:
                parts = row.rstrip("\n").split("::")
                if len(parts) >= 2 and parts[0].isdigit():
                    titles[int(parts[0])] = parts[1]
    return from_raw("ml-1m", rows.users, rows.items, rows.stamps, rows.ratings, titles)


_LOADERS = {"ml-100k": _load_ml100k, "ml-1m": _load_ml1m}


def load_dataset(name: str, data_dir: str | Path | None = None, users: int | None = None) -> Interactions:
    """Load a named dataset from the cache dir, or a CSV file given by path; ``users``: only the first
    that many users (``Interactions.subset_users``), as a run with ``--users`` sees it."""
    data = _load_whole(name, data_dir)
    return data.subset_users(users) if users else data


def _load_whole(name: str, data_dir: str | Path | None) -> Interactions:
    if name.endswith(".csv") or Path(name).suffix == ".csv":
        return load_csv(name)
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(KNOWN_DATASETS)} or a path to a .csv file")
    directory = dataset_dir(name, data_dir)
    if not directory.exists():
        raise DataError(f"{name} is not in {directory}: run `fedrec data fetch {name}` first")
    return _LOADERS[name](directory)
