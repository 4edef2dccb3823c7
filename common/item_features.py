"""Public item features of ML-100K (genres, release decade) as a dense matrix in the dataset's item order.

They describe films, never users, and ship with the data (``ml-100k.item`` beside ``ml-100k.inter``), so a
model may use them without spending privacy budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrec.common.errors import DataError
from fedrec.common.fetch import dataset_dir


def ml100k_item_features(item_ids: np.ndarray, data_dir: str | Path | None = None) -> np.ndarray:
    """[n_items, n_genres + n_decades] 0/1 matrix; an item missing from the file gets an all-zero row."""
    path = dataset_dir("ml-100k", data_dir) / "ml-100k.item"
    if not path.exists():
        raise DataError(f"{path}: file not found (run `fedrec data fetch ml-100k`)")
    genres: dict[int, list[str]] = {}
    decades: dict[int, str] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        next(fh, None)
        for line_no, row in enumerate(fh, start=2):
            parts = row.rstrip("\n").split("\t")
            if len(parts) < 4 or not parts[0].isdigit():
                raise DataError(f"{path}:{line_no}: expected item_id, title, release_year, class")
            item = int(parts[0])
            genres[item] = parts[3].split()
            year = parts[2]
            decades[item] = f"{year[:3]}0s" if year.isdigit() and len(year) == 4 else "unknown"
    vocab = sorted({g for gs in genres.values() for g in gs}) + sorted(set(decades.values()))
    column = {name: j for j, name in enumerate(vocab)}
    out = np.zeros((len(item_ids), len(vocab)), dtype=np.float32)
    for index, item in enumerate(item_ids.tolist()):
        for name in genres.get(item, []) + ([decades[item]] if item in decades else []):
            out[index, column[name]] = 1.0
    return out
