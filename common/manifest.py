"""The provisioning manifest: the one reader and writer of ``manifest.json``.

A manifest is public: it lists a fleet's devices (ids, user index, per-split counts), the catalogue
(dense index -> original item id, titles) and how the store keys were derived, never any content.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedrec.common.errors import DataError
from fedrec.common.files import read_text

MANIFEST = "manifest.json"
FORMAT = "fedrec-provision"
STORES = "stores"


@dataclass(frozen=True)
class DeviceEntry:
    device_id: str
    user_index: int
    user_id: Any  # the dataset's original id (int or str, as the dataset has it)
    store: str  # relative to the manifest's directory
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    directory: Path
    dataset: str
    split_seed: int
    n_users: int
    n_items: int
    item_ids: tuple[Any, ...]
    item_titles: dict[str, str]  # original item id (as text) -> title
    key: dict[str, Any]
    devices: tuple[DeviceEntry, ...]
    duplicates_merged: int = 0  # repeated (user, item) rows merged into their latest (docs/protocol.md)

    def store_path(self, device: DeviceEntry) -> Path:
        return self.directory / device.store

    def write(self) -> Path:
        body = {"format": FORMAT, "version": 1, **asdict(self)}
        body.pop("directory")
        path = self.directory / MANIFEST
        path.write_text(json.dumps(body, indent=1, default=str))
        return path


def store_relpath(device_id: str) -> str:
    return f"{STORES}/{device_id}.db"


def is_provisioned(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def load_manifest(directory: str | Path) -> Manifest:
    """The manifest of a provisioned dir, checked for every field the code relies on."""
    directory = Path(directory)
    path = directory / MANIFEST
    text = read_text(path, "run `fedrec data provision` first")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{path}: not a fedrec provisioning manifest")
    try:
        devices = tuple(
            DeviceEntry(
                str(d["device_id"]),
                int(d["user_index"]),
                d.get("user_id"),
                str(d["store"]),
                {str(k): int(v) for k, v in dict(d.get("counts") or {}).items()},
            )
            for d in raw["devices"]
        )
        return Manifest(
            directory,
            str(raw.get("dataset", "")),
            int(raw.get("split_seed", 0)),
            int(raw.get("n_users", len(devices))),
            int(raw["n_items"]),
            tuple(raw["item_ids"]),
            {str(k): str(v) for k, v in dict(raw.get("item_titles") or {}).items()},
            dict(raw["key"]),
            devices,
            int(raw.get("duplicates_merged", 0)),
        )
    except KeyError as exc:
        raise DataError(f"{path}: field {exc.args[0]!r} missing") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: malformed manifest ({exc})") from None
