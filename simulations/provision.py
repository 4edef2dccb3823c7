"""Write one encrypted device store per user of a split, plus a manifest with ids and counts (no content).

Layout of a provisioned dir::

    DIR/manifest.json          public: dataset, seed, n_items, item_ids (dense -> original), key recipe,
                               master key fingerprint, key file path (if one was given), and per device:
                               device_id, user_index (dense), user_id (original), store, counts per split
    DIR/stores/<device_id>.db  the device's store: train, validation and test events (dense item
                               indices, timestamps, ratings as values) kept apart by split
    DIR/stores/<device_id>.db.witness   the rollback witness, written at the first open (see docs/store.md)

Keys: in simulation every store key is ``derive_device_key(master, device_id)`` (HKDF over the device
id), so one master secret opens the whole simulated fleet. Real devices generate their own key
(``common.keys.create_key_file``) and no master exists.

API for the harness: ``provision(data, split, out, master_key)`` -> manifest path;
``fedrec.common.manifest.load_manifest(dir)`` reads the manifest back; ``device_key_for(master, device_id)`` -> store key;
``open_device(dir, master, device_id)`` -> open ``DeviceStore``.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.errors import DataError
from fedrec.common.files import writable_dir
from fedrec.common.keys import KeyRecipe, create_key_file, derive_device_key, key_id, load_key_file, passphrase_from_env
from fedrec.common.manifest import STORES, DeviceEntry, Manifest, is_provisioned, store_relpath
from fedrec.common.split import Split
from fedrec.common.store import DeviceStore, write_store
from fedrec.simulations.progress import progress


def device_id_for(user_index: int) -> str:
    return f"device-{user_index:05d}"


def device_key_for(master: bytes, device_id: str) -> bytes:
    """The store key of one simulated device."""
    return derive_device_key(master, device_id)


def _ratings(data: Interactions, users: np.ndarray, items: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Each split event's rating, found by its (user, item, timestamp) in the log (the split keeps no ratings)."""
    _, ts_rank = np.unique(np.concatenate([data.timestamps, stamps]), return_inverse=True)
    n_ts = int(ts_rank.max()) + 1

    def key(u: np.ndarray, i: np.ndarray, r: np.ndarray) -> np.ndarray:
        return (u.astype(np.int64) * data.n_items + i) * n_ts + r

    log_keys = key(data.users, data.items, ts_rank[: len(data)])
    order = np.argsort(log_keys, kind="stable")
    query = key(users, items, ts_rank[len(data) :])
    pos = np.searchsorted(log_keys, query, sorter=order)
    pos = np.minimum(pos, len(order) - 1)
    found = log_keys[order[pos]] == query
    return np.where(found, data.ratings[order[pos]], np.nan).astype(np.float32)


def _device_batches(split: Split, user: int, bounds: np.ndarray, values: dict[str, np.ndarray]) -> list[dict]:
    lo, hi = bounds[user], bounds[user + 1]
    batches = [
        dict(
            items=split.train_items[lo:hi],
            timestamps=split.train_timestamps[lo:hi],
            values=values["train"][lo:hi],
            split="train",
        )
    ]
    for name, items, stamps in (
        ("validation", split.val_items, split.val_timestamps),
        ("test", split.test_items, split.test_timestamps),
    ):
        if items[user] >= 0:
            batches.append(
                dict(
                    items=items[user : user + 1],
                    timestamps=stamps[user : user + 1],
                    values=values[name][user : user + 1],
                    split=name,
                )
            )
    return batches


def device_jobs(data: Interactions, split: Split, stores: Path) -> list[tuple[Path, str, list[dict]]]:
    """Per user (in dense order): store path, device id, and the ``append_events`` batches of all splits."""
    if np.any(np.diff(split.train_users) < 0):
        raise DataError("split train arrays are not grouped by user")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(split.train_users, minlength=split.n_users))])
    everyone = np.arange(split.n_users)
    values = {
        "train": _ratings(data, split.train_users, split.train_items, split.train_timestamps),
        "validation": _ratings(data, everyone, split.val_items, split.val_timestamps),
        "test": _ratings(data, everyone, split.test_items, split.test_timestamps),
    }
    return [
        (stores / f"{device_id_for(user)}.db", device_id_for(user), _device_batches(split, user, bounds, values))
        for user in range(split.n_users)
    ]


