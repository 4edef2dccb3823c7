"""Load interaction logs (ML-100K, ML-1M, generic CSV) into dense-indexed numpy arrays.

Everything downstream works on dense indices 0..n-1; ``Interactions`` keeps the maps back to the
original ids so that everything exported (recommendations, splits) uses the ids people know.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedrec.common.errors import DataError
from fedrec.common.fetch import dataset_dir, KNOWN_DATASETS


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

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def subset_users(self, n: int) -> "Interactions":
        """The first ``n`` users (by dense index) with all their interactions, re-indexed densely."""
        keep = self.users < n
        return from_raw(
            self.name,
            self.user_ids[self.users[keep]],
            self.item_ids[self.items[keep]],
            self.timestamps[keep],
            self.ratings[keep],
            titles={self.item_ids[i]: t for i, t in self.item_titles.items()},
        )


def _dense(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map original ids to 0..n-1 in sorted order of the original ids (stable across runs)."""
    uniq, inv = np.unique(raw, return_inverse=True)
    return uniq, inv.astype(np.int64)


def from_raw(
    name: str,
    raw_users: np.ndarray,
    raw_items: np.ndarray,
    timestamps: np.ndarray,
    ratings: np.ndarray | None = None,
    titles: dict | None = None,
) -> Interactions:
    """Build ``Interactions`` from parallel arrays of original ids."""
    if len(raw_users) == 0:
        raise DataError(f"{name}: no interactions")
    user_ids, users = _dense(np.asarray(raw_users))
    item_ids, items = _dense(np.asarray(raw_items))
    if ratings is None:
        ratings = np.full(len(users), np.nan, dtype=np.float32)
    item_titles: dict[int, str] = {}
    if titles:
        pos = {orig: i for i, orig in enumerate(item_ids.tolist())}
        item_titles = {pos[k]: v for k, v in titles.items() if k in pos}
    return Interactions(
        name=name,
        users=users,
        items=items,
        timestamps=np.asarray(timestamps, dtype=np.int64),
        ratings=np.asarray(ratings, dtype=np.float32),
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=item_titles,
    )


def _as_id(text: str) -> int | str:
    """Original ids stay integers where they are integers, so exports match the source."""
    try:
        return int(text)
    except ValueError:
        return text


def _parse_number(value: str, path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{path}:{line}: {column} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{path}:{line}: {column} {value!r} is not a finite number")
    return number


def _read_rows(
    path: Path, rows, columns: dict[str, int], first_line: int, name: str
) -> tuple[list, list, list, list]:
    """Validate rows one by one so that an error can name its line."""
    users, items, stamps, ratings = [], [], [], []
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
        users.append(_as_id(user))
        items.append(_as_id(item))
        stamps.append(int(_parse_number(row[columns["timestamp"]], path, line, "timestamp")))
        if "rating" in columns:
            ratings.append(_parse_number(row[columns["rating"]], path, line, "rating"))
    if not users:
        raise DataError(f"{path}: no interactions (empty file)")
    return users, items, stamps, ratings


def _ids_array(values: list) -> np.ndarray:
    if all(isinstance(v, int) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray([str(v) for v in values])


def _open_text(path: Path):
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path.open(newline="", encoding="utf-8", errors="replace")


def load_csv(path: str | Path, name: str | None = None) -> Interactions:
    """Generic CSV with a header naming at least user, item, timestamp (rating optional)."""
    path = Path(path)
    with _open_text(path) as fh:
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
        columns = {c: names.index(c) for c in ("user", "item", "timestamp", "rating") if c in names}
        users, items, stamps, ratings = _read_rows(path, reader, columns, 2, name or path.stem)
    return from_raw(
        name or path.stem,
        _ids_array(users),
        _ids_array(items),
        np.asarray(stamps),
        np.asarray(ratings, dtype=np.float32) if ratings else None,
    )


def _load_ml100k(directory: Path) -> Interactions:
    inter = directory / "ml-100k.inter"
    with _open_text(inter) as fh:
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
        users, items, stamps, ratings = _read_rows(inter, reader, columns, 2, "ml-100k")
    titles: dict = {}
    item_file = directory / "ml-100k.item"
    if item_file.exists():
        with item_file.open(encoding="utf-8", errors="replace") as fh:
            next(fh, None)
            for row in fh:
                parts = row.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0].isdigit():
                    titles[int(parts[0])] = parts[1]
    return from_raw("ml-100k", _ids_array(users), _ids_array(items), np.asarray(stamps), np.asarray(ratings), titles)


def _load_ml1m(directory: Path) -> Interactions:
    ratings_file = directory / "ratings.dat"
    with _open_text(ratings_file) as fh:
        rows = (line.rstrip("\n").split("::") for line in fh)
        columns = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
        users, items, stamps, ratings = _read_rows(ratings_file, rows, columns, 1, "ml-1m")
    titles: dict = {}
    movies = directory / "movies.dat"
    if movies.exists():
        with movies.open(encoding="latin-1") as fh:
            for row in fh:
                parts = row.rstrip("\n").split("::")
                if len(parts) >= 2 and parts[0].isdigit():
                    titles[int(parts[0])] = parts[1]
    return from_raw("ml-1m", _ids_array(users), _ids_array(items), np.asarray(stamps), np.asarray(ratings), titles)


_LOADERS = {"ml-100k": _load_ml100k, "ml-1m": _load_ml1m}


def load_dataset(name: str, data_dir: str | Path | None = None) -> Interactions:
    """Load a named dataset from the cache dir, or a CSV file given by path."""
    if name.endswith(".csv") or Path(name).suffix == ".csv":
        return load_csv(name)
    if name not in _LOADERS:
        raise DataError(
            f"unknown dataset {name!r}: choose one of {', '.join(KNOWN_DATASETS)} or a path to a .csv file"
        )
    directory = dataset_dir(name, data_dir)
    if not directory.exists():
        raise DataError(f"{name} is not in {directory}: run `fedrec data fetch {name}` first")
    return _LOADERS[name](directory)
