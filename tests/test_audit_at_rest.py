"""At-rest audit: provisioned stores scan clean; a plaintext store and a readable key file do not."""

from __future__ import annotations

import json

from fedrec.common.keys import create_key_file
from fedrec.common.manifest import load_manifest
from fedrec.common.split import temporal_split
from fedrec.simulations.audit.at_rest import audit_stores, user_needles
from fedrec.simulations.provision import provision


def provisioned(tmp_path, data):
    stores = tmp_path / "stores"
    stores.mkdir()
    split = temporal_split(data, 0)
    provision(data, split, stores, create_key_file(stores / "master.key"), workers=1)
    return stores, split


def test_encrypted_stores_scan_clean(tmp_path, tiny):
    data = tiny.subset_users(5)
    stores, split = provisioned(tmp_path, data)
    result = audit_stores(stores, data, split)
    assert result["ok"], result
    assert result["devices_scanned"] == 5 and result["key_files"]


def test_plaintext_store_and_readable_key_are_flagged(tmp_path, tiny):
    data = tiny.subset_users(5)
    stores, split = provisioned(tmp_path, data)
    manifest = load_manifest(stores)
    leaky = stores / manifest.devices[2].store
    stamps, sequences = user_needles(data, split, 2)
    leaky.write_text(json.dumps({"history": sequences[0], "when": stamps}))  # what a naive app would store
    (stores / "master.key").chmod(0o644)
    result = audit_stores(stores, data, split)
    assert not result["ok"]
    assert result["plaintext_findings"] > 0 and all(str(leaky) in f for f in result["findings"])
    assert len(result["key_file_problems"]) == 1 and "0644" in result["key_file_problems"][0]
