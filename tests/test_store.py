"""Device store: round trip, and every kind of tampering refused with its own error."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.errors import FedrecError
from fedrec.common.keys import KeyRecipe
from fedrec.common.store import (
    DeletedRowError,
    DeviceStore,
    ForeignRowError,
    NotAStoreError,
    ReorderedRowError,
    RollbackError,
    StoreError,
    StoreNotFoundError,
    TamperedError,
    TruncatedError,
    WrongKeyError,
    peek_header,
    rotate_key,
    witness_path,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def make_store(path: Path, key: bytes = KEY, store_id: str = "dev-a") -> Path:
    """Three chunks (train x2, test) and two state values: enough rows to swap, delete and copy."""
    with DeviceStore.create(path, key, store_id) as store:
        store.append_events([5, 6, 7], [100, 200, 300], [4.0, 3.5, np.nan])
        store.append_events([8, 9], [400, 500], event_type="click")
        store.append_events([10], [600], [5.0], split="test")
        store.put_state("user_embedding", b"\x01\x02\x03")
        store.put_state("privacy_ledger", b'{"epsilon": 0.5}')
    return path


def sql(path: Path, *statements: tuple) -> None:
    """Edit the file behind the store's back, as an attacker with file access would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(*statement) if isinstance(statement, tuple) else conn.execute(statement)
    finally:
        conn.close()


def flip(blob: bytes, at: int = 0) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return make_store(tmp_path / "a.db")


def test_round_trip(store_path: Path) -> None:
    with DeviceStore.open(store_path, KEY) as store:
        assert store.store_id == "dev-a"
        train = store.read_events("train")
        assert train.items.tolist() == [5, 6, 7, 8, 9]
        assert train.items.dtype == np.int64 and train.timestamps.dtype == np.int64
        assert train.timestamps.tolist() == [100, 200, 300, 400, 500]
        assert train.event_types.tolist() == ["rating"] * 3 + ["click"] * 2
        assert train.values.dtype == np.float32
        np.testing.assert_array_equal(train.values, np.array([4.0, 3.5, np.nan, np.nan, np.nan], dtype=np.float32))
        assert store.read_events("test").items.tolist() == [10]
        assert len(store.read_events("validation")) == 0
        everything = store.read_events(None)
        assert everything.splits.tolist() == ["train"] * 5 + ["test"]
        assert store.get_state("user_embedding") == b"\x01\x02\x03"
        assert store.get_state("privacy_ledger") == b'{"epsilon": 0.5}'
        assert store.get_state("rounds") is None
        assert store.counts() == {"train": 5, "validation": 0, "test": 1}
        store.verify()


def test_an_event_type_keeps_its_trailing_nul_characters(store_path: Path) -> None:
    """Found by the property test: numpy's fixed-width str would read "a\x00" back as "a"."""
    with DeviceStore.open(store_path, KEY) as store:
        store.append_events([1, 2], [600, 700], event_type="a\x00", split="train")
    with DeviceStore.open(store_path, KEY) as store:
        assert store.read_events("train").event_types.tolist()[-2:] == ["a\x00", "a\x00"]


def test_state_overwrite_and_reopen(store_path: Path) -> None:
    with DeviceStore.open(store_path, KEY) as store:
        before = store.generation
        store.put_state("user_embedding", b"new")
        assert store.generation == before + 1
    with DeviceStore.open(store_path, KEY) as store:
        assert store.get_state("user_embedding") == b"new"


def test_several_states_in_one_transaction(store_path: Path) -> None:
    with DeviceStore.open(store_path, KEY) as store:
        before = store.generation
        store.put_states({"user_embedding": b"e", "privacy_ledger": b"l", "rounds": b"3"})
        assert store.generation == before + 1
    with DeviceStore.open(store_path, KEY) as store:
        assert [store.get_state(n) for n in ("user_embedding", "privacy_ledger", "rounds")] == [b"e", b"l", b"3"]


