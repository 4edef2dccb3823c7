"""End to end on loopback, over TLS with authenticated devices: `fedrec server` with
``server.secure_aggregation.enabled`` and four `fedrec client --require-secure-aggregation`
SuperNodes. One device is killed once it has the round's masked-vector request (after the key
sharing): SecAgg+ rebuilds its masks from the other three's shares and the round completes with the
sum of three. Nothing the server writes holds a device's update: the wire log shows one aggregate and
the masked vectors' sizes, and the bytes of a survivor's update (replayed from a copy of its store:
without DP a device's randomness repeats from the run config) occur nowhere in the server's
directory, while the server's own final model does.
``FEDREC_SECAGG_KILL=sigkill`` kills the device's processes with SIGKILL (a crash) instead of SIGTERM.

The second test runs the shared-noise mechanism ``distributed`` (federated_ddp) the same way: the
item histogram in round 1, one DP-SGD step in round 2 with a device killed after the key sharing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_data import synthetic_log
from test_deployment import FEDREC, ROOT, WAIT, _read, children, wait_exit, wait_for_text  # noqa: F401

from fedrec.client.device_round import DeviceRef
from fedrec.client.fleet import train_fleet
from fedrec.client.store_key import store_key
from fedrec.common.config import FederationConfig
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo, resolve_privacy
from fedrec.common.keys import create_key_file
from fedrec.common.manifest import load_manifest
from fedrec.common.model import PRIOR
from fedrec.common.policy import SIMULATED
from fedrec.common.processes import descendants, free_port
from fedrec.common.settings import from_flat
from fedrec.common.split import temporal_split
from fedrec.server.federation import initial_state
from fedrec.server.launcher import parse_run_config
from fedrec.server.secure_aggregation import SECURE_DIRECTION
from fedrec.simulations.provision import provision

DEVICES, N_ITEMS, VICTIM = 4, 20, 3
RUN_CONFIG = (
    f'device.n_items={N_ITEMS} device.model.gmf_dim=4 device.model.mlp_dim=4 device.model.layers="8,4" '
    "device.training.steps_per_epoch=2 device.training.negatives=2 device.participation=1.0 "
    'device.serving.refit_steps=1 privacy.mechanism="none" device.item_row_average=false '
    "device.training.lr=0.05 device.seed=0 "
    "server.secure_aggregation.enabled=true server.secure_aggregation.reconstruction_threshold=3 "
    "server.secure_aggregation.max_weight=64.0 "  # without DP a node weighs its example count
    "server.secure_aggregation.timeout=180.0 server.strategy.min_nodes=3"
)


def fleet(out: Path) -> list[Path]:
    out.mkdir(parents=True)
    data = synthetic_log(n_users=DEVICES, n_items=N_ITEMS, per_user=8)
    provision(data, temporal_split(data, 0), out, create_key_file(out / "master.key"))
    return [load_manifest(out).store_path(d) for d in load_manifest(out).devices]


def replayed_update(store: Path, key_file: Path) -> dict[str, torch.Tensor]:
    """What this device trained in round 1, recomputed from a copy of its store (training is seeded)."""
    cfg = from_flat(FederationConfig, {**parse_run_config(RUN_CONFIG), "server.rounds": 1}, "test", complete=False)
    task = DeviceInstructions(cfg.device, resolve_privacy(cfg.privacy, cfg.device, 1), RoundInfo(1, False))
    ref = DeviceRef(store.stem, store, store_key(store, key_file), durable=False)
    state, _ = train_fleet([ref], initial_state(cfg.device), task, SIMULATED)
    return state


def start_federation(
    tmp_path: Path,
    children,  # noqa: F811
    stores: list[Path],
    run_config: str,
    rounds: int,
    *device_flags: str,
    owners: Mapping[int, Sequence[str]] = {},
):
    """`fedrec certs init`, `fedrec server` and one `fedrec client --require-secure-aggregation` per store
    (with ``device_flags``, and ``owners[i]``: device i's own policy flags)."""
    certs, out = tmp_path / "certs", tmp_path / "server"
    key_file = tmp_path / "fleet" / "master.key"  # a provisioned store's key derives from it and its id

    def fedrec(name: str, *args: str):
        return children.start(name, [*FEDREC, *args], log=tmp_path / f"{name}.log", cwd=ROOT)

    proc = fedrec("certs", "certs", "init", "--out", str(certs), "--ip", "127.0.0.1", "--devices", str(DEVICES))
    assert wait_exit(proc, tmp_path / "certs.log", 60) == 0, _read(tmp_path / "certs.log")
    port = free_port()
    server_flags = {"--certs": certs, "--out": out, "--host": "127.0.0.1", "--port": port, "--rounds": rounds}
    server_flags.update({"--run-config": run_config, "--timeout": WAIT})
    server = fedrec("server", "server", *argv(server_flags))
    wait_for_text(tmp_path / "server.log", f"waiting for {DEVICES} device(s)", server)
    for i, store in enumerate(stores):
        flags = {"--store": store, "--key-file": key_file, "--superlink": f"127.0.0.1:{port}", "--max-wait": 60}
        flags.update({"--root-cert": certs / "ca.crt", "--auth-key": certs / "devices" / f"device-{i}"})
        fedrec(f"device-{i}", "client", *argv(flags), "--require-secure-aggregation", *device_flags, *owners.get(i, ()))
    return server, out


def kill_when_received(tmp_path: Path, children, server, train_messages: int) -> None:  # noqa: F811
    """Kill the victim device once it has received its ``train_messages``-th train message."""
    victim_log = tmp_path / f"device-{VICTIM}.log"
    deadline = time.monotonic() + WAIT
    while _read(victim_log).count("Receiving: train message") < train_messages:
        assert time.monotonic() < deadline and server.poll() is None, _read(tmp_path / "server.log")[-3000:]
        time.sleep(0.2)
    if os.environ.get("FEDREC_SECAGG_KILL") == "sigkill":  # a crash: no goodbye to the SuperLink
        victim = children.procs[f"device-{VICTIM}"]
        for pid in [victim.pid, *descendants(victim.pid)]:
            os.kill(pid, signal.SIGKILL)
    else:  # SIGTERM, as an OS ends an app: the SuperNode leaves the federation at once
        children.stop_one(f"device-{VICTIM}")


def argv(flags: dict) -> list[str]:
    return [str(x) for pair in flags.items() for x in pair]


def occurs(needle: bytes, directory: Path) -> list[str]:
    return [str(p) for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.e2e
def test_secure_aggregation_survives_a_killed_device(tmp_path, children):  # noqa: F811
    stores = fleet(tmp_path / "fleet")
    shutil.copytree(tmp_path / "fleet", tmp_path / "before")  # for the replay
    started = time.monotonic()
    server, out = start_federation(tmp_path, children, stores, RUN_CONFIG, 1, "--allow-non-private")
    server_log = tmp_path / "server.log"
    kill_when_received(tmp_path, children, server, 3)  # the third is the masked-vector request

    assert wait_exit(server, server_log) == 0, _read(server_log)[-3000:]
    elapsed = time.monotonic() - started
    log = _read(server_log)
    assert "finished:completed" in log
    wire = [json.loads(line) for line in (out / "wire.jsonl").read_text().splitlines()]
    (secure,) = [e for e in wire if e["direction"] == SECURE_DIRECTION]
    assert [s["nodes"] for s in secure["stages"]] == [4, 4, 3, 3] and secure["revealed"], secure
    assert secure["masked_vectors"] == 3 and secure["masked_bytes_total"] > 0
    assert [e["n_messages"] for e in wire if e["direction"] == "up"] == [1]  # one aggregate, no device reply
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["train"]["devices"] == 3 and torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 1

    # A survivor's update, as it would have crossed the wire without SecAgg+, is nowhere on the server.
    survivor = tmp_path / "before" / stores[0].relative_to(tmp_path / "fleet")
    update = replayed_update(survivor, tmp_path / "before" / "master.key")
    sent = initial_state(from_flat(FederationConfig, parse_run_config(RUN_CONFIG), "test", complete=False).device)
    name = "item_emb.weight"
    trained = update[name].numpy().astype(np.float32)
    delta = trained.astype(np.float64) - sent[name].numpy().astype(np.float64)
    assert np.abs(delta).max() > 0
    # control: a table the server does keep (the final model) is found by the same byte search
    final = torch.load(out / "global_model.pt", weights_only=True)[name].numpy().astype(np.float32)
    assert occurs(final.tobytes()[:64], out), "control: the server's own final model is found"
    assert occurs(trained.tobytes()[:64], out) == [] and occurs(delta.tobytes()[:64], out) == []
    print(f"secure round with one device killed: {elapsed:.0f} s, stages {secure['stages']}", file=sys.stderr)


@pytest.mark.e2e
def test_a_device_refuses_a_reconstruction_threshold_below_its_owners(tmp_path, children):  # noqa: F811
    """The server asks for SecAgg+ with reconstruction threshold 3; device-3's owner accepts no less than 4
    (`fedrec client --min-secagg-threshold 4`), so it refuses at the setup stage with one log line and
    sends nothing. The round goes on with the three others (Flower 1.42's workflow alone would lose it:
    each survivor fails the unmask stage asking for shares of a node that never sent keys)."""
    stores = fleet(tmp_path / "fleet")
    owners = {VICTIM: ("--min-secagg-threshold", "4")}
    server, out = start_federation(tmp_path, children, stores, RUN_CONFIG, 1, "--allow-non-private", owners=owners)
    server_log = tmp_path / "server.log"
    assert wait_exit(server, server_log) == 0, _read(server_log)[-3000:]
    assert "finished:completed" in _read(server_log)
    wire = [json.loads(line) for line in (out / "wire.jsonl").read_text().splitlines()]
    (secure,) = [e for e in wire if e["direction"] == SECURE_DIRECTION]
    assert [s["nodes"] for s in secure["stages"]] == [3, 3, 3, 3] and secure["revealed"], secure
    assert secure["masked_vectors"] == 3
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["train"]["devices"] == 3
    log = _read(tmp_path / f"device-{VICTIM}.log").splitlines()
    refusals = [line for line in log if "below this device's minimum" in line]
    assert len(refusals) == 1 and "SecAgg+ threshold 3 is below this device's minimum 4" in refusals[0], refusals


@pytest.mark.e2e
def test_shared_noise_rounds_under_secure_aggregation(tmp_path, children):  # noqa: F811
    """federated_ddp deployed, with its model (NeuMF with the tower, clipped apart from the rows): four
    devices each add 1/sqrt(3) of the noise (a quarter of the fleet tolerated missing: m_min 3, and SecAgg+
    unmasks no sum of fewer than 3 nodes). Round 1 reveals the noisy item histogram, round 2 one noisy
    gradient sum, with a device killed after the key sharing: the sum of the three others still carries
    the full noise and is applied. The server only ever held the two sums."""
    stores = fleet(tmp_path / "fleet")
    manifest = load_manifest(tmp_path / "fleet")
    records = sum(d.counts["train"] for d in manifest.devices)
    run_config = (
        f'device.n_items={N_ITEMS} device.model.kind="neumf" device.model.gmf_dim=4 device.model.mlp_dim=4 '
        'device.model.layers="8,4" device.model.item_bias=false device.model.prior=true device.participation=1.0 '
        f"device.fleet.devices={DEVICES} device.fleet.train_records={records} device.training.negatives=2 "
        "device.shared_noise.min_devices=0 device.shared_noise.dropout_tolerance=0.25 device.shared_noise.dense_clip=0.5 "
        'device.shared_noise.feature_init="" device.shared_noise.table_lr=5.0 device.shared_noise.dense_lr=5.0 '
        'device.serving.refit_steps=1 privacy.mechanism="distributed" privacy.epsilon=8.0 device.seed=0 '
        "server.secure_aggregation.enabled=true server.secure_aggregation.reconstruction_threshold=3 "
        "server.secure_aggregation.clipping_range=256.0 server.secure_aggregation.quantization_range=1048576 "
        "server.secure_aggregation.timeout=180.0 server.strategy.min_nodes=3"
    )
    server, out = start_federation(tmp_path, children, stores, run_config, rounds=2)
    kill_when_received(tmp_path, children, server, 7)  # round 2's masked-vector request (4 messages a round)
    server_log = tmp_path / "server.log"
    assert wait_exit(server, server_log) == 0, _read(server_log)[-3000:]
    assert "finished:completed" in _read(server_log)

    wire = [json.loads(line) for line in (out / "wire.jsonl").read_text().splitlines()]
    secure = [e for e in wire if e["direction"] == SECURE_DIRECTION]
    assert [[s["nodes"] for s in e["stages"]] for e in secure] == [[4, 4, 4, 4], [4, 4, 3, 3]]
    assert all(e["revealed"] and e["masked_vectors"] in (4, 3) and e["sum_headroom"] < 0.5 for e in secure)
    assert [e["n_messages"] for e in wire if e["direction"] == "up"] == [1, 1]  # two sums, no device reply
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["train"]["devices"] for r in rounds] == [4, 3]  # both rounds applied (3 >= min_devices)
    assert max(rounds[1]["epsilons"]) <= 8.0 + 1e-9
    final_state = torch.load(out / "global_model.pt", weights_only=True)
    assert final_state[PRIOR].std() > 0  # round 1's histogram became the prior
    final = final_state["item_emb.weight"]
    initial = initial_state(
        from_flat(FederationConfig, parse_run_config(run_config), "test", complete=False).device,
        DevicePrivacy(mechanism="distributed"),
    )
    start = initial["item_emb.weight"]
    assert (final[:, :4] - start[:, :4]).abs().max() > 0  # round 2's noisy step moved the item rows
    assert (final_state["tower.0.weight"] - initial["tower.0.weight"]).abs().max() > 0  # and the tower
