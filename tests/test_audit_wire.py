"""The wire audit passes a log of dense global parameters and flags every way an update could leak."""

from __future__ import annotations

import copy
import json

import numpy as np

from fedrec.common.config import DeviceConfig, FederationConfig
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.model import ModelConfig, NeuMF, global_state
from fedrec.common.replies import EVALUATE_PRIVATE, TRAIN_PRIVATE
from fedrec.common.settings import to_nested
from fedrec.simulations.audit.wire import audit_wire, audit_wire_log

CFG = ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8, 4))
N_ITEMS = 30


def model_json(tmp_path, private: bool = True):
    path = tmp_path / "model.json"
    config = FederationConfig(device=DeviceConfig(model=CFG, n_items=N_ITEMS))
    privacy = DevicePrivacy(1.1, budget=8.0) if private else DevicePrivacy()
    path.write_text(json.dumps({"federation": to_nested(config), "privacy": to_nested(privacy)}))
    return path


def clean_entries(rounds: int = 2) -> list[dict]:
    """What the server logs: every global array, full shape, float32, npy payload of >= the dense size."""
    arrays = {
        name: {"shape": list(t.shape), "dtype": "float32", "bytes": int(np.prod(t.shape)) * 4 + 128}
        for name, t in global_state(NeuMF(1, N_ITEMS, CFG)).items()
    }
    return [
        {
            "round": r,
            "direction": d,
            "arrays": copy.deepcopy(arrays),
            "n_messages": 3,
            "bytes_total": 3 * sum(a["bytes"] for a in arrays.values()),
            "same_names_in_all": True,
        }
        for r in range(1, rounds + 1)
        for d in ("down", "up")
    ] + [
        {
            "round": rounds,
            "direction": "evaluate",
            "arrays": {},
            "n_messages": 3,
            "bytes_total": 0,
            "same_names_in_all": True,
            "metric_keys": list(EVALUATE_PRIVATE),
        }
    ]


def write_log(tmp_path, entries) -> object:
    path = tmp_path / "wire.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_clean_log_passes(tmp_path):
    result = audit_wire({"federated_dp": (write_log(tmp_path, clean_entries()), model_json(tmp_path))})
    assert result["ok"], result
    assert "item_emb.weight" in result["arrays"] and not any(n.startswith("user_emb") for n in result["arrays"])
    assert result["arms"]["federated_dp"]["rounds"] == 2


def leaks(tmp_path, mutate) -> list[str]:
    entries = clean_entries()
    last_up = [e for e in entries if e["direction"] == "up"][-1]
    mutate(last_up["arrays"], last_up)
    result = audit_wire_log(write_log(tmp_path, entries), model_json(tmp_path))
    assert not result["ok"]
    return result["problems"]


def test_user_embedding_on_the_wire_is_flagged(tmp_path):
    def add_user(arrays, entry):
        arrays["user_emb.weight"] = {"shape": [1, 8], "dtype": "float32", "bytes": 160}

    assert any("user_emb.weight" in p for p in leaks(tmp_path, add_user))


def test_sparse_item_rows_are_flagged(tmp_path):
    def only_touched_rows(arrays, entry):
        arrays["item_emb.weight"]["shape"] = [5, 8]  # the rows of the items the user touched

    assert any("full table" in p for p in leaks(tmp_path, only_touched_rows))


def test_item_ids_are_flagged(tmp_path):
    def ids(arrays, entry):
        arrays["item_emb.weight"]["dtype"] = "int64"

    assert any("int64" in p for p in leaks(tmp_path, ids))

    def extra(arrays, entry):
        arrays["touched_items"] = {"shape": [5], "dtype": "int64", "bytes": 168}

    assert any("touched_items" in p for p in leaks(tmp_path, extra))


def test_compressed_or_partial_updates_are_flagged(tmp_path):
    def small(arrays, entry):
        arrays["item_emb.weight"]["bytes"] = 200

    assert any("fewer than a dense" in p for p in leaks(tmp_path, small))

    def partial(arrays, entry):
        del arrays["output.bias"]

    assert any("missing" in p for p in leaks(tmp_path, partial))

    def mixed(arrays, entry):
        entry["same_names_in_all"] = False

    assert any("different array names" in p for p in leaks(tmp_path, mixed))


def test_reply_metrics_off_the_allow_list_are_flagged(tmp_path):
    entries = clean_entries()
    entries[1]["metric_keys"] = [*TRAIN_PRIVATE, "train-loss"]  # depends on the user's data
    entries[-1]["metric_keys"] = ["hr@10", "ndcg@10", "num-examples"]  # a one-device node's held-out rank
    result = audit_wire_log(write_log(tmp_path, entries), model_json(tmp_path, private=True))
    assert not result["ok"]
    assert any("round 1 up: reply metric(s) train-loss" in p for p in result["problems"])
    assert any("evaluate: reply metric(s) hr@10, ndcg@10" in p for p in result["problems"])
    # the same keys are what a non-private run is allowed to say
    plain = audit_wire_log(write_log(tmp_path, entries), model_json(tmp_path, private=False))
    assert plain["ok"], plain["problems"]


def test_no_log_is_not_ok():
    assert not audit_wire({})["ok"]
