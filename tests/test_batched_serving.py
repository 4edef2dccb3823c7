"""The stacked serving refits (client/batched_serving.py) against the reference, one device at a time
(client/device_round.py::evaluate_device): the same ranks and the same stored serving rows."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from synthetic_data import synthetic_log

from fedrec.client.batched_serving import evaluate_batched
from fedrec.client.device_round import evaluate_device, serving_row
from fedrec.client.fleet import evaluate_fleet, node_devices
from fedrec.common.config import DeviceConfig, Fleet, PrivacyConfig
from fedrec.common.instructions import DeviceInstructions, RoundInfo, resolve_privacy
from fedrec.common.keys import create_key_file
from fedrec.common.model import ModelConfig, NeuMF, global_state
from fedrec.common.split import temporal_split
from fedrec.simulations.provision import provision

MODEL = ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8, 4), init_std=0.3)  # distinct scores, few ties


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet")
    data = synthetic_log(n_users=9, n_items=30, per_user=12)
    provision(data, temporal_split(data, 0), out, create_key_file(out / "master.key"))
    return out, data.n_items


def copies(fleet, tmp_path) -> tuple[DeviceConfig, DeviceConfig]:
    """The same fleet twice (a final evaluation writes serving rows into the stores)."""
    out, n_items = fleet
    devices = []
    for name in ("reference", "batched"):
        shutil.copytree(out, tmp_path / name)
        fleet_cfg = Fleet(str(tmp_path / name), str(tmp_path / name / "master.key"))
        devices.append(DeviceConfig(model=MODEL, n_items=n_items, fleet=fleet_cfg, seed=3, state_prefix="arm/"))
    return devices[0], devices[1]


@pytest.mark.parametrize("stage", ["validation", "test"])
@pytest.mark.parametrize("keep_serving", [False, True])
def test_stacked_refits_give_the_reference_ranks_and_rows(fleet, tmp_path, stage, keep_serving):
    reference, batched = (replace(d, eval_stage=stage) for d in copies(fleet, tmp_path))
    torch.manual_seed(1)
    params = global_state(NeuMF(1, reference.n_items, MODEL))
    ref_devices, batch_devices = node_devices({}, reference.fleet), node_devices({}, batched.fleet)
    expected = [evaluate_device(ref, params, reference, keep_serving) for ref in ref_devices]
    got = evaluate_batched(batch_devices, params, batched, keep_serving)
    assert got == expected and sum(r is not None for r in got) == len(got)
    for a, b in zip(ref_devices, batch_devices):
        row_a, row_b = serving_row(a, "arm/"), serving_row(b, "arm/")
        if keep_serving:
            assert row_a is not None and np.allclose(row_a, row_b, atol=1e-5), (row_a, row_b)
            assert np.abs(row_a).max() > 0
        else:
            assert row_a is None and row_b is None


def test_the_executor_setting_chooses_the_path_and_both_agree(fleet, tmp_path):
    reference, batched = copies(fleet, tmp_path)
    params = global_state(NeuMF(1, reference.n_items, MODEL))
    task = DeviceInstructions(replace(reference, executor="per_device"), round=RoundInfo(5, final=True))
    per_device = evaluate_fleet(node_devices({}, reference.fleet), params, task)
    stacked = evaluate_fleet(node_devices({}, batched.fleet), params, replace(task, device=batched))
    assert per_device == stacked and per_device["num-examples"] == 9


@pytest.mark.parametrize("executor", ["per_device", "batched"])
def test_private_final_evaluation_stores_the_plain_serving_rows_and_ranks_nothing(fleet, tmp_path, executor):
    """A private reply is a device count, so no rank is computed; the serving rows are the plain arm's."""
    plain, private = (replace(d, executor=executor) for d in copies(fleet, tmp_path))
    params = global_state(NeuMF(1, plain.n_items, MODEL))
    final = RoundInfo(30, final=True)
    dp = resolve_privacy(PrivacyConfig(), private, rounds=30, records=100, devices=9)
    plain_reply = evaluate_fleet(node_devices({}, plain.fleet), params, DeviceInstructions(plain, round=final))
    private_reply = evaluate_fleet(node_devices({}, private.fleet), params, DeviceInstructions(private, dp, final))
    assert private_reply == {"num-examples": plain_reply["num-examples"]} and "ndcg@10" in plain_reply
    for a, b in zip(node_devices({}, plain.fleet), node_devices({}, private.fleet)):
        row_a, row_b = serving_row(a, "arm/"), serving_row(b, "arm/")
        assert row_a is not None and np.array_equal(row_a, row_b)


def test_private_mid_run_evaluation_counts_devices_and_stores_nothing(fleet, tmp_path):
    _, private = copies(fleet, tmp_path)
    params = global_state(NeuMF(1, private.n_items, MODEL))
    dp = resolve_privacy(PrivacyConfig(), private, rounds=30, records=100, devices=9)
    reply = evaluate_fleet(node_devices({}, private.fleet), params, DeviceInstructions(private, dp, RoundInfo(10)))
    assert reply == {"num-examples": 9}
    assert all(serving_row(ref, "arm/") is None for ref in node_devices({}, private.fleet))
