"""Encrypted device store against plain SQLite with the same schema, measured in one run.

    FEDREC_DATA_DIR=... python -m bench.bench_store [--repeats 200] [--workers 2]

1. Open + decrypt + load a 1,000-event history (``DeviceStore.open`` + ``read_events``), as one chunk,
   as a provisioned store (three chunks) and as 100 appends of 10, against the same tables holding the
   same chunk bytes unencrypted (and, for scale, one plain row per event). Median of ``--repeats``.
2. Provision all ML-100K devices (943 stores), encrypted with ``--workers`` processes, against writing
   the same plain stores in the same way.
Targets: history load <= 5 ms; provisioning <= 10 s on 2 cores; encrypted read <= 3x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedrec.common.datasets import load_dataset
from fedrec.common.split import temporal_split
from fedrec.common.store import _SCHEMA, DeviceStore, decode_chunk, encode_chunk, make_chunk
from fedrec.simulations.provision import device_jobs, provision

KEY = bytes(range(32))
TARGET_LOAD_MS, TARGET_PROVISION_S, TARGET_RATIO = 5.0, 10.0, 3.0


def write_plain(path: Path, store_id: str, batches: list[dict]) -> None:
    """The store's tables and chunk encoding without encryption, built the way ``write_store`` builds."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "plain"), ("store_id", store_id)])
    chunks = [make_chunk(**b) for b in batches]
    for seq, chunk in enumerate(chunks, start=1):
        conn.execute("INSERT INTO chunks VALUES (?, x'', x'', ?)", (seq, encode_chunk(chunk)))
    conn.execute("INSERT INTO head VALUES (1, x'', x'', ?)", (json.dumps({"chunks": len(chunks)}).encode(),))
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def read_plain(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    dict(conn.execute("SELECT key, value FROM meta").fetchall())
    json.loads(conn.execute("SELECT ct FROM head").fetchone()[0])
    chunks = [decode_chunk(r[0]) for r in conn.execute("SELECT ct FROM chunks ORDER BY seq")]
    conn.close()
    return (
        np.concatenate([c.items for c in chunks]),
        np.concatenate([c.timestamps for c in chunks]),
        np.concatenate([c.values for c in chunks]),
    )


def write_rows(path: Path, items, stamps, values) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, item INTEGER, ts INTEGER, value REAL)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (item, ts, value) VALUES (?, ?, ?)", zip(items.tolist(), stamps.tolist(), values.tolist())
    )
    conn.execute("COMMIT")
    conn.close()


def read_rows(path: Path):
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    rows = conn.execute("SELECT item, ts, value FROM events ORDER BY seq").fetchall()
    conn.close()
    arr = np.array(rows, dtype=np.float64)
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2].astype(np.float32)


def read_encrypted(path: Path):
    with DeviceStore.open(path, KEY) as store:
        return store.read_events(None)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def history_rows(tmp: Path, repeats: int) -> list[tuple]:
    rng = np.random.default_rng(0)
    n = 1000
    items, stamps = rng.integers(0, 1682, n), np.sort(rng.integers(874_000_000, 893_000_000, n))
    values = rng.integers(1, 6, n).astype(np.float32)
    layouts = {
        "1 chunk": [slice(0, n)],
        "3 chunks (provisioned)": [slice(0, n - 2), slice(n - 2, n - 1), slice(n - 1, n)],
        "100 appends of 10": [slice(i, i + 10) for i in range(0, n, 10)],
    }
    out = []
    for name, parts in layouts.items():
        enc, plain = tmp / f"enc-{len(parts)}.db", tmp / f"plain-{len(parts)}.db"
        with DeviceStore.create(enc, KEY, "bench", durable=False) as store:
            for part in parts:
                store.append_events(items[part], stamps[part], values[part])
        write_plain(plain, "bench", [dict(items=items[p], timestamps=stamps[p], values=values[p]) for p in parts])
        assert read_encrypted(enc).items.tolist() == read_plain(plain)[0].tolist() == items.tolist()
        out.append(
            (name, median_ms(lambda: read_encrypted(enc), repeats), median_ms(lambda: read_plain(plain), repeats))
        )
    rows = tmp / "rows.db"
    write_rows(rows, items, stamps, values)
    assert read_rows(rows)[0].tolist() == items.tolist()
    out.append(("plain, one row per event (reference)", None, median_ms(lambda: read_rows(rows), repeats)))
    return out


def _plain_part(jobs: list) -> int:
    for path, device_id, batches in jobs:
        write_plain(path, device_id, batches)
    return len(jobs)


def provision_times(tmp: Path, workers: int) -> tuple[float, float, int]:
    data = load_dataset("ml-100k")
    split = temporal_split(data, 0)
    enc_dir, plain_dir = tmp / "fleet-enc", tmp / "fleet-plain"
    t0 = time.perf_counter()
    provision(data, split, enc_dir, os.urandom(32), workers=workers)
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (plain_dir / "stores").mkdir(parents=True)
    jobs = device_jobs(data, split, plain_dir / "stores")
    parts = [jobs[i :: workers * 8] for i in range(workers * 8)]
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_plain_part, parts)) == len(jobs)
    os.sync()
    plain_s = time.perf_counter() - t0
    return enc_s, plain_s, len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        history = history_rows(tmp, args.repeats)
        enc_s, plain_s, devices = provision_times(tmp, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(
        title=f"device store: open + decrypt + load 1,000 events (median of {args.repeats}), {os.cpu_count()} CPUs"
    )
    for column in ("case", "encrypted ms", "plain ms", "ratio", "targets"):
        table.add_column(column, justify="left" if column in ("case", "targets") else "right")
    for name, enc_ms, plain_ms in history:
        if enc_ms is None:
            table.add_row(name, "-", f"{plain_ms:.2f}", "-", "")
            continue
        ratio = enc_ms / plain_ms
        verdict = (
            f"<= {TARGET_LOAD_MS:g} ms: {'met' if enc_ms <= TARGET_LOAD_MS else 'MISSED'}; "
            f"<= {TARGET_RATIO:g}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'}"
        )
        table.add_row(name, f"{enc_ms:.2f}", f"{plain_ms:.2f}", f"{ratio:.2f}x", verdict)
    console.print(table)
    table = Table(title=f"provision {devices} ML-100K devices, {args.workers} worker processes")
    for column in ("encrypted s", "plain s", "ratio", "target"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{enc_s:.2f}",
        f"{plain_s:.2f}",
        f"{enc_s / plain_s:.2f}x",
        f"<= {TARGET_PROVISION_S:g} s: {'met' if enc_s <= TARGET_PROVISION_S else 'MISSED'}",
    )
    console.print(table)


if __name__ == "__main__":
    main()
