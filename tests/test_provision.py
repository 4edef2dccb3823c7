"""Provisioning ML-100K into 943 encrypted stores, the plaintext scan over all of them, and the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from fedrec_cli import call_fedrec

from fedrec.common.datasets import load_dataset
from fedrec.common.manifest import load_manifest
from fedrec.common.plaintext_scan import ENCODINGS, scan_bytes, scan_file
from fedrec.common.split import temporal_split
from fedrec.common.store import DeviceStore, encode_chunk, make_chunk
from fedrec.simulations.provision import device_key_for, open_device, provision

MASTER = bytes(range(7, 39))


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    data = load_dataset("ml-100k", ml100k_dir)
    return data, temporal_split(data, 0)


@pytest.fixture(scope="module")
def fleet(ml100k, run_shared) -> Path:
    """The 943 stores, provisioned once for the whole test run (every test here only reads them)."""
    data, split = ml100k
    return run_shared("ml100k-fleet", lambda out: provision(data, split, out, MASTER, workers=2))


def user_history(split, user: int) -> tuple[np.ndarray, np.ndarray]:
    """A user's items and timestamps in time order: train, then validation, then test."""
    mask = split.train_users == user
    items = np.concatenate(
        [split.train_items[mask], split.val_items[user : user + 1], split.test_items[user : user + 1]]
    )
    stamps = np.concatenate(
        [split.train_timestamps[mask], split.val_timestamps[user : user + 1], split.test_timestamps[user : user + 1]]
    )
    return items, stamps


def test_manifest_holds_ids_and_counts_only(fleet: Path, ml100k) -> None:
    data, split = ml100k
    manifest = load_manifest(fleet)
    assert manifest.n_items == 1682 == len(manifest.item_ids) and manifest.n_users == 943
    assert list(manifest.item_ids) == data.item_ids.tolist()
    devices = manifest.devices
    assert len(devices) == 943 == len({d.device_id for d in devices})
    assert sum(sum(d.counts.values()) for d in devices) == len(data) == 100_000
    assert all(d.counts["validation"] == d.counts["test"] == 1 for d in devices)
    raw = json.loads((fleet / "manifest.json").read_text())
    assert set(raw["devices"][0]) == {"device_id", "user_index", "user_id", "store", "counts"}
    assert manifest.key["key_file"] is None and manifest.key["recipe"]["per_device"] is True
    text = (fleet / "manifest.json").read_bytes()
    assert MASTER not in text and MASTER.hex().encode() not in text
    assert sorted(p.name for p in (fleet / "stores").glob("*.db")) == sorted(f"{d.device_id}.db" for d in devices)


def test_stores_hold_each_users_split(fleet: Path, ml100k) -> None:
    data, split = ml100k
    manifest = load_manifest(fleet)
    for device in manifest.devices[::97]:
        user = device.user_index
        with open_device(fleet, MASTER, device.device_id) as store:
            assert store.store_id == device.device_id
            train = store.read_events("train")
            mask = split.train_users == user
            assert train.items.tolist() == split.train_items[mask].tolist()
            assert train.timestamps.tolist() == split.train_timestamps[mask].tolist()
            assert store.read_events("validation").items.tolist() == [split.val_items[user]]
            assert store.read_events("test").items.tolist() == [split.test_items[user]]
            assert store.counts() == device.counts
            # ratings came along as values: compare with the log
            log = data.users == user
            rating = dict(zip(zip(data.items[log].tolist(), data.timestamps[log].tolist()), data.ratings[log].tolist()))
            everything = store.read_events(None)
            assert everything.values.tolist() == [
                rating[(i, t)] for i, t in zip(everything.items.tolist(), everything.timestamps.tolist())
            ]
    other = manifest.devices[1].device_id
    with pytest.raises(Exception, match="wrong key"):
        DeviceStore.open(fleet / "stores" / f"{manifest.devices[0].device_id}.db", device_key_for(MASTER, other))


