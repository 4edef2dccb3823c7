"""`fedrec data export-split RUN_DIR --format recbole`: the files read back to exactly the run's split, and a
dataset that no longer gives that split is refused."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from fedrec_cli import call_fedrec, run_fedrec
from synthetic_data import synthetic_log

from fedrec.common.datasets import load_csv
from fedrec.common.split import temporal_split
from fedrec.simulations.export_split import read_recbole


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = synthetic_log(n_users=25, n_items=30, per_user=8, seed=3)
    log = root / "log.csv"
    with log.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user", "item", "timestamp", "rating"])
        # two interactions of one user at the same second: the split's seeded tie-break must survive the export
        stamps = data.timestamps.copy()
        stamps[1] = stamps[0]
        for u, i, t, r in zip(data.users, data.items, stamps, data.ratings):
            writer.writerow([data.user_ids[u], data.item_ids[i], t, int(r)])
    done = run_fedrec("baseline", "--dataset", str(log), "--arms", "popularity", "--seeds", "4",
                      "--no-retention", "--quiet", "--out", str(root / "run"))  # fmt: skip
    assert done.code == 0, done.stderr
    return root / "run", log


def test_recbole_export_round_trips_to_the_runs_split(run, monkeypatch, capsys, tmp_path):
    run_dir, log = run
    out = tmp_path / "rb"
    done = call_fedrec(monkeypatch, capsys, "data", "export-split", str(run_dir), "--format", "recbole",
                       "--dataset", str(log), "--out", str(out))  # fmt: skip
    assert done.code == 0, done.stderr
    data = load_csv(log)
    split = temporal_split(data, 4)
    stages = read_recbole(out / "fedrec-log", data)
    users, items, stamps = stages["train"]
    pairs = set(zip(users.tolist(), items.tolist(), stamps.tolist()))
    assert len(pairs) == len(users) == len(split.train_users)
    assert pairs == set(zip(split.train_users.tolist(), split.train_items.tolist(), split.train_timestamps.tolist()))
    for stage, targets in (("valid", split.val_items), ("test", split.test_items)):
        users, items, _ = stages[stage]
        expected = np.full(data.n_users, -1)
        expected[users] = items
        assert np.array_equal(expected, targets)
    header = (out / "fedrec-log" / "fedrec-log.train.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert "benchmark_filename: [train, valid, test]" in (out / "fedrec-log" / "fedrec-log.yaml").read_text()


def test_a_dataset_that_changed_since_the_run_is_refused(run, monkeypatch, capsys, tmp_path):
    run_dir, log = run
    changed = tmp_path / "log.csv"
    lines = log.read_text().splitlines()
    changed.write_text("\n".join(lines[:-1]) + "\n")  # one interaction fewer: some user's held-out item moves
    out = tmp_path / "rb"
    done = call_fedrec(monkeypatch, capsys, "data", "export-split", str(run_dir), "--dataset", str(changed),
                       "--out", str(out))  # fmt: skip
    assert done.code == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {run_dir / 'split' / 'validation.csv'}: the dataset reloaded now does not give the run's split "
        "(changed since the run, or another --dataset/--data-dir); nothing exported"
    ]
    assert not any(out.rglob("*.inter"))


def test_an_unknown_format_is_one_line(run, monkeypatch, capsys):
    done = call_fedrec(monkeypatch, capsys, "data", "export-split", str(run[0]), "--format", "surprise")
    assert (done.code, done.stderr.strip()) == (1, "error: --format 'surprise': choose one of recbole")
