"""Issue 14 item 9: a stage that cannot run is reported as skipped and the rest of the report is written;
a catalogue smaller than 50 never pads recommendations with already-seen items."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fedrec.common.datasets import load_csv
from fedrec.common.split import temporal_split

N_ITEMS = 20  # below the 50 recommendations a run dir lists per user


def single_day_log(path: Path, n_users: int = 12, per_user: int = 6, seed: int = 0) -> Path:
    """Every user active on one day only: there are no first-return gaps to fit retention on."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user", "item", "timestamp", "rating"])
        for u in range(n_users):
            day = int(rng.integers(0, 30))
            for item in rng.choice(N_ITEMS, size=per_user, replace=False):
                writer.writerow([u, int(item), day * 86_400 + int(rng.integers(0, 80_000)), int(rng.integers(1, 6))])
    return path


def test_retention_without_day_gaps_is_skipped_and_the_report_written(tmp_path, cli):
    path = single_day_log(tmp_path / "oneday.csv")
    run = tmp_path / "run"
    result = cli("baseline", "--dataset", str(path), "--arms", "random,popularity,ease", "--out", str(run))
    assert result.code == 0, result.stderr
    assert "retention skipped: no first-return day gaps in the dataset" in result.stderr
    report = json.loads((run / "report.json").read_text())
    assert "day gaps" in report["retention"]["skipped"]
    assert set(report["arms"]) == {"random", "popularity", "ease"}
    assert all(0.0 <= arm["accuracy"]["hr@10"] <= 1.0 for arm in report["arms"].values())
    text = (run / "report.md").read_text()
    assert "## Accuracy" in text and "Skipped: no first-return day gaps" in text
    for arm in report["arms"]:
        assert (run / "recommendations" / f"{arm}.csv").exists() and (run / "scores" / f"{arm}.npy").exists()


def test_no_retention_switch(tmp_path, cli):
    run = tmp_path / "run"
    result = cli(
        "baseline",
        "--dataset",
        str(single_day_log(tmp_path / "oneday.csv")),
        "--arms",
        "popularity",
        "--out",
        str(run),
        "--no-retention",
    )
    assert result.code == 0, result.stderr
    assert "retention skipped" not in result.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["retention"] == {"skipped": "not requested (--no-retention)"}
    assert not list(run.glob("retention_*.png"))


def test_small_catalogue_recommends_only_unseen_items(tmp_path, cli):
    path = single_day_log(tmp_path / "oneday.csv")
    run = tmp_path / "run"
    assert (
        cli("baseline", "--dataset", str(path), "--arms", "popularity,random", "--out", str(run), "--no-retention").code
        == 0
    )
    data = load_csv(path)
    split = temporal_split(data, 0)
    seen = split.seen_matrix("test")
    for arm in ("popularity", "random"):
        with (run / "recommendations" / f"{arm}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        by_user: dict[int, list[int]] = {}
        for row in rows:
            by_user.setdefault(int(row["user_id"]), []).append(int(row["item_id"]))
        ranks = [int(row["rank"]) for row in rows if int(row["user_id"]) == data.user_ids[0]]
        assert ranks == list(range(1, len(ranks) + 1))  # 1 = the best, as `fedrec recommend` prints it
        for dense, user in enumerate(data.user_ids.tolist()):
            seen_ids = set(data.item_ids[seen[dense].indices].tolist())
            assert not seen_ids & set(by_user[user]), (arm, user)
            assert len(by_user[user]) == len(set(by_user[user])) == data.n_items - len(seen_ids)
            assert data.item_ids[split.test_items[dense]] in by_user[user]