def test_scan_finds_no_user_data_in_any_of_943_stores(fleet: Path, ml100k) -> None:
    data, split = ml100k
    manifest = load_manifest(fleet)
    item_ids = np.asarray(manifest.item_ids)
    scanned = 0
    for device in manifest.devices:
        items, stamps = user_history(split, device.user_index)
        original = item_ids[items]
        sequences = [items, np.sort(items), original, np.sort(original)]
        store = fleet / device.store
        findings = [
            f
            for path in sorted(store.parent.glob(f"{store.name}*"))  # the store and any side files
            for f in scan_bytes(path.read_bytes(), stamps, sequences, path=str(path))
        ]
        assert findings == [], (device.device_id, findings[:3])
        scanned += 1
    assert scanned == 943


def test_scan_finds_plaintext_in_every_encoding(ml100k) -> None:
    """The control: the same scan does find a user's data when it is stored in any of the plain encodings."""
    _, split = ml100k
    items, stamps = user_history(split, 0)
    filler = os.urandom(500)
    blobs = {
        "text": ",".join(map(str, items.tolist())).encode() + b"\n" + " ".join(map(str, stamps.tolist())).encode(),
        "int32le": items.astype("<i4").tobytes() + stamps.astype("<i4").tobytes(),
        "int32be": items.astype(">i4").tobytes() + stamps.astype(">i4").tobytes(),
        "int64le": items.astype("<i8").tobytes() + stamps.astype("<i8").tobytes(),
        "int64be": items.astype(">i8").tobytes() + stamps.astype(">i8").tobytes(),
    }
    assert set(blobs) == set(ENCODINGS)
    for encoding, blob in blobs.items():
        found = scan_bytes(filler + blob + filler, stamps, [items])
        kinds = {(f.kind, f.encoding) for f in found}
        assert ("value", encoding) in kinds and ("run", encoding) in kinds, encoding
    # one 32-bit timestamp alone is not evidence (random ciphertext matches one by chance), two are
    one, two = (struct.pack("<i", int(t)) for t in np.unique(stamps)[:2])
    assert scan_bytes(filler + one + filler, stamps) == []
    assert len(scan_bytes(filler + one + filler + two, stamps)) == 2
    # a single item id on its own is not evidence (small numbers are everywhere), a run is
    assert not [f for f in scan_bytes(struct.pack("<q", int(items[0])), [], [items]) if f.kind == "run"]


def test_scan_finds_plain_sqlite_stores(tmp_path: Path, ml100k) -> None:
    """Plain SQLite with the store's schema (chunks unencrypted), and one row per event: both leak."""
    _, split = ml100k
    items, stamps = user_history(split, 5)
    chunked = tmp_path / "plain_chunks.db"
    conn = sqlite3.connect(chunked)
    conn.execute("CREATE TABLE chunks (seq INTEGER PRIMARY KEY, origin BLOB, nonce BLOB, ct BLOB)")
    conn.execute("INSERT INTO chunks VALUES (1, x'', x'', ?)", (encode_chunk(make_chunk(items, stamps)),))
    conn.commit()
    conn.close()
    assert {f.encoding for f in scan_file(chunked, stamps, [items])} >= {"int64le"}
    rows = tmp_path / "plain_rows.db"
    conn = sqlite3.connect(rows)
    conn.execute("CREATE TABLE events (item INTEGER, ts INTEGER, rating REAL)")
    conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [(int(i), int(t), 4.0) for i, t in zip(items, stamps)])
    conn.commit()
    conn.close()
    assert any(f.kind == "value" and f.encoding == "int32be" for f in scan_file(rows, stamps, [items]))


