"""The encrypted on-device behaviour store: one SQLite file per device, AES-256-GCM on every row.

Layout (see docs/store.md for the threat model):
- ``meta``: plaintext header (format, schema version, store id, key fingerprint, key recipe). It holds
  no user content and is authenticated through the head's associated data.
- ``chunks``: the event history, append-only. One row per append; its ciphertext is a whole batch of
  events (split, event type, items, timestamps, values), so item ids, timestamps and ratings never
  appear in the file in any encoding. Associated data = store id + table + position (seq).
- ``state``: named local state (user embedding, privacy ledger, round counters), rewritten in place;
  associated data = store id + table + name + version.
- ``head``: one encrypted record with a generation counter, the number of chunks and the version and
  digest of every state row, rewritten in the same transaction as every change. It makes deletions,
  reorderings and partial rollbacks visible; a whole-file rollback is only visible against a copy of
  the generation kept outside the file (the ``.witness`` sidecar or the caller's ``min_generation``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from numpy.typing import ArrayLike

from fedrec.common.errors import FedrecError
from fedrec.common.keys import KEY_BYTES, KeyRecipe, hkdf, key_id

FORMAT = "fedrec-device-store"
SCHEMA_VERSION = 1
SPLITS = ("train", "validation", "test")
_SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
_CHUNK_HEADER = struct.Struct("<BBHI")  # chunk format, split code, event-type length, number of events
_CHUNK_FORMAT = 1
_NONCE_BYTES = 12

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), origin BLOB NOT NULL, nonce BLOB NOT NULL,"
    " ct BLOB NOT NULL)",
    "CREATE TABLE chunks (seq INTEGER PRIMARY KEY, origin BLOB NOT NULL, nonce BLOB NOT NULL, ct BLOB NOT NULL)",
    "CREATE TABLE state (name TEXT PRIMARY KEY, version INTEGER NOT NULL, origin BLOB NOT NULL,"
    " nonce BLOB NOT NULL, ct BLOB NOT NULL)",
)


class StoreError(FedrecError):
    """Base of every refusal to open or change a device store."""


class StoreNotFoundError(StoreError):
    """No store at the path."""


class NotAStoreError(StoreError):
    """The file is not a fedrec device store (or of a schema version this code cannot read)."""


class WrongKeyError(StoreError):
    """The key does not match the store's key fingerprint."""


class TamperedError(StoreError):
    """A ciphertext, nonce, header field or SQLite page was changed."""


class DeletedRowError(StoreError):
    """A row the head accounts for is missing."""


class ReorderedRowError(StoreError):
    """A row holds data authenticated for another position of the same store (rows swapped or moved)."""


class ForeignRowError(StoreError):
    """A row was copied in from another store."""


class TruncatedError(StoreError):
    """The file is shorter than its own SQLite header says."""


class RollbackError(StoreError):
    """The store, or part of it, is older than what was already seen."""


@dataclass(frozen=True)
class Events:
    """A batch of events as numpy arrays, in append order (not re-sorted by time)."""

    items: np.ndarray  # int64, dense item indices
    timestamps: np.ndarray  # int64, unix seconds
    event_types: np.ndarray  # object array of str, e.g. "rating", "click"
    values: np.ndarray  # float32, NaN where the event has no value
    splits: np.ndarray | None = None  # str, "train" / "validation" / "test"

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class _Chunk:
    split: str
    event_type: str
    items: np.ndarray
    timestamps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class _Head:
    generation: int
    chunks: int
    state: dict  # name -> [version, digest hex]


def encode_chunk(chunk: _Chunk) -> bytes:
    etype = chunk.event_type.encode("utf-8")
    return b"".join(
        (
            _CHUNK_HEADER.pack(_CHUNK_FORMAT, _SPLIT_CODE[chunk.split], len(etype), len(chunk.items)),
            etype,
            chunk.items.astype("<i8").tobytes(),
            chunk.timestamps.astype("<i8").tobytes(),
            chunk.values.astype("<f4").tobytes(),
        )
    )