def test_bad_arguments_are_refused(store_path: Path) -> None:
    with DeviceStore.open(store_path, KEY) as store:
        with pytest.raises(ValueError):
            store.append_events([1, 2], [1])
        with pytest.raises(ValueError):
            store.append_events([1], [1], split="holdout")
        with pytest.raises(ValueError):
            store.append_events([1.5], [1])
        with pytest.raises(ValueError):
            store.read_events("holdout")


def test_create_refuses_to_overwrite(store_path: Path) -> None:
    with pytest.raises(StoreError, match="refusing to overwrite"):
        DeviceStore.create(store_path, KEY, "dev-a")


def test_errors_are_distinct_fedrec_errors() -> None:
    kinds = [
        WrongKeyError,
        TamperedError,
        DeletedRowError,
        ReorderedRowError,
        ForeignRowError,
        TruncatedError,
        RollbackError,
        NotAStoreError,
        StoreNotFoundError,
    ]
    assert len(set(kinds)) == len(kinds)
    for kind in kinds:
        assert issubclass(kind, StoreError) and issubclass(kind, FedrecError)
        assert not any(issubclass(kind, other) for other in kinds if other is not kind)


def test_wrong_key_says_wrong_key(store_path: Path) -> None:
    with pytest.raises(WrongKeyError, match="wrong key"):
        DeviceStore.open(store_path, OTHER_KEY)


def test_missing_file_and_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        DeviceStore.open(tmp_path / "nope.db", KEY)
    (tmp_path / "text.db").write_text("hello, this is not SQLite" * 10)
    with pytest.raises(NotAStoreError):
        DeviceStore.open(tmp_path / "text.db", KEY)
    sql(tmp_path / "other.db", "CREATE TABLE t (x)")
    with pytest.raises(NotAStoreError):
        DeviceStore.open(tmp_path / "other.db", KEY)


@pytest.mark.parametrize(
    "table,where", [("chunks", "seq = 2"), ("state", "name = 'user_embedding'"), ("head", "id = 1")]
)
@pytest.mark.parametrize("column", ["nonce", "ct"])
@pytest.mark.parametrize("at", [0, -1])
def test_flipped_byte_in_each_ciphertext_column(store_path: Path, table: str, where: str, column: str, at: int) -> None:
    conn = sqlite3.connect(store_path)
    blob = conn.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()[0]
    conn.close()
    sql(store_path, (f"UPDATE {table} SET {column} = ? WHERE {where}", (flip(blob, at % len(blob)),)))
    with pytest.raises(TamperedError):
        DeviceStore.open(store_path, KEY)


def test_flipped_byte_in_the_file_itself(store_path: Path) -> None:
    """Same, at the byte level: SQLite has no page checksums, the ciphertext's GCM tag catches it."""
    conn = sqlite3.connect(store_path)
    blob = conn.execute("SELECT ct FROM chunks WHERE seq = 1").fetchone()[0]
    conn.close()
    raw = store_path.read_bytes()
    at = raw.index(blob) + len(blob) // 2
    store_path.write_bytes(flip(raw, at))
    with pytest.raises(TamperedError):
        DeviceStore.open(store_path, KEY)


def test_any_flipped_byte_is_refused_or_harmless(store_path: Path) -> None:
    """Flip sampled bytes across the whole file: the store either refuses with a StoreError or reads back
    exactly what was written (the byte was in unused space). Never another exception, never other data."""
    with DeviceStore.open(store_path, KEY) as store:
        want = store.read_events(None), {n: store.get_state(n) for n in store.state_names()}
    witness_path(store_path).unlink()
    raw = store_path.read_bytes()
    rng = np.random.default_rng(0)
    copy = store_path.with_name("copy.db")
    refused = 0
    for at in rng.choice(len(raw), size=120, replace=False):
        copy.write_bytes(flip(raw, int(at)))
        witness_path(copy).unlink(missing_ok=True)
        try:
            with DeviceStore.open(copy, KEY) as store:
                got = store.read_events(None)
                assert got.items.tolist() == want[0].items.tolist()
                assert got.timestamps.tolist() == want[0].timestamps.tolist()
                assert {n: store.get_state(n) for n in store.state_names()} == want[1]
        except StoreError:
            refused += 1
    assert refused > 0


