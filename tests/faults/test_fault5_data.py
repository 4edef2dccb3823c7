"""Issue 14 item 5: repeated rows, non-UTF-8 bytes, overflowing numbers and wrong types in the input log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error

from fedrec.common.datasets import load_csv
from fedrec.common.errors import DataError
from fedrec.common.manifest import load_manifest
from fedrec.common.split import temporal_split


def log_rows(n_users: int = 30, per_user: int = 8, n_items: int = 40, seed: int = 0) -> list[list]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for k, item in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            rows.append([u, int(item), 1_000_000 + u * 7 + k * 86_400, int(rng.integers(1, 6))])
    return rows


def write_csv(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user", "item", "timestamp", "rating"])
        writer.writerows(rows)
    return path


def with_repeats(rows: list[list], n: int, seed: int = 1) -> list[list]:
    """``n`` copies of earlier rows at earlier times: the repeats the issue found leaking test items."""
    rng = np.random.default_rng(seed)
    extra = []
    for i in rng.integers(0, len(rows), size=n):
        user, item, stamp, rating = rows[i]
        extra.append([user, item, stamp - int(rng.integers(1, 10 * 86_400)), rating])
    return rows + extra


def test_repeated_pairs_count_once_at_their_latest_time(tmp_path):
    rows = log_rows()
    data = load_csv(write_csv(tmp_path / "dups.csv", with_repeats(rows, 500)))
    assert len(data) == len(rows) and data.n_merged == 500
    latest = {(u, i): t for u, i, t, _ in rows}  # the copies are all older than the originals
    got = dict(
        zip(zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist()), data.timestamps.tolist())
    )
    assert got == latest
    assert data.subset_users(10).n_merged == int(data.merged[:10].sum())


def test_a_test_item_is_never_also_in_train_or_validation(tmp_path):
    data = load_csv(write_csv(tmp_path / "dups.csv", with_repeats(log_rows(), 500)))
    for seed in (0, 1, 2):
        split = temporal_split(data, seed)
        train = set(zip(split.train_users.tolist(), split.train_items.tolist()))
        users = np.flatnonzero(split.test_items >= 0)
        assert len(users) == 30
        assert not any((u, split.test_items[u]) in train for u in users)
        assert not np.any(split.val_items[users] == split.test_items[users])
        assert not any((u, split.val_items[u]) in train for u in users)


def test_a_later_copy_moves_the_pair_to_its_latest_time(tmp_path):
    rows = [[1, 10, 100, 5], [1, 11, 200, 4], [1, 12, 300, 3], [1, 10, 400, 2]]
    data = load_csv(write_csv(tmp_path / "late.csv", rows))
    split = temporal_split(data, 0)
    assert data.n_merged == 1 and len(data) == 3
    assert data.item_ids[split.test_items[0]] == 10 and data.ratings[data.items == 0].tolist() == [2.0]


def test_the_harness_reports_the_merged_count(tmp_path, cli):
    path = write_csv(tmp_path / "dups.csv", with_repeats(log_rows(), 500))
    result = cli(
        "baseline", "--dataset", str(path), "--arms", "popularity", "--out", str(tmp_path / "run"), "--no-retention"
    )
    assert result.code == 0, result.stderr
    assert "500 repeated (user, item) rows merged" in result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["meta"]["duplicates_merged"] == 500 and report["meta"]["n_interactions"] == 240
    assert "merged into their latest: 500" in (tmp_path / "run" / "report.md").read_text()
    test_pairs = {tuple(r) for r in csv.reader((tmp_path / "run" / "split" / "test.csv").open())}
    assert len(test_pairs) == 31  # header + one per user


BAD_CELLS = [
    ("timestamp", "1e30", "timestamp '1e30' is outside the 64-bit range"),
    ("timestamp", str(2**70), "is outside the 64-bit range"),
    ("timestamp", "soon", "timestamp 'soon' is not a number"),
    ("item", str(2**64 + 5), f"item id {2**64 + 5} does not fit in a signed 64-bit integer"),
    ("user", str(-(2**64)), "user id -18446744073709551616 does not fit"),
    ("item", "x17", "item id 'x17' is not an integer, unlike the item ids before it"),
    ("rating", "1e39", "rating '1e39' is too large for a 32-bit float"),
    ("rating", "nan", "is not a finite number"),
]


@pytest.mark.parametrize("column,value,message", BAD_CELLS)
def test_bad_cells_name_file_and_line(tmp_path, column, value, message):
    rows = log_rows(n_users=5)
    rows[7][["user", "item", "timestamp", "rating"].index(column)] = value
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as caught:
        load_csv(path)
    assert str(caught.value).startswith(f"{path}:9: ") and message in str(caught.value)


def test_non_utf8_byte_names_its_line(tmp_path):
    path = write_csv(tmp_path / "latin.csv", log_rows(n_users=5))
    lines = path.read_bytes().split(b"\n")
    lines[12] = lines[12].replace(b",", b"\xe9,", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"latin.csv:13: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        load_csv(path)


@pytest.mark.parametrize(
    "value,message",
    [
        ("1e30", ":5: timestamp '1e30' is outside the 64-bit range"),
        (str(2**64 + 1), ":5: item id 18446744073709551617 does not fit"),
    ],
)
def test_cli_refuses_overflow_with_one_line(tmp_path, cli, value, message):
    rows = log_rows(n_users=5)
    rows[3][2 if value == "1e30" else 1] = value
    path = write_csv(tmp_path / "big.csv", rows)
    out = tmp_path / "prov"
    result = cli("data", "provision", "--dataset", str(path), "--out", str(out), "--quiet")
    assert_one_line_error(result, str(path) + message)
    assert not out.exists()  # refused before anything was written, not even a key file


def test_cli_refuses_non_utf8_and_manifest_ids_keep_their_type(tmp_path, cli):
    rows = log_rows(n_users=6)
    clean = write_csv(tmp_path / "clean.csv", rows)
    dirty = tmp_path / "dirty.csv"
    dirty.write_bytes(clean.read_bytes().replace(b"\n3,", b"\n3\xff,", 1))
    assert_one_line_error(
        cli("data", "provision", "--dataset", str(dirty), "--out", str(tmp_path / "d"), "--quiet"),
        f"{dirty}:",
        "not UTF-8 text (byte 0xff",
    )
    result = cli(
        "data", "provision", "--dataset", str(clean), "--out", str(tmp_path / "c"), "--quiet", "--workers", "1"
    )
    assert result.code == 0, result.stderr
    manifest = load_manifest(tmp_path / "c")
    assert all(type(i) is int for i in manifest.item_ids)
    assert sorted(manifest.item_ids) == sorted({r[1] for r in rows})
    assert all(type(d.user_id) is int for d in manifest.devices)
    assert manifest.duplicates_merged == 0