def decode_chunk(blob: bytes) -> _Chunk:
    fmt, split, etype_len, n = _CHUNK_HEADER.unpack_from(blob)
    if fmt != _CHUNK_FORMAT or split >= len(SPLITS):
        raise NotAStoreError(f"unknown chunk format {fmt}")
    at = _CHUNK_HEADER.size
    etype = blob[at : at + etype_len].decode("utf-8")
    at += etype_len
    items = np.frombuffer(blob, dtype="<i8", count=n, offset=at)
    stamps = np.frombuffer(blob, dtype="<i8", count=n, offset=at + 8 * n)
    values = np.frombuffer(blob, dtype="<f4", count=n, offset=at + 16 * n)
    return _Chunk(SPLITS[split], etype, items, stamps, values)


def make_chunk(
    items: ArrayLike,
    timestamps: ArrayLike,
    values: ArrayLike | None = None,
    event_type: str = "rating",
    split: str = "train",
) -> _Chunk:
    """Validate one append's arguments into a chunk (equal-length 1-D arrays, known split)."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if not isinstance(event_type, str) or not event_type or len(event_type.encode("utf-8")) > 255:
        raise ValueError("event_type must be a non-empty string of at most 255 bytes")
    items = _int_array(items, "items")
    stamps = _int_array(timestamps, "timestamps")
    if values is None:
        vals = np.full(len(items), np.nan, dtype=np.float32)
    else:
        vals = np.asarray(values, dtype=np.float32).reshape(-1)
    if not len(items) == len(stamps) == len(vals):
        raise ValueError(f"items, timestamps and values differ in length ({len(items)}, {len(stamps)}, {len(vals)})")
    return _Chunk(split, event_type, items, stamps, vals)


def _int_array(raw: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, not {arr.dtype}")
    return arr.astype(np.int64)


def _digest(nonce: bytes, ct: bytes) -> str:
    return hashlib.sha256(nonce + ct).hexdigest()[:32]


def _origin(store_id: str) -> bytes:
    """A short public tag of the store id on every row, so a row from another store is named as such."""
    return hashlib.sha256(b"fedrec/origin/" + store_id.encode("utf-8")).digest()[:8]


class _Sealer:
    """AES-256-GCM with a fresh random 96-bit nonce per row and associated data naming the row's place."""

    def __init__(self, key: bytes, store_id: str) -> None:
        self._aead = AESGCM(hkdf(key, b"fedrec/store/data/v1"))
        self._prefix = b"fedrec-store/1\x00" + store_id.encode("utf-8") + b"\x00"

    def seal(self, place: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plaintext, self._prefix + place)

    def open(self, place: bytes, nonce: bytes, ct: bytes) -> bytes | None:
        try:
            return self._aead.decrypt(bytes(nonce), bytes(ct), self._prefix + place)
        except (InvalidTag, ValueError, TypeError):
            return None


def _chunk_place(seq: int) -> bytes:
    return b"chunks\x00" + seq.to_bytes(8, "big")


def _state_place(name: str, version: int) -> bytes:
    return b"state\x00" + name.encode("utf-8") + b"\x00" + version.to_bytes(8, "big")


def _head_place(meta: Mapping[str, str]) -> bytes:
    canonical = json.dumps(dict(sorted(meta.items())), separators=(",", ":")).encode("utf-8")
    return b"head\x00" + hashlib.sha256(canonical).digest()


def witness_path(path: str | Path) -> Path:
    """The sidecar that remembers the newest generation seen, so that restoring an old copy of the file is noticed."""
    path = Path(path)
    return path.with_name(path.name + ".witness")


def sqlite_files(path: Path) -> list[Path]:
    """The database file and the SQLite side files that belong to it."""
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _check_file(path: Path) -> None:
    """Refuse a missing, foreign or truncated file before SQLite sees it (SQLite would read a short file as empty pages)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise StoreNotFoundError(f"{path}: no such store") from None
    if path.is_dir():
        raise NotAStoreError(f"{path}: is a directory, not a device store (give one .db file)")
    if size == 0:
        raise TruncatedError(f"{path}: file is empty (truncated)")
    try:
        with path.open("rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the store ({exc.strerror})") from None
    magic = b"SQLite format 3\x00"
    if not (header.startswith(magic) or magic.startswith(header)):
        raise NotAStoreError(f"{path}: not a fedrec device store (not an SQLite file)")
    if len(header) < 100:
        raise TruncatedError(f"{path}: file is {size} bytes, shorter than an SQLite header (truncated)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]
    if size % page_size or (header_valid and size < pages * page_size):
        raise TruncatedError(f"{path}: file is {size} bytes, its SQLite header says {pages * page_size} (truncated)")


def _connect(path: Path, create: bool, durable: bool = True) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the witness records its generation, so a power cut cannot make
    # the witness newer than the file (which would read as a rollback).
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    # Copy every commit into the database file at once: the -wal then never holds the only copy of a
    # commit for longer than the commit itself, so losing it (deleted after a crash) loses at most that one.
    conn.execute("PRAGMA wal_autocheckpoint=1")
    return conn


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """SQLite's own errors in a damaged file become one clear store error."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(f"{path}: store is locked by another process") from None
        raise TamperedError(f"{path}: SQLite cannot read the file ({exc}); it was altered or damaged") from None
    except sqlite3.DatabaseError as exc:
        raise TamperedError(f"{path}: SQLite cannot read the file ({exc}); it was altered or damaged") from None