def test_header_tampering(store_path: Path) -> None:
    sql(store_path, "UPDATE meta SET value = 'dev-b' WHERE key = 'store_id'")
    with pytest.raises(TamperedError):
        DeviceStore.open(store_path, KEY)


def test_swapped_chunk_rows(store_path: Path) -> None:
    sql(
        store_path,
        "UPDATE chunks SET seq = 100 WHERE seq = 1",
        "UPDATE chunks SET seq = 1 WHERE seq = 2",
        "UPDATE chunks SET seq = 2 WHERE seq = 100",
    )
    with pytest.raises(ReorderedRowError):
        DeviceStore.open(store_path, KEY)


def test_swapped_state_rows(store_path: Path) -> None:
    conn = sqlite3.connect(store_path)
    rows = dict(
        (n, (v, o, nc, c)) for n, v, o, nc, c in conn.execute("SELECT name, version, origin, nonce, ct FROM state")
    )
    conn.close()
    a, b = rows["user_embedding"], rows["privacy_ledger"]
    sql(
        store_path,
        ("UPDATE state SET nonce = ?, ct = ? WHERE name = 'user_embedding'", (b[2], b[3])),
        ("UPDATE state SET nonce = ?, ct = ? WHERE name = 'privacy_ledger'", (a[2], a[3])),
    )
    with pytest.raises(ReorderedRowError):
        DeviceStore.open(store_path, KEY)


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM chunks WHERE seq = 2",
        "DELETE FROM chunks WHERE seq = 3",
        "DELETE FROM state WHERE name = 'privacy_ledger'",
        "DELETE FROM head",
    ],
)
def test_deleted_row(store_path: Path, statement: str) -> None:
    sql(store_path, statement)
    with pytest.raises(DeletedRowError):
        DeviceStore.open(store_path, KEY)


@pytest.mark.parametrize("other_key", [KEY, OTHER_KEY], ids=["same-key", "other-key"])
@pytest.mark.parametrize(
    "table,where,insert",
    [
        ("chunks", "seq = 1", "INSERT INTO chunks VALUES (4, ?, ?, ?)"),
        ("state", "name = 'user_embedding'", None),
        ("head", "id = 1", None),
    ],
)
def test_row_copied_from_another_store(tmp_path: Path, other_key: bytes, table: str, where: str, insert) -> None:
    a = make_store(tmp_path / "a.db")
    b = make_store(tmp_path / "b.db", key=other_key, store_id="dev-b")
    conn = sqlite3.connect(b)
    origin, nonce, ct = conn.execute(f"SELECT origin, nonce, ct FROM {table} WHERE {where}").fetchone()
    conn.close()
    sql(a, (f"UPDATE {table} SET origin = ?, nonce = ?, ct = ? WHERE {where}", (origin, nonce, ct)))
    with pytest.raises(ForeignRowError):
        DeviceStore.open(a, KEY)
    if insert:  # appended rather than replacing one
        c = make_store(tmp_path / "c.db")
        sql(c, (insert, (origin, nonce, ct)))
        with pytest.raises(ForeignRowError):
            DeviceStore.open(c, KEY)