def _write_devices(jobs: list[tuple[Path, str, list[dict]]], master: bytes, recipe: KeyRecipe) -> int:
    """One worker's share: create each store and append all its splits in one transaction."""
    for path, device_id, batches in jobs:
        write_store(
            path, device_key_for(master, device_id), device_id, batches, recipe=recipe, durable=False, witness=False
        )
    return len(jobs)


def provision(
    data: Interactions,
    split: Split,
    out: str | Path,
    master_key: bytes,
    *,
    recipe: KeyRecipe | None = None,
    key_file: str | Path | None = None,
    workers: int = 2,
    show: bool = False,
) -> Path:
    """Write every user's store under ``out/stores`` and ``out/manifest.json``; returns the manifest path.

    ``recipe`` (public) says how ``master_key`` came from a key file or passphrase; ``per_device`` is
    forced on. ``key_file`` is recorded as a path only.
    """
    out = Path(out)
    stores = out / STORES
    if is_provisioned(out) or (stores.exists() and any(stores.iterdir())):
        raise DataError(f"{out}: already provisioned; choose a new --out or delete it")
    writable_dir(stores, "--out")
    recipe = KeyRecipe(**{**(recipe or KeyRecipe()).__dict__, "per_device": True})
    jobs = device_jobs(data, split, stores)
    devices = []
    for user, (path, device_id, batches) in enumerate(jobs):
        counts = {name: 0 for name in ("train", "validation", "test")}
        for batch in batches:
            counts[batch["split"]] += len(batch["items"])
        devices.append(DeviceEntry(device_id, user, _plain(data.user_ids[user]), str(path.relative_to(out)), counts))
    _run_jobs(jobs, master_key, recipe, workers, show)
    os.sync()  # one flush for all stores instead of one fsync each; the manifest comes after
    key = {
        "recipe": recipe.to_dict(),
        "master_key_id": key_id(master_key),
        "key_file": str(key_file) if key_file else None,
        "device_keys": "HKDF-SHA256(master, info='device:' + device_id) (simulation only)",
    }
    titles = {str(_plain(data.item_ids[i])): t for i, t in sorted(data.item_titles.items())}
    return Manifest(
        out,
        data.name,
        split.seed,
        split.n_users,
        split.n_items,
        tuple(_plain(i) for i in data.item_ids),
        titles,
        key,
        tuple(devices),
        duplicates_merged=data.n_merged,
    ).write()


def _run_jobs(jobs: list, master: bytes, recipe: KeyRecipe, workers: int, show: bool) -> None:
    parts = [jobs[i :: max(1, workers) * 8] for i in range(max(1, workers) * 8)]
    with progress(show) as bar:
        task = bar.add_task("provisioning devices", total=len(jobs))
        if workers <= 1:
            for part in parts:
                bar.advance(task, _write_devices(part, master, recipe))
            return
        with ProcessPoolExecutor(workers) as pool:
            for done in pool.map(_write_devices, parts, [master] * len(parts), [recipe] * len(parts)):
                bar.advance(task, done)


def _plain(value: Any) -> Any:
    """numpy scalars -> JSON values."""
    return value.item() if hasattr(value, "item") else value


def open_device(directory: str | Path, master: bytes, device_id: str) -> DeviceStore:
    """Open one simulated device's store (verifies it)."""
    return DeviceStore.open(Path(directory) / store_relpath(device_id), device_key_for(master, device_id))


def master_secret(out: Path, key_file: Path | None, passphrase_env: str | None) -> tuple[bytes, KeyRecipe, Path | None]:
    """The fleet master for ``fedrec data provision``: from a key file (created 0600 if missing), from a
    passphrase (scrypt, fresh salt kept in the manifest and every store), or by default a new key file
    ``out/master.key`` (convenient for simulation only: it sits next to what it protects)."""
    if key_file is not None and passphrase_env is not None:
        raise DataError("give either --key-file or --passphrase-env, not both")
    writable_dir(out, "--out")  # before a key file is made for a fleet that cannot be written
    if passphrase_env is not None:
        recipe = KeyRecipe.for_passphrase(per_device=True)
        return recipe.secret(passphrase=passphrase_from_env(passphrase_env)), recipe, None
    if key_file is None:
        key_file = out / "master.key"
    master = load_key_file(key_file) if key_file.exists() else create_key_file(key_file)
    return master, KeyRecipe(source="key", per_device=True), key_file