class DeviceStore:
    """One device's encrypted history and local state. Use as a context manager; one writer at a time."""

    def __init__(self, path: Path, conn: sqlite3.Connection, key: bytes, meta: dict[str, str]) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._meta = meta
        self.store_id: str = meta["store_id"]
        self.recipe = header_recipe(meta, path)
        self._sealer = _Sealer(key, self.store_id)
        self._origin = _origin(self.store_id)
        self._chunks: list[_Chunk] = []
        self._state: dict[str, bytes] = {}
        self._head = _Head(0, 0, {})
        self._head_digest = ""

    # ----------------------------------------------------------------- opening and creating
    @classmethod
    def create(
        cls, path: str | Path, key: bytes, store_id: str, *, recipe: KeyRecipe | None = None, durable: bool = True
    ) -> DeviceStore:
        """A new empty store; refuses to overwrite. ``recipe`` records (publicly) how the key was made."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: a file already exists; refusing to overwrite it")
        write_store(path, key, store_id, [], recipe=recipe, durable=durable)
        return cls.open(path, key, durable=durable)

    @classmethod
    def open(
        cls, path: str | Path, key: bytes, *, witness: bool = True, min_generation: int = 0, durable: bool = True
    ) -> DeviceStore:
        """Open and verify every row; raises the specific ``StoreError`` subclass for what is wrong.

        ``witness``: compare with (and update) the ``.witness`` sidecar. ``min_generation``: refuse a
        store older than a generation the caller keeps somewhere it trusts.
        """
        path = Path(path)
        if len(key) != KEY_BYTES:
            raise WrongKeyError(f"{path}: wrong key (a store key is {KEY_BYTES} bytes, got {len(key)})")
        _check_file(path)
        with _sqlite_errors(path):
            conn = _connect(path, create=False, durable=durable)
            try:
                meta = read_meta(conn, path)
                if key_id(key) != meta["key_id"]:
                    raise WrongKeyError(f"{path}: wrong key for store {meta['store_id']!r}")
                store = cls(path, conn, key, meta)
                store._load()
            except BaseException:
                conn.close()
                raise
        try:
            if store.generation < min_generation:
                raise RollbackError(
                    f"{path}: store is at generation {store.generation}, older than the trusted {min_generation}"
                )
            if witness:
                store._check_witness()
        except BaseException:
            store.close()
            raise
        return store

    def __enter__(self) -> DeviceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close; SQLite folds the WAL back into the file so no side file is left behind."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ----------------------------------------------------------------- reading
    @property
    def generation(self) -> int:
        """Counts committed changes; only grows (key rotation included)."""
        return self._head.generation

    @property
    def schema_version(self) -> int:
        return int(self._meta["schema_version"])

    def read_events(self, split: str | None = "train") -> Events:
        """Events of one split (None: all), in append order."""
        if split is not None and split not in _SPLIT_CODE:
            raise ValueError(f"split must be one of {SPLITS} or None, not {split!r}")
        chunks = [c for c in self._chunks if split is None or c.split == split]
        if not chunks:
            empty = np.empty(0, dtype=np.int64)
            return Events(
                empty, empty.copy(), np.empty(0, dtype=str), np.empty(0, dtype=np.float32), np.empty(0, dtype=str)
            )
        counts = [len(c.items) for c in chunks]
        return Events(
            items=np.concatenate([c.items for c in chunks]),
            timestamps=np.concatenate([c.timestamps for c in chunks]),
            # object, not numpy's fixed-width str, which drops trailing NUL characters of a type
            event_types=np.repeat(np.array([c.event_type for c in chunks], dtype=object), counts),
            values=np.concatenate([c.values for c in chunks]),
            splits=np.repeat(np.array([c.split for c in chunks]), counts),
        )

    def get_state(self, name: str) -> bytes | None:
        return self._state.get(name)

    def state_names(self) -> list[str]:
        return sorted(self._state)

    def counts(self) -> dict[str, int]:
        """Events per split."""
        out = dict.fromkeys(SPLITS, 0)
        for c in self._chunks:
            out[c.split] += len(c.items)
        return out

    def info(self) -> dict:
        """What ``fedrec store inspect`` shows without ``--decrypt``: structure and counts, no content."""
        return {
            "path": str(self.path),
            "format": self._meta["format"],
            "schema_version": self.schema_version,
            "store_id": self.store_id,
            "generation": self.generation,
            "chunks": len(self._chunks),
            "events": self.counts(),
            "state": {name: len(value) for name, value in sorted(self._state.items())},
            "key_recipe": self.recipe.to_dict(),
        }

    def verify(self) -> None:
        """Full integrity check from disk: SQLite's page check, then every row decrypted and accounted for."""
        with _sqlite_errors(self.path):
            problems = [r[0] for r in self._require_open().execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise TamperedError(f"{self.path}: SQLite integrity check failed: {problems[0]}")
            self._load()

    # ----------------------------------------------------------------- writing
    def append_events(
        self,
        items: ArrayLike,
        timestamps: ArrayLike,
        values: ArrayLike | None = None,
        event_type: str = "rating",
        split: str = "train",
    ) -> None:
        """Append one batch of events in one transaction (one encrypted chunk)."""
        self.append_batches(
            [dict(items=items, timestamps=timestamps, values=values, event_type=event_type, split=split)]
        )

    def append_batches(self, batches: Iterable[Mapping]) -> None:
        """Several ``append_events`` argument sets in one transaction (provisioning writes all splits at once)."""
        chunks = [make_chunk(**batch) for batch in batches]
        chunks = [c for c in chunks if len(c.items)]
        if chunks:
            self._commit(chunks, {})

    def put_state(self, name: str, value: bytes) -> None:
        """Replace one named state value (encrypted, versioned, one transaction)."""
        self.put_states({name: value})

    def put_states(self, values: Mapping[str, bytes]) -> None:
        """Replace several state values in one transaction (one fsync): e.g. embedding, ledger and round
        counter after a round, so they can never disagree."""
        if not all(isinstance(name, str) and name for name in values):
            raise ValueError("state names must be non-empty strings")
        if values:
            self._commit([], {name: bytes(value) for name, value in values.items()})

    def _commit(self, chunks: list[_Chunk], state: dict[str, bytes]) -> None:
        conn = self._require_open()
        with _sqlite_errors(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT nonce, ct FROM head WHERE id = 1").fetchone()
                if row is None or _digest(row[0], row[1]) != self._head_digest:
                    raise StoreError(f"{self.path}: store changed since it was opened (another writer?); reopen it")
                head_state = dict(self._head.state)
                for offset, chunk in enumerate(chunks):
                    seq = self._head.chunks + 1 + offset
                    nonce, ct = self._sealer.seal(_chunk_place(seq), encode_chunk(chunk))
                    conn.execute("INSERT INTO chunks VALUES (?, ?, ?, ?)", (seq, self._origin, nonce, ct))
                for name, value in state.items():
                    version = head_state.get(name, [0])[0] + 1
                    nonce, ct = self._sealer.seal(_state_place(name, version), value)
                    conn.execute(
                        "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?)", (name, version, self._origin, nonce, ct)
                    )
                    head_state[name] = [version, _digest(nonce, ct)]
                head = _Head(self._head.generation + 1, self._head.chunks + len(chunks), head_state)
                digest = _write_head(conn, self._sealer, self._meta, self._origin, head, insert=False)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._chunks.extend(chunks)
        self._state.update(state)
        self._head, self._head_digest = head, digest
        _write_witness(self.path, self.store_id, head.generation, digest)

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._conn

    # ----------------------------------------------------------------- verification
    def _load(self) -> None:
        """Decrypt and account for every row; classify the first problem found."""
        conn = self._require_open()
        row = conn.execute("SELECT origin, nonce, ct FROM head WHERE id = 1").fetchone()
        if row is None:
            raise DeletedRowError(f"{self.path}: the head record is missing (deleted)")
        head = self._open_head(conn, *row)
        chunk_rows = conn.execute("SELECT seq, origin, nonce, ct FROM chunks ORDER BY seq").fetchall()
        state_rows = conn.execute("SELECT name, version, origin, nonce, ct FROM state ORDER BY name").fetchall()
        chunks = self._open_chunks(chunk_rows, head)
        state = self._open_state(state_rows, head)
        self._chunks, self._state, self._head = chunks, state, head
        self._head_digest = _digest(row[1], row[2])

    def _open_head(self, conn: sqlite3.Connection, origin: bytes, nonce: bytes, ct: bytes) -> _Head:
        plain = self._sealer.open(_head_place(self._meta), nonce, ct)
        if plain is None:
            origins = {r[0] for r in conn.execute("SELECT DISTINCT origin FROM chunks")} | {origin}
            if origins == {origin} and origin != self._origin:
                raise TamperedError(f"{self.path}: the store id in the header was altered")
            if origin != self._origin:
                raise ForeignRowError(f"{self.path}: the head record was copied from another store")
            raise TamperedError(f"{self.path}: the header or head record was altered (authentication failed)")
        raw = json.loads(plain)
        return _Head(int(raw["generation"]), int(raw["chunks"]), dict(raw["state"]))

    def _open_chunks(self, rows: list, head: _Head) -> list[_Chunk]:
        seqs = [r[0] for r in rows]
        plains = {}
        for seq, origin, nonce, ct in rows:
            if origin != self._origin:
                raise ForeignRowError(f"{self.path}: chunk row {seq} was copied from another store")
            plain = self._sealer.open(_chunk_place(seq), nonce, ct)
            if plain is None:
                for other in sorted(set(seqs) | set(range(1, head.chunks + 1))):
                    if other != seq and self._sealer.open(_chunk_place(other), nonce, ct) is not None:
                        raise ReorderedRowError(
                            f"{self.path}: chunk row {seq} holds data written for position {other} (rows reordered)"
                        )
                raise TamperedError(f"{self.path}: chunk row {seq} fails authentication (bytes altered)")
            plains[seq] = plain
        missing = sorted(set(range(1, head.chunks + 1)) - set(seqs))
        if missing:
            raise DeletedRowError(f"{self.path}: chunk row(s) {missing[:5]} missing (deleted)")
        extra = sorted(set(seqs) - set(range(1, head.chunks + 1)))
        if extra:
            raise RollbackError(
                f"{self.path}: chunk row(s) {extra[:5]} are newer than the head record (head rolled back)"
            )
        return [decode_chunk(plains[seq]) for seq in sorted(plains)]

    def _open_state(self, rows: list, head: _Head) -> dict[str, bytes]:
        places = {name: version for name, version, *_ in rows}
        places.update({name: v[0] for name, v in head.state.items() if name not in places})
        out = {}
        for name, version, origin, nonce, ct in rows:
            if origin != self._origin:
                raise ForeignRowError(f"{self.path}: state row {name!r} was copied from another store")
            plain = self._sealer.open(_state_place(name, version), nonce, ct)
            if plain is None:
                for other, other_version in places.items():
                    if other != name and self._sealer.open(_state_place(other, other_version), nonce, ct) is not None:
                        raise ReorderedRowError(
                            f"{self.path}: state row {name!r} holds the value of {other!r} (rows swapped)"
                        )
                raise TamperedError(f"{self.path}: state row {name!r} fails authentication (bytes altered)")
            expected = head.state.get(name)
            if expected is None or expected[0] < version:
                raise RollbackError(f"{self.path}: state {name!r} is newer than the head record (head rolled back)")
            if expected[0] > version:
                raise RollbackError(
                    f"{self.path}: state {name!r} is version {version}, the head expects {expected[0]} (rolled back)"
                )
            if expected[1] != _digest(nonce, ct):
                raise TamperedError(f"{self.path}: state row {name!r} does not match the head record")
            out[name] = plain
        missing = sorted(set(head.state) - set(out))
        if missing:
            raise DeletedRowError(f"{self.path}: state row(s) {missing} missing (deleted)")
        return out

    def _check_witness(self) -> None:
        """Compare with the newest generation recorded outside the file, then record ours."""
        wpath = witness_path(self.path)
        try:
            seen = json.loads(wpath.read_text())
            seen_id, seen_gen, seen_head = seen["store_id"], int(seen["generation"]), seen["head"]
        except FileNotFoundError:
            seen = None
        except (ValueError, KeyError, TypeError):
            raise RollbackError(
                f"{wpath}: unreadable witness; delete it only if you trust this copy of the store"
            ) from None
        if seen is not None:
            if seen_id != self.store_id:
                raise RollbackError(
                    f"{self.path}: the witness belongs to store {seen_id!r}, the file is "
                    f"{self.store_id!r} (file replaced?)"
                )
            if self.generation < seen_gen:
                raise RollbackError(
                    f"{self.path}: store is at generation {self.generation} but generation "
                    f"{seen_gen} was already seen (rolled back to an older copy)"
                )
            if self.generation == seen_gen and seen_head != self._head_digest:
                raise RollbackError(f"{self.path}: store diverged from the generation {seen_gen} already seen")
            if self.generation == seen_gen:
                return
        _write_witness(self.path, self.store_id, self.generation, self._head_digest)


def read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    """The plaintext header; refuses files that are not stores or of an unknown schema version."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError:
        raise NotAStoreError(f"{path}: not a fedrec device store (no meta table)") from None
    if meta.get("format") != FORMAT:
        raise NotAStoreError(f"{path}: not a fedrec device store (format {meta.get('format')!r})")
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise NotAStoreError(
            f"{path}: store schema version {meta.get('schema_version')} is not supported (this fedrec reads "
            f"{SCHEMA_VERSION})"
        )
    for field in ("store_id", "key_id", "key_recipe"):
        if field not in meta:
            raise TamperedError(f"{path}: header field {field!r} is missing")
    _parse_recipe(meta["key_recipe"], path)
    return meta


def _parse_recipe(text: str, path: Path) -> KeyRecipe:
    try:
        return KeyRecipe.from_dict(json.loads(text))
    except (ValueError, FedrecError):  # JSONDecodeError is a ValueError; from_dict raises KeyFileError
        raise TamperedError(
            f"{path}: header field 'key_recipe' is unreadable (altered or damaged): "
            "the store cannot say how its key is made"
        ) from None


def header_recipe(header: Mapping[str, str], path: str | Path) -> KeyRecipe:
    """The key recipe of a header from ``peek_header`` (already checked there)."""
    return _parse_recipe(header["key_recipe"], Path(path))


def peek_header(path: str | Path) -> dict[str, str]:
    """The plaintext header without a key (store id, key recipe): what the CLI needs to find the key."""
    path = Path(path)
    _check_file(path)
    with _sqlite_errors(path):
        # read-write even to read: a read-only connection to a WAL file cannot remove the -wal/-shm on close
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10.0)
        try:
            return read_meta(conn, path)
        finally:
            conn.close()


def _write_head(
    conn: sqlite3.Connection, sealer: _Sealer, meta: Mapping[str, str], origin: bytes, head: _Head, insert: bool
) -> str:
    plain = json.dumps({"generation": head.generation, "chunks": head.chunks, "state": head.state}).encode()
    nonce, ct = sealer.seal(_head_place(meta), plain)
    if insert:
        conn.execute("INSERT INTO head VALUES (1, ?, ?, ?)", (origin, nonce, ct))
    else:
        conn.execute("UPDATE head SET origin = ?, nonce = ?, ct = ? WHERE id = 1", (origin, nonce, ct))
    return _digest(nonce, ct)


def _write_witness(path: Path, store_id: str, generation: int, head_digest: str) -> None:
    """Atomic replace; no fsync needed: a witness that lags the file is always safe."""
    wpath = witness_path(path)
    tmp = wpath.with_name(wpath.name + ".tmp")
    tmp.write_text(json.dumps({"store_id": store_id, "generation": generation, "head": head_digest}))
    os.replace(tmp, wpath)


def _build(
    path: Path,
    key: bytes,
    store_id: str,
    recipe: KeyRecipe,
    generation: int,
    chunks: list[_Chunk],
    state: dict[str, tuple[int, bytes]],
    durable: bool,
    witness: bool = True,
    on_row: Callable[[int], None] | None = None,
) -> None:
    """Write a whole store in one transaction (creation and key rotation): it exists complete or not at all."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a store key is {KEY_BYTES} bytes, got {len(key)}")
    if not store_id:
        raise ValueError("store_id must be non-empty")
    meta = {
        "format": FORMAT,
        "schema_version": str(SCHEMA_VERSION),
        "store_id": store_id,
        "key_id": key_id(key),
        "key_recipe": json.dumps(recipe.to_dict(), sort_keys=True),
    }
    sealer, origin = _Sealer(key, store_id), _origin(store_id)
    # Built under a rollback journal without syncs, then switched to WAL and synced once: ~20x faster to
    # create than WAL from the start, and a crash mid-way leaves no valid store (no head), never a wrong one.
    conn = sqlite3.connect(f"file:{path}?mode=rwc", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        for seq, chunk in enumerate(chunks, start=1):
            nonce, ct = sealer.seal(_chunk_place(seq), encode_chunk(chunk))
            conn.execute("INSERT INTO chunks VALUES (?, ?, ?, ?)", (seq, origin, nonce, ct))
            if on_row is not None:
                on_row(seq)
        head_state = {}
        for name, (version, value) in sorted(state.items()):
            nonce, ct = sealer.seal(_state_place(name, version), value)
            conn.execute("INSERT INTO state VALUES (?, ?, ?, ?, ?)", (name, version, origin, nonce, ct))
            head_state[name] = [version, _digest(nonce, ct)]
        digest = _write_head(conn, sealer, meta, origin, _Head(generation, len(chunks), head_state), insert=True)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    if durable:
        _fsync_path(path)
    if witness:
        _write_witness(path, store_id, generation, digest)


def write_store(
    path: str | Path,
    key: bytes,
    store_id: str,
    batches: Iterable[Mapping],
    *,
    recipe: KeyRecipe | None = None,
    durable: bool = True,
    witness: bool = True,
) -> None:
    """Create a complete store holding ``batches`` (``append_events`` arguments) in one go, without opening it
    afterwards: what bulk provisioning needs. ``durable=False`` skips the fsync (the caller syncs once);
    ``witness=False`` leaves the witness to the first open (nothing older than generation 1 exists to restore)."""
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path}: a file already exists; refusing to overwrite it")
    chunks = [c for c in (make_chunk(**batch) for batch in batches) if len(c.items)]
    _build(
        path,
        key,
        store_id,
        recipe or KeyRecipe(),
        generation=1,
        chunks=chunks,
        state={},
        durable=durable,
        witness=witness,
    )


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rotation_step(stage: str) -> None:
    """Named points inside ``rotate_key``; the crash tests replace this to kill the process there."""


def rotate_key(path: str | Path, old_key: bytes, new_key: bytes, recipe: KeyRecipe | None = None) -> int:
    """Re-encrypt a store under a new key, atomically: the new file is built beside the old one and renamed
    over it, so a crash leaves the old store or the new one, never a mix. Returns the new generation."""
    path = Path(path)
    tmp = path.with_name(path.name + ".rotating")
    for leftover in sqlite_files(tmp):
        leftover.unlink(missing_ok=True)
    with DeviceStore.open(path, old_key) as old:
        generation = old.generation + 1
        state = {name: (old._head.state[name][0], value) for name, value in old._state.items()}
        _build(
            tmp,
            new_key,
            old.store_id,
            recipe or old.recipe,
            generation,
            list(old._chunks),
            state,
            durable=True,
            witness=False,
            on_row=lambda seq: _rotation_step("row"),
        )
        store_id = old.store_id
    if any(p.exists() for p in sqlite_files(path)[1:] + sqlite_files(tmp)[1:]):
        raise StoreError(f"{path}: another process holds the store open; rotation abandoned, old key still valid")
    _rotation_step("before-replace")
    os.replace(tmp, path)
    _fsync_path(path.parent)
    _rotation_step("after-replace")
    with DeviceStore.open(path, new_key) as new:
        if new.store_id != store_id or new.generation != generation:
            raise StoreError(f"{path}: rotated store does not read back as written")
    return generation
