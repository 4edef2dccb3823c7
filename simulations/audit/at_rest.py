"""What a thief who copies the device files learns: plaintext user data in the stores, readable keys.

Each device's store (and its SQLite side files) is searched for that user's own interactions in the
plain encodings of ``common.plaintext_scan`` (timestamps as distinctive values, item ids as runs in
time order and sorted, both as dense indices and as original ids). Key files must be 0600: readable by
the owner only. A clean scan rules out those encodings, not every conceivable one.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.errors import DataError
from fedrec.common.manifest import load_manifest
from fedrec.common.plaintext_scan import scan_file
from fedrec.common.split import Split

KEY_MODE = 0o600


def user_needles(data: Interactions, split: Split, user: int) -> tuple[list[int], list[list[int]]]:
    """One user's timestamps (values) and item sequences (time order and sorted; dense and original ids)."""
    mask = split.train_users == user
    items = split.train_items[mask][np.argsort(split.train_timestamps[mask], kind="stable")]
    stamps = split.train_timestamps[mask].tolist()
    for held, ts in ((split.val_items, split.val_timestamps), (split.test_items, split.test_timestamps)):
        if held[user] >= 0:
            items = np.append(items, held[user])
            stamps.append(int(ts[user]))
    sequences = []
    for ids in (items, data.item_ids[items]):
        ids = [int(x) for x in ids]
        sequences += [ids, sorted(ids)]
    return sorted(set(int(s) for s in stamps)), sequences


def key_file_problems(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            out.append(f"{path}: mode {mode:04o}, expected {KEY_MODE:04o} (group/other can read the key)")
    return out


def audit_stores(stores_dir: Path, data: Interactions, split: Split, show: Callable[[], object] | None = None) -> dict:
    """Scan every device store listed in ``stores_dir/manifest.json``; check every key file under it."""
    manifest = load_manifest(stores_dir)
    findings, scanned = [], 0
    for device in manifest.devices:
        user = device.user_index
        if user >= split.n_users:
            raise DataError(
                f"{stores_dir / 'manifest.json'}: device {device.device_id} has user_index {user}, "
                f"the run has {split.n_users} users"
            )
        path = manifest.store_path(device)
        if not path.exists():
            findings.append(f"{path}: listed in the manifest but missing")
            continue
        values, sequences = user_needles(data, split, user)
        for f in scan_file(path, values=values, sequences=sequences):
            findings.append(f"{f.path}: {f.kind} {list(f.values)} as {f.encoding} at byte {f.offset}")
        scanned += 1
        if show is not None:
            show()
    keys = sorted(stores_dir.rglob("*.key"))
    recorded = manifest.key.get("key_file")
    if recorded and Path(recorded).exists() and Path(recorded).resolve() not in {k.resolve() for k in keys}:
        keys.append(Path(recorded))
    key_problems = key_file_problems(keys)
    return {
        "ok": not findings and not key_problems and scanned > 0,
        "stores_dir": str(stores_dir),
        "devices_scanned": scanned,
        "plaintext_findings": len(findings),
        "findings": findings[:50],
        "key_files": [str(k) for k in keys],
        "key_file_problems": key_problems,
        "encodings": "decimal text; int32/int64 little and big endian at every offset",
    }
