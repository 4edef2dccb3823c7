"""Issue 14 item 6 (the parts outside configuration): read-only targets, a damaged key recipe in a store's
plaintext header, and a truncated checkpoint each give one line naming the file, never a traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, flip, model_info, small_model_state

from fedrec.client.store_key import store_key
from fedrec.common.datasets import from_raw
from fedrec.common.model_files import ModelFileError
from fedrec.common.split import temporal_split
from fedrec.common.store import DeviceStore, StoreError, peek_header
from fedrec.server.checkpoint import load_checkpoint, save_checkpoint, save_final_model
from fedrec.simulations.provision import device_key_for, provision

MASTER = bytes(range(40, 72))


@pytest.fixture
def read_only(tmp_path) -> Path:
    directory = tmp_path / "ro"
    directory.mkdir()
    (directory / "kept.txt").write_text("committed before")
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)


@pytest.fixture
def log_csv(tmp_path) -> Path:
    path = tmp_path / "log.csv"
    rows = [f"{u},{i},{1000 + 10 * i + u}" for u in range(4) for i in range(5)]
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("where", [".", "sub/dir"])
def test_provision_into_read_only_dir(read_only, log_csv, cli, where):
    out = read_only / where
    result = cli("data", "provision", "--dataset", str(log_csv), "--out", str(out), "--quiet", obey_modes=True)
    assert_one_line_error(result, f"{out}: cannot write there", "--out")
    assert sorted(p.name for p in read_only.iterdir()) == ["kept.txt"]
    assert (read_only / "kept.txt").read_text() == "committed before"


def test_fetch_into_read_only_data_dir(read_only, cli):
    result = cli("data", "fetch", "ml-100k", "--data-dir", str(read_only), obey_modes=True)
    assert_one_line_error(result, f"{read_only / 'ml-100k'}: cannot write there", "--data-dir")
    assert sorted(p.name for p in read_only.iterdir()) == ["kept.txt"]


def test_baseline_into_read_only_out_fails_before_fitting(read_only, log_csv, cli):
    result = cli(
        "baseline", "--dataset", str(log_csv), "--arms", "popularity", "--out", str(read_only / "run"), obey_modes=True
    )
    assert_one_line_error(result, f"{read_only / 'run'}: cannot write there", "--out")


@pytest.fixture
def fleet(tmp_path) -> Path:
    users = np.repeat(np.arange(3), 6)
    items = np.tile(np.arange(6), 3)
    data = from_raw("tiny", users, items, 1000 + np.arange(18))
    out = tmp_path / "fleet"
    provision(data, temporal_split(data, 0), out, MASTER, workers=1)
    (tmp_path / "master.key").write_bytes(MASTER)
    (tmp_path / "master.key").chmod(0o600)
    return out


def recipe_offsets(store: Path) -> list[int]:
    """Byte offsets of the key recipe's text inside the SQLite file."""
    raw = store.read_bytes()
    recipe = peek_header(store)["key_recipe"].encode()
    start = raw.index(recipe)
    assert raw.count(recipe) == 1
    return list(range(start, start + len(recipe)))


def test_every_flipped_recipe_byte_is_one_line_naming_the_store(fleet):
    store = fleet / "stores" / "device-00000.db"
    key = device_key_for(MASTER, "device-00000")
    with DeviceStore.open(store, key) as opened:
        before = opened.read_events(None).items.tolist()
    raw = store.read_bytes()
    for at in recipe_offsets(store):
        store.write_bytes(flip(raw, at))
        for attempt in (
            lambda: peek_header(store),
            lambda: store_key(store, fleet.parent / "master.key"),
            lambda: DeviceStore.open(store, key),
        ):
            with pytest.raises(StoreError) as caught:
                attempt()
            assert str(caught.value).startswith(f"{store}: ") and "\n" not in str(caught.value)
    store.write_bytes(raw)
    with DeviceStore.open(store, key) as opened:  # restored, the store holds everything it held
        assert opened.read_events(None).items.tolist() == before


@pytest.mark.parametrize("pick", [0, -1])
def test_flipped_recipe_byte_through_the_cli(fleet, cli, pick):
    store = fleet / "stores" / "device-00001.db"
    raw = store.read_bytes()
    store.write_bytes(flip(raw, recipe_offsets(store)[pick]))
    key_file = str(fleet.parent / "master.key")
    for command in (
        ["store", "inspect", str(store), "--key-file", key_file],
        ["store", "rotate-key", str(store), "--key-file", key_file, "--new-key-file", str(fleet.parent / "new.key")],
    ):
        assert_one_line_error(cli(*command), f"{store}: header field 'key_recipe' is unreadable")
    store.write_bytes(raw)
    assert cli("store", "inspect", str(store), "--key-file", key_file).code == 0


def test_truncated_checkpoint_is_one_line(tmp_path):
    state, _ = small_model_state()
    path = save_checkpoint(tmp_path, 2, state, {"config": {}})
    raw = path.read_bytes()
    for keep in (0, 10, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:keep])
        with pytest.raises(ModelFileError) as caught:
            load_checkpoint(tmp_path)
        assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_server_refuses_a_truncated_checkpoint_before_starting(tmp_path, cli):
    assert cli("certs", "init", "--out", str(tmp_path / "certs"), "--ip", "127.0.0.1", "--devices", "1").code == 0
    state, _ = small_model_state()
    path = save_checkpoint(tmp_path / "out", 2, state, {"config": {}})
    truncated = path.read_bytes()[:1000]
    path.write_bytes(truncated)
    result = cli(
        "server",
        "--certs",
        str(tmp_path / "certs"),
        "--out",
        str(tmp_path / "out"),
        "--port",
        "19123",
        own_process=True,
    )
    line = assert_one_line_error(result, f"{path}: unreadable, truncated or damaged", "delete it to start the run over")
    assert "SuperLink" not in result.stderr and len(line) < 300
    assert path.read_bytes() == truncated  # refused, not replaced: the operator decides


def test_truncated_global_model_through_the_cli(tmp_path, cli):
    state, config = small_model_state()
    model = save_final_model(tmp_path, state, model_info(config))
    model.write_bytes(model.read_bytes()[:-200])
    result = cli(
        "recommend", "--store", str(tmp_path / "d.db"), "--key-file", str(tmp_path / "d.key"), "--model", str(model)
    )
    assert_one_line_error(result, f"{model}: unreadable, truncated or damaged")


def test_sqlite_header_recipe_edited_in_place(fleet):
    """The same through SQLite (an edit, not a bit flip): refused at the header, naming the store."""
    store = fleet / "stores" / "device-00002.db"
    conn = sqlite3.connect(store)
    conn.execute('UPDATE meta SET value = \'{"source": "key", "per_device": tru\' WHERE key = \'key_recipe\'')
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"^{store}: header field 'key_recipe' is unreadable"):
        peek_header(store)
