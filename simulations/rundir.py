"""The run-dir contract of design.md: one place that writes (and reads back) every artefact of a run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.metrics import top_k
from fedrec.common.split import Split

TOP_N = 50


def git_commit() -> str:
    """The commit of the code that produced a report; '-dirty' when the tree has local edits."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
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


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    def read_report(self) -> dict:
        if not self.report_json.exists():
            from fedrec.common.errors import FedrecError

            raise FedrecError(f"{self.report_json}: not found (is {self.path} a fedrec run dir?)")
        return json.loads(self.report_json.read_text())

    def write_report(self, report: dict, markdown: str) -> None:
        atomic_write_text(self.report_json, json.dumps(report, indent=2, default=_json_default) + "\n")
        atomic_write_text(self.path / "report.md", markdown)

    def write_split(self, split: Split, data: Interactions) -> None:
        for stage in ("test", "validation"):
            targets = split.targets(stage)
            users = np.flatnonzero(targets >= 0)
            rows = zip(data.user_ids[users].tolist(), data.item_ids[targets[users]].tolist())
            self._write_csv(self.path / "split" / f"{stage}.csv", ["user_id", "item_id"], rows)

    def write_recommendations(self, arm: str, scores: np.ndarray, split: Split, data: Interactions) -> Path:
        """Top 50 per user for the test step (train and validation items excluded), original ids."""
        best = top_k(scores, split.seen_matrix("test"), min(TOP_N, split.n_items))
        n_users, k = best.shape
        users = np.repeat(data.user_ids, k)
        ranks = np.tile(np.arange(k), n_users)
        items = data.item_ids[best.ravel()]
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
    def _write_csv(path: Path, header: list[str], rows) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
