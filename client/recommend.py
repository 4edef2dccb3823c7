"""`fedrec recommend`: top-k unseen items for this device's user, computed on the device."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedrec.client.device_round import EMBEDDING, DeviceRef, device_scores
from fedrec.client.store_key import store_key
from fedrec.common.datasets import load_dataset
from fedrec.common.errors import FedrecError
from fedrec.common.fetch import dataset_dir
from fedrec.common.manifest import Manifest, load_manifest
from fedrec.common.model_files import load_global_model
from fedrec.common.policy import model_refusal


@dataclass(frozen=True)
class Recommendation:
    rank: int  # 1 = the best, in the CSV of a harness run as on screen
    item_id: str  # the dataset's original id
    title: str | None
    score: float


def find_manifest(store: Path, manifest: Path | None) -> Path | None:
    """The provisioning manifest (item catalogue): given, or next to the store's directory."""
    if manifest is not None:
        if not manifest.is_file():
            raise FedrecError(f"{manifest}: manifest not found (--manifest)")
        return manifest
    for candidate in (store.parent / "manifest.json", store.parent.parent / "manifest.json"):
        if candidate.is_file():
            return candidate
    return None


def _dataset_titles(name: str) -> dict[str, str]:
    """Titles by original item id from a locally cached copy of the dataset, if this machine has one."""
    if not name or not dataset_dir(name).exists():
        return {}
    data = load_dataset(name)
    return {str(data.item_ids[i]): title for i, title in data.item_titles.items()}


def item_catalogue(manifest: Manifest | None, n_items: int) -> tuple[list[str], dict[int, str]]:
    """Dense index -> original item id and title (the manifest's catalogue, else the cached dataset's titles)."""
    if manifest is None:
        return [str(i) for i in range(n_items)], {}
    ids = [str(x) for x in manifest.item_ids]
    if len(ids) != n_items:
        raise FedrecError(
            f"{manifest.directory}/manifest.json: catalogue has {len(ids)} items but the model scores {n_items}"
        )
    by_id = manifest.item_titles or _dataset_titles(manifest.dataset)
    return ids, {i: by_id[x] for i, x in enumerate(ids) if x in by_id}


def recommend(
    store: Path,
    key_file: Path,
    model: Path,
    k: int = 10,
    manifest: Path | None = None,
    state_prefix: str | None = None,
    allow_models: str = "",
) -> list[Recommendation]:
    """Top-k unseen items for the store's user, served on the device as the federated evaluation serves it:
    its user row refitted on-device against the global model (the run's ``device.serving`` settings). A
    model of one's own loads only when ``allow_models`` names it (model.json comes from the server)."""
    state, info = load_global_model(model)
    refused = model_refusal(info.federation.device.model, allow_models)
    if refused:
        raise FedrecError(f"{model}: {refused}")
    device = (
        info.federation.device if state_prefix is None else replace(info.federation.device, state_prefix=state_prefix)
    )
    prefix, n_items = device.state_prefix, device.n_items
    ref = DeviceRef(store.stem, store, store_key(store, key_file))
    with ref.open() as opened:
        if opened.get_state(prefix + EMBEDDING) is None:
            raise FedrecError(
                f"{store}: no {prefix + EMBEDDING!r} in the store: the device has not trained "
                f"in this run (or give the --state-prefix it trained under)"
            )
        seen = np.asarray(opened.read_events(None).items, dtype=np.int64)
    scores = device_scores(ref, state, device)
    scores = scores.astype(np.float64)
    scores[seen] = -np.inf
    found = find_manifest(store, manifest)
    ids, titles = item_catalogue(load_manifest(found.parent) if found else None, n_items)
    top = np.argsort(-scores, kind="stable")[: min(k, int(np.isfinite(scores).sum()))]
    return [Recommendation(rank, ids[i], titles.get(int(i)), float(scores[i])) for rank, i in enumerate(top, start=1)]
