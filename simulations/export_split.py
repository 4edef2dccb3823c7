"""A run's exact split in another toolkit's format, so its models train and are scored on the same users,
items and held-out interactions as fedrec's arms (`fedrec data export-split`).

The split is rebuilt from the dataset and seed the run's report names and checked against the held-out
pairs the run wrote (``split/validation.csv``, ``split/test.csv``) before anything is written: a dataset
that changed since the run is refused instead of exported as something else.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.common.datasets import Interactions, load_dataset, rating_lookup
from fedrec.common.errors import DataError, FedrecError
from fedrec.common.files import writable_dir
from fedrec.common.split import Split, temporal_split
from fedrec.simulations.rundir import RunDir, atomic_write_text

# RecBole's atomic .inter header: name:type per column, tab-separated (https://recbole.io, "Atomic Files").
RECBOLE_COLUMNS = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
RECBOLE_STAGES = ("train", "valid", "test")  # the suffixes of RecBole's benchmark_filename
# RecBole reads a dataset named ml-100k from its own bundled copy whatever data_path says: every exported
# dataset name carries this prefix, so RecBole reads the exported files.
RECBOLE_PREFIX = "fedrec-"


@dataclass(frozen=True)
class RunSplit:
    """The dataset as the run saw it and the split of its primary seed."""

    data: Interactions
    split: Split
    name: str


@dataclass(frozen=True)
class Exported:
    directory: Path
    files: tuple[Path, ...]
    rows: dict[str, int]  # per stage


def split_of_run(run_dir: Path, dataset: str | None = None, data_dir: str | None = None) -> RunSplit:
    """The run's split, rebuilt and checked against the held-out pairs it wrote."""
    rd = RunDir.finished(run_dir, writes=False)
    meta = rd.read_report()["meta"]
    name = dataset or meta["dataset"]
    try:
        data = load_dataset(name, data_dir, meta.get("users"))
    except DataError as exc:
        raise DataError(
            f"{exc} (reloading the dataset of {rd.report_json}; pass --dataset PATH for a CSV run)"
        ) from None
    split = temporal_split(data, int(meta["seed"]))
    for stage in ("validation", "test"):
        matches = rd.split_matches(split, data, stage)
        if matches is None:
            raise FedrecError(f"{rd.split_path(stage)}: not found (the run's held-out pairs); nothing exported")
        if not matches:
            raise FedrecError(
                f"{rd.split_path(stage)}: the dataset reloaded now does not give the run's split (changed since "
                "the run, or another --dataset/--data-dir); nothing exported"
            )
    return RunSplit(data, split, Path(meta["dataset"]).stem)


def stage_rows(run: RunSplit) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(dense users, dense items, timestamps) of each RecBole stage, train in time order per user."""
    s = run.split
    order = np.lexsort((s.train_timestamps, s.train_users))
    rows = {"train": (s.train_users[order], s.train_items[order], s.train_timestamps[order])}
    for stage, targets, stamps in (("valid", s.val_items, s.val_timestamps), ("test", s.test_items, s.test_timestamps)):
        users = np.flatnonzero(targets >= 0)
        rows[stage] = (users, targets[users], stamps[users])
    return rows


def write_recbole(run: RunSplit, out: Path) -> Exported:
    """``out/fedrec-<name>/fedrec-<name>.{train,valid,test}.inter`` and ``fedrec-<name>.yaml``, RecBole's
    config for them."""
    name = RECBOLE_PREFIX + run.name
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    rating = rating_lookup(run.data)
    has_rating = bool(np.isfinite(run.data.ratings).any())
    columns = RECBOLE_COLUMNS if has_rating else tuple(c for c in RECBOLE_COLUMNS if not c.startswith("rating"))
    files, counts = [], {}
    for stage, (users, items, stamps) in stage_rows(run).items():
        table = [run.data.user_ids[users].astype(str), run.data.item_ids[items].astype(str)]
        if has_rating:
            table.append(np.char.mod("%g", rating(users, items)))
        table.append(stamps.astype(str))
        lines = ["\t".join(columns)] + ["\t".join(cells) for cells in zip(*(t.tolist() for t in table))]
        path = directory / f"{name}.{stage}.inter"
        atomic_write_text(path, "\n".join(lines) + "\n")
        files.append(path)
        counts[stage] = len(users)
    config = directory / f"{name}.yaml"
    atomic_write_text(config, recbole_config(name, out, [c.split(":")[0] for c in columns]))
    return Exported(directory, (*files, config), counts)


def recbole_config(name: str, data_path: Path, load: list[str]) -> str:
    """fedrec's protocol in RecBole's settings: the three given files, every user and item kept, the
    full catalogue ranked, NDCG@10 on validation for early stopping."""
    return "\n".join(
        [
            f"data_path: {data_path.resolve()}",
            f"dataset: {name}",
            f"benchmark_filename: [{', '.join(RECBOLE_STAGES)}]",
            "USER_ID_FIELD: user_id",
            "ITEM_ID_FIELD: item_id",
            "TIME_FIELD: timestamp",
            *(["RATING_FIELD: rating"] if "rating" in load else []),
            f"load_col: {{inter: [{', '.join(load)}]}}",
            "user_inter_num_interval: '[0,inf)'",
            "item_inter_num_interval: '[0,inf)'",
            "eval_args: {group_by: user, order: TO, mode: full}",
            "metrics: [Hit, NDCG]",
            "topk: [10]",
            "valid_metric: NDCG@10",
            "",
        ]
    )


def read_recbole(directory: Path, data: Interactions) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The exported stages read back into ``data``'s dense ids (the round-trip check)."""
    user_of = {str(u): i for i, u in enumerate(data.user_ids.tolist())}
    item_of = {str(v): i for i, v in enumerate(data.item_ids.tolist())}
    stages = {}
    for stage in RECBOLE_STAGES:
        [path] = directory.glob(f"*.{stage}.inter")
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        header = [h.split(":")[0] for h in rows[0]]
        u, i, t = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        body = rows[1:]
        stages[stage] = (
            np.array([user_of[r[u]] for r in body], dtype=np.int64),
            np.array([item_of[r[i]] for r in body], dtype=np.int64),
            np.array([int(float(r[t])) for r in body], dtype=np.int64),
        )
    return stages


EXPORTERS: dict[str, Callable[[RunSplit, Path], Exported]] = {"recbole": write_recbole}


def export_split(run_dir: Path, fmt: str, out: Path | None, dataset: str | None, data_dir: str | None) -> Exported:
    if fmt not in EXPORTERS:
        raise FedrecError(f"--format {fmt!r}: choose one of {', '.join(EXPORTERS)}")
    target = out if out is not None else Path(run_dir) / "export" / fmt
    writable_dir(target, "--out")
    return EXPORTERS[fmt](split_of_run(Path(run_dir), dataset, data_dir), target)