def test_copied_row_with_its_origin_rewritten_is_still_refused(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.db")
    b = make_store(tmp_path / "b.db", store_id="dev-b")
    conn = sqlite3.connect(b)
    nonce, ct = conn.execute("SELECT nonce, ct FROM chunks WHERE seq = 1").fetchone()
    conn.close()
    sql(a, ("UPDATE chunks SET nonce = ?, ct = ? WHERE seq = 1", (nonce, ct)))
    with pytest.raises(TamperedError):  # the associated data names store dev-a; the row was sealed for dev-b
        DeviceStore.open(a, KEY)


def test_rollback_to_an_older_copy(store_path: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    shutil.copy(store_path, old)
    with DeviceStore.open(store_path, KEY) as store:
        store.put_state("privacy_ledger", b'{"epsilon": 3.0}')
        store.append_events([11], [700])
        newer = store.generation
    shutil.copy(old, store_path)  # restore the old copy of the file only
    with pytest.raises(RollbackError, match="rolled back"):
        DeviceStore.open(store_path, KEY)
    # what the file alone cannot tell: without the witness the old copy is self-consistent ...
    with DeviceStore.open(store_path, KEY, witness=False) as store:
        assert store.get_state("privacy_ledger") == b'{"epsilon": 0.5}'
    # ... unless the caller keeps the generation somewhere it trusts
    with pytest.raises(RollbackError):
        DeviceStore.open(store_path, KEY, witness=False, min_generation=newer)


def test_partial_rollback_of_one_state_row(store_path: Path) -> None:
    conn = sqlite3.connect(store_path)
    old_row = conn.execute("SELECT version, nonce, ct FROM state WHERE name = 'privacy_ledger'").fetchone()
    conn.close()
    with DeviceStore.open(store_path, KEY) as store:
        store.put_state("privacy_ledger", b'{"epsilon": 9.0}')
    sql(store_path, ("UPDATE state SET version = ?, nonce = ?, ct = ? WHERE name = 'privacy_ledger'", old_row))
    with pytest.raises(RollbackError):
        DeviceStore.open(store_path, KEY)


def test_head_rolled_back_under_newer_rows(store_path: Path) -> None:
    conn = sqlite3.connect(store_path)
    old_head = conn.execute("SELECT nonce, ct FROM head").fetchone()
    conn.close()
    with DeviceStore.open(store_path, KEY) as store:
        store.append_events([11], [700])
    sql(store_path, ("UPDATE head SET nonce = ?, ct = ?", old_head))
    with pytest.raises(RollbackError):
        DeviceStore.open(store_path, KEY, witness=False)


@pytest.mark.parametrize("keep", [0, 50, 0.5, -4096, -1])
def test_truncated_file(store_path: Path, keep) -> None:
    size = store_path.stat().st_size
    keep = int(size * keep) if isinstance(keep, float) else (keep if keep >= 0 else size + keep)
    with store_path.open("r+b") as fh:
        fh.truncate(keep)
    with pytest.raises(TruncatedError):
        DeviceStore.open(store_path, KEY)


def test_concurrent_writer_is_refused(store_path: Path) -> None:
    with DeviceStore.open(store_path, KEY) as first, DeviceStore.open(store_path, KEY) as second:
        first.append_events([1], [1])
        with pytest.raises(StoreError, match="changed since it was opened"):
            second.append_events([2], [2])


def test_rotate_key(store_path: Path) -> None:
    with DeviceStore.open(store_path, KEY) as store:
        before = store.read_events(None), store.get_state("privacy_ledger"), store.generation
    generation = rotate_key(store_path, KEY, OTHER_KEY)
    assert generation == before[2] + 1
    with pytest.raises(WrongKeyError):
        DeviceStore.open(store_path, KEY)
    with DeviceStore.open(store_path, OTHER_KEY) as store:
        assert store.read_events(None).items.tolist() == before[0].items.tolist()
        assert store.read_events(None).splits.tolist() == before[0].splits.tolist()
        assert store.get_state("privacy_ledger") == before[1]
        store.put_state("rounds", b"1")  # still writable: versions carried over
    assert not list(store_path.parent.glob("*.rotating*"))


def test_header_has_no_secret(store_path: Path) -> None:
    header = peek_header(store_path)
    assert KeyRecipe.from_dict(json.loads(header["key_recipe"])) == KeyRecipe()
    raw = store_path.read_bytes() + witness_path(store_path).read_bytes()
    assert KEY not in raw and KEY.hex().encode() not in raw
    assert not any(p.name.endswith(("-wal", "-shm")) for p in store_path.parent.iterdir())