def fedrec(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    result = call_fedrec(monkeypatch, capsys, *args)
    return result.code, result.stdout, result.stderr


def test_cli_provision_inspect_rotate(tmp_path: Path, monkeypatch, capsys, ml100k_dir) -> None:
    monkeypatch.setenv("FEDREC_DATA_DIR", str(ml100k_dir))
    out, key = tmp_path / "fleet", tmp_path / "master.key"
    code, _, err = fedrec(
        monkeypatch,
        capsys,
        "data",
        "provision",
        "--dataset",
        "ml-100k",
        "--out",
        str(out),
        "--users",
        "6",
        "--key-file",
        str(key),
        "--quiet",
    )
    assert code == 0, err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    manifest = load_manifest(out)
    assert manifest.key["key_file"] == str(key) and len(manifest.devices) == 6
    store = out / manifest.devices[2].store

    code, stdout, _ = fedrec(monkeypatch, capsys, "store", "inspect", str(store), "--key-file", str(key), "--json")
    info = json.loads(stdout)
    assert code == 0 and info["integrity"] == "ok" and info["schema_version"] == 1 and "events_shown" not in info
    assert info["events"] == manifest.devices[2].counts
    code, stdout, _ = fedrec(
        monkeypatch,
        capsys,
        "store",
        "inspect",
        str(store),
        "--key-file",
        str(key),
        "--json",
        "--decrypt",
        "--limit",
        "0",
    )
    assert code == 0 and len(json.loads(stdout)["events_shown"]) == sum(info["events"].values())

    # again into the same dir: refused, one line
    code, _, err = fedrec(
        monkeypatch, capsys, "data", "provision", "--out", str(out), "--users", "6", "--key-file", str(key), "--quiet"
    )
    assert code == 1 and "already provisioned" in err and len(err.strip().splitlines()) == 1

    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    code, _, err = fedrec(monkeypatch, capsys, "store", "inspect", str(store), "--key-file", str(wrong))
    assert code == 1 and "wrong key" in err and len(err.strip().splitlines()) == 1

    new_key = tmp_path / "new.key"
    code, _, err = fedrec(
        monkeypatch, capsys, "store", "rotate-key", str(store), "--key-file", str(key), "--new-key-file", str(new_key)
    )
    assert code == 0, err
    assert fedrec(monkeypatch, capsys, "store", "inspect", str(store), "--key-file", str(new_key))[0] == 0
    assert fedrec(monkeypatch, capsys, "store", "inspect", str(store), "--key-file", str(key))[0] == 1

    conn = sqlite3.connect(store)
    blob = conn.execute("SELECT ct FROM chunks WHERE seq = 1").fetchone()[0]
    conn.execute("UPDATE chunks SET ct = ? WHERE seq = 1", (bytes([blob[0] ^ 1]) + blob[1:],))
    conn.commit()
    conn.close()
    code, _, err = fedrec(monkeypatch, capsys, "store", "inspect", str(store), "--key-file", str(new_key))
    assert code == 1 and "fails authentication" in err and len(err.strip().splitlines()) == 1


def test_cli_passphrase_fleet(tmp_path: Path, monkeypatch, capsys, ml100k_dir) -> None:
    monkeypatch.setenv("FEDREC_DATA_DIR", str(ml100k_dir))
    monkeypatch.setenv("FLEET_PASS", "a long passphrase")
    out = tmp_path / "fleet"
    code, _, err = fedrec(
        monkeypatch,
        capsys,
        "data",
        "provision",
        "--out",
        str(out),
        "--users",
        "3",
        "--passphrase-env",
        "FLEET_PASS",
        "--quiet",
    )
    assert code == 0, err
    manifest = load_manifest(out)
    assert manifest.key["recipe"]["source"] == "passphrase" and not (out / "master.key").exists()
    store = str(out / manifest.devices[0].store)
    assert fedrec(monkeypatch, capsys, "store", "inspect", store, "--passphrase-env", "FLEET_PASS")[0] == 0
    code, _, err = fedrec(monkeypatch, capsys, "store", "inspect", store)
    assert code == 1 and "--passphrase-env" in err
    monkeypatch.setenv("FLEET_PASS", "another passphrase")
    code, _, err = fedrec(monkeypatch, capsys, "store", "inspect", store, "--passphrase-env", "FLEET_PASS")
    assert code == 1 and "wrong key" in err


def test_cli_error_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    import subprocess

    store = tmp_path / "dev.db"
    DeviceStore.create(store, bytes(32), "dev-x").close()
    with store.open("r+b") as fh:
        fh.truncate(store.stat().st_size // 2)
    key = tmp_path / "k.key"
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "fedrec.simulations.main", "store", "inspect", str(store), "--key-file", str(key)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and "truncated" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
