"""The run-dir contract (docs/design.md, "Run dir"): one place that writes (and reads back) every artefact of a run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.errors import FedrecError
from fedrec.common.files import read_text, writable_dir
from fedrec.common.metrics import top_k
from fedrec.common.split import Split

TOP_N = 50


def git_commit() -> str:
    """The commit of the code that produced a report; '-dirty' when the tree has local edits. Git itself
    finds the checkout this module lives in; an installed wheel has none and reports its version."""
    root = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return f"unknown (fedrec {metadata.version('fedrec')}, not a git checkout)"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a crash never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# What every reader of report.json relies on (retention, audit): key -> (type, its name for the message).
_META_FIELDS: dict[str, tuple[type, str]] = {
    "dataset": (str, "a string"),
    "n_users": (int, "an integer"),
    "n_items": (int, "an integer"),
    "seed": (int, "an integer"),
}
_ARM_TABLES = ("accuracy", "info", "privacy")


_KINDS = {dict: "an object", list: "a list", str: "a string", type(None): "null"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def check_report(report: object, where: Path) -> None:
    """One line naming the first missing or malformed key of a report.json, so a damaged or foreign file
    never reaches a reader as a KeyError or TypeError."""

    def bad(key: str, expected: str, value: object) -> FedrecError:
        return FedrecError(f"{where}: {key} must be {expected}, got {_kind(value)} (damaged, or not a fedrec report)")

    if not isinstance(report, dict):
        raise bad("the top level", "an object with meta and arms", report)
    for table in ("meta", "arms"):
        if table not in report:
            raise FedrecError(f"{where}: {table} missing (damaged, or not a fedrec report)")
        if not isinstance(report[table], dict):
            raise bad(table, "an object", report[table])
    meta = report["meta"]
    for key, (tp, expected) in _META_FIELDS.items():
        if key not in meta:
            raise FedrecError(f"{where}: meta.{key} missing (damaged, or not a fedrec report)")
        value = meta[key]
        if not isinstance(value, tp) or isinstance(value, bool):
            raise bad(f"meta.{key}", expected, value)
    users = meta.get("users")
    if users is not None and (not isinstance(users, int) or isinstance(users, bool)):
        raise bad("meta.users", "an integer or null", users)
    for name, arm in report["arms"].items():
        if not isinstance(arm, dict):
            raise bad(f"arms.{name}", "an object", arm)
        for table in _ARM_TABLES:
            if arm.get(table) is not None and not isinstance(arm[table], dict):
                raise bad(f"arms.{name}.{table}", "an object or null", arm[table])


def held_out_pairs(split: Split, data: Interactions, stage: str) -> list[tuple[object, object]]:
    """(user id, item id), original ids, of every user with a held-out item at ``stage``."""
    targets = split.targets(stage)
    users = np.flatnonzero(targets >= 0)
    return list(zip(data.user_ids[users].tolist(), data.item_ids[targets[users]].tolist()))


INCOMPLETE = "INCOMPLETE"  # present while a run is fitting, and after one that stopped half-way


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def fresh(cls, path: str | Path) -> RunDir:
        """A run dir for a new run: refused if ``path`` holds anything, so that a re-run after a crash never
        mixes with the dead run's stores, ledgers (its privacy spending) or checkpoints."""
        path = Path(path)
        if path.is_dir() and any(path.iterdir()):
            state = "an unfinished run (interrupted or failed)" if (path / INCOMPLETE).exists() else "a run"
            raise FedrecError(
                f"{path}: already holds {state}; give a fresh --out "
                f"(a harness run cannot be resumed: its devices' ledgers would mix two runs)"
            )
        if path.exists() and not path.is_dir():
            raise FedrecError(f"{path}: exists and is not a directory (--out)")
        try:
            return cls(path)
        except OSError as exc:
            raise FedrecError(f"{path}: cannot create the run dir ({exc.strerror})") from None

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @classmethod
    def finished(cls, path: str | Path, flag: str = "RUN_DIR", writes: bool = True) -> RunDir:
        """A finished run dir for a stage that reads it and (``writes``) writes into it (retention, audit):
        a directory holding a valid report.json, writable if need be, all checked before any work."""
        path = Path(path)
        if not path.exists():
            raise FedrecError(f"{path / 'report.json'}: not found ({path} does not exist; {flag}: a fedrec run dir)")
        if not path.is_dir():
            raise FedrecError(f"{path}: not a directory ({flag}: a fedrec run dir)")
        if (path / INCOMPLETE).exists():
            raise FedrecError(
                f"{path}: the run did not finish (interrupted or failed: {path / INCOMPLETE}); run it again "
                "into a fresh --out"
            )
        run_dir = cls(path)
        run_dir.read_report()
        if writes:
            writable_dir(path, flag)
        return run_dir

    def mark_incomplete(self) -> None:
        """Until ``mark_complete``: every reader refuses the dir, which a run stopped half-way leaves behind."""
        atomic_write_text(self.path / INCOMPLETE, "this run has not finished: fitting, or interrupted or failed\n")

    def mark_complete(self) -> None:
        (self.path / INCOMPLETE).unlink(missing_ok=True)

    def read_report(self) -> dict:
        """report.json, checked against what its readers use (``check_report``)."""
        where = self.report_json
        if not where.is_file():
            raise FedrecError(f"{where}: not found (is {self.path} a fedrec run dir?)")
        text = read_text(where, "the run's report")
        try:
            report = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FedrecError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}; truncated?)") from None
        check_report(report, where)
        return report

    def write_report(self, report: dict, markdown: str) -> None:
        atomic_write_text(self.report_json, json.dumps(report, indent=2, default=_json_default) + "\n")
        atomic_write_text(self.path / "report.md", markdown)

    def write_split(self, split: Split, data: Interactions) -> None:
        for stage in ("test", "validation"):
            self._write_csv(self.split_path(stage), ["user_id", "item_id"], held_out_pairs(split, data, stage))

    def split_path(self, stage: str) -> Path:
        """split/<stage>.csv: each user's held-out item at ``stage`` (validation or test), original ids."""
        return self.path / "split" / f"{stage}.csv"

    def split_matches(self, split: Split, data: Interactions, stage: str) -> bool | None:
        """Does ``split`` (rebuilt by a later stage) hold the run's held-out pairs at ``stage``? None when the
        run wrote none (an older run dir)."""
        path = self.split_path(stage)
        if not path.is_file():
            return None
        with path.open(newline="") as fh:
            written = [(r["user_id"], r["item_id"]) for r in csv.DictReader(fh)]
        return sorted(written) == sorted((str(u), str(i)) for u, i in held_out_pairs(split, data, stage))

    def write_recommendations(self, arm: str, scores: np.ndarray, split: Split, data: Interactions) -> Path:
        """Top 50 per user for the test step (train and validation items excluded), original ids; a user
        with fewer than 50 unseen items gets only those (a small catalogue must not pad with seen items)."""
        seen = split.seen_matrix("test")
        best = top_k(scores, seen, min(TOP_N, split.n_items))
        n_users, k = best.shape
        unseen = split.n_items - np.diff(seen.indptr)
        keep = (np.arange(k)[None, :] < unseen[:, None]).ravel()
        users = np.repeat(data.user_ids, k)[keep]
        ranks = np.tile(np.arange(1, k + 1), n_users)[keep]  # 1 = the best, as `fedrec recommend` shows it
        items = data.item_ids[best.ravel()[keep]]
        path = self.path / "recommendations" / f"{arm}.csv"
        self._write_csv(path, ["user_id", "rank", "item_id"], zip(users.tolist(), ranks.tolist(), items.tolist()))
        return path

    def scores_path(self, arm: str, seed: int | None = None) -> Path:
        """scores/<arm>.npy for the primary seed; scores/seed_<s>/<arm>.npy for each further training seed."""
        folder = self.path / "scores" if seed is None else self.path / "scores" / f"seed_{seed}"
        return folder / f"{arm}.npy"

    def write_scores(self, arm: str, scores: np.ndarray, seed: int | None = None) -> Path:
        """Dense scores for later stages (retention, audit) that re-read a finished run."""
        path = self.scores_path(arm, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, scores.astype(np.float32))
        return path

    def read_scores(self, arm: str, seed: int | None = None) -> np.ndarray:
        return np.load(self.scores_path(arm, seed))

    def extra_score_seeds(self) -> list[int]:
        """Training seeds beyond the primary one whose score matrices are on disk."""
        folder = self.path / "scores"
        return sorted(int(p.name[5:]) for p in folder.glob("seed_*") if p.is_dir() and p.name[5:].isdigit())

    @staticmethod
    def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
