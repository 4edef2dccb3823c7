"""Loaders, remapping and every bad-input case of issue 2: one-line errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fedrec_cli import call_fedrec

from fedrec.common.datasets import load_csv, load_dataset
from fedrec.common.errors import DataError
from fedrec.common.fetch import fetch_ml100k, verify


def write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_round_trip_keeps_original_ids(tmp_path):
    path = write(tmp_path, "user,item,timestamp,rating\n7,b,3,4\n5,a,1,5\n7,a,2,3\n")
    data = load_csv(path)
    assert data.n_users == 2 and data.n_items == 2
    assert data.user_ids.tolist() == [5, 7]
    assert data.item_ids.tolist() == ["a", "b"]
    # dense index -> original id -> the same rows as the file
    rows = sorted(zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(), data.timestamps.tolist()))
    assert rows == [(5, "a", 1), (7, "a", 2), (7, "b", 3)]
    assert np.allclose(sorted(data.ratings.tolist()), [3, 4, 5])


def test_csv_without_rating_has_nan_ratings(tmp_path):
    data = load_csv(write(tmp_path, "item,user,timestamp\n1,2,3\n"))
    assert np.isnan(data.ratings).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("user,item,timestamp\n1,2,3\n1,2\n", "log.csv:3: expected at least 3 fields"),
        ("user,item,timestamp\n1,2,yesterday\n", "log.csv:2: timestamp 'yesterday' is not a number"),
        ("user,item\n1,2\n", "log.csv:1: missing column(s) timestamp"),
        ("user,item,timestamp\n", "no interactions (empty file)"),
        ("user,item,timestamp,rating\n1,2,3,x\n", "log.csv:2: rating 'x' is not a number"),
        ("user,item,timestamp\n1,,3\n", "log.csv:2: empty user or item id"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_csv(write(tmp_path, text))


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        load_csv(write(tmp_path, ""))


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'ml-7'"):
        load_dataset("ml-7")


def test_checksum_mismatch_is_refused(tmp_path):
    path = write(tmp_path, "not the data")
    with pytest.raises(DataError, match="checksum mismatch"):
        verify(path, "0" * 64)


def test_corrupt_cached_copy_is_refused(tmp_path):
    (tmp_path / "ml-100k.inter").write_text("tampered")
    (tmp_path / "ml-100k.item").write_text("tampered")
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_ml100k(tmp_path)


def test_ml100k_shape(ml100k_dir):
    data = load_dataset("ml-100k", ml100k_dir)
    assert (data.n_users, data.n_items, len(data)) == (943, 1682, 100_000)
    assert data.item_titles[int(np.flatnonzero(data.item_ids == 1)[0])] == "Toy Story"


@pytest.mark.parametrize(
    "args, message",
    [
        (["baseline", "--dataset", "ml-7", "--out", "x"], "unknown dataset 'ml-7'"),
        (["data", "fetch", "ml-7"], "unknown dataset 'ml-7'"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    proc = call_fedrec(monkeypatch, capsys, *args)
    assert proc.code == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_bad_csv_line(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "user,item,timestamp\n1,2,3\n4,5,six\n")
    proc = call_fedrec(
        monkeypatch, capsys, "baseline", "--dataset", str(path), "--out", str(tmp_path / "run"), "--arms", "popularity"
    )
    assert proc.code == 1
    assert f"{path}:3: timestamp 'six' is not a number" in proc.stderr.replace("\n", "")
