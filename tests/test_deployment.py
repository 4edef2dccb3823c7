"""End to end on loopback: `fedrec certs`, `fedrec server` (SuperLink, TLS, device auth) and three
`fedrec client` SuperNodes on provisioned stores train 2 rounds; a wrong CA and an unregistered key
are refused with one clear line. Every process is started in its own group and ended by PID.

The federation test is marked ``e2e`` (select with ``pytest -m e2e``); the fast tests below it check
the pieces that need no network. Set ``FEDREC_E2E_APP`` to run a Flower App directory other than this
project (its pyproject must list the run config keys used below), and ``FEDREC_DEVICE_PYTHON`` to run the
devices' `fedrec client` and `fedrec recommend` from another environment's Python (`make test` gives it
the device install: `pip install fedrec`, without the harness).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.client.recommend import item_catalogue
from fedrec.client.store_key import store_key
from fedrec.client.supernode import ClientSettings, check_inputs, explain_exit
from fedrec.common.certs import create_ca, issue_server_cert
from fedrec.common.config import FederationConfig, Fleet
from fedrec.common.datasets import from_raw
from fedrec.common.errors import FedrecError
from fedrec.common.keys import create_key_file, derive_device_key
from fedrec.common.manifest import Manifest, load_manifest
from fedrec.common.model import is_local
from fedrec.common.privacy import LIFETIME, LifetimeLedger, PrivacyLedger
from fedrec.common.processes import Children, alive, descendants, flower_env, free_port
from fedrec.common.settings import flatten
from fedrec.common.split import temporal_split
from fedrec.common.store import DeviceStore, rotate_key
from fedrec.server.launcher import connect_host, parse_run_config, run_config_arg
from fedrec.simulations.provision import provision

ROOT = Path(__file__).resolve().parent.parent
FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]
DEVICE = [os.environ.get("FEDREC_DEVICE_PYTHON", sys.executable), "-m", "fedrec.simulations.main"]
N_ITEMS, ROUNDS, STEPS = 20, 2, 2
RUN_CONFIG = (
    f'device.n_items={N_ITEMS} device.model.gmf_dim=4 device.model.mlp_dim=4 device.model.layers="8,4" '
    f"device.training.steps_per_epoch={STEPS} device.training.negatives=2 device.participation=1.0 "
    f"device.serving.refit_steps=3 privacy.epsilon=8.0 device.training.lr=0.05 device.seed=0"
)
WAIT = 240.0  # upper bound for any single wait; the whole run takes about a minute on 2 cores


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for_text(path: Path, text: str, proc, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while text not in _read(path):
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before printing {text!r}:\n{_read(path)[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} within {timeout:.0f} s:\n{_read(path)[-3000:]}")
        time.sleep(0.5)


def wait_exit(proc, log: Path, timeout: float = WAIT) -> int:
    try:
        return proc.wait(timeout=timeout)
    except Exception:
        raise AssertionError(f"still running after {timeout:.0f} s:\n{_read(log)[-3000:]}") from None


def tiny_provision(out: Path, firsts: tuple[int, ...] = (0, 10, 5)) -> tuple[dict, bytes]:
    """One user per entry of ``firsts`` (10 items each, from that offset) over 20 items with titles,
    provisioned as encrypted stores under one master key."""
    users, items, stamps = [], [], []
    for user, first in enumerate(firsts):  # together the three default users touch all 20 items
        users += [1000 + user] * 10
        items += [101 + (first + j) % N_ITEMS for j in range(10)]
        stamps += list(range(user * 100, user * 100 + 10))
    data = from_raw(
        "tiny",
        np.array(users),
        np.array(items),
        np.array(stamps, dtype=np.int64),
        np.full(len(users), 4.0, dtype=np.float32),
        titles={101 + i: f"Film {101 + i}" for i in range(N_ITEMS)},
    )
    out.mkdir(parents=True, exist_ok=True)
    master = create_key_file(out / "master.key")
    provision(data, temporal_split(data, 0), out, master)
    return load_manifest(out), master


def tiny_fleet(out: Path, firsts: tuple[int, ...] = (0, 10, 5)) -> list[tuple[Path, Path]]:
    """The tiny group with each store re-keyed onto its own key file, as real devices hold them."""
    manifest, master = tiny_provision(out, firsts)
    fleet = []
    for device in manifest.devices:
        store, key_file, device_id = manifest.store_path(device), out / f"{device.device_id}.key", device.device_id
        own = create_key_file(key_file)  # what `fedrec store rotate-key --new-key-file` does, in-process
        rotate_key(store, derive_device_key(master, device_id), derive_device_key(own, device_id))
        fleet.append((store, key_file))
    return fleet


@pytest.fixture()
def children():
    """Everything the test starts; on teardown each process group is ended by PID and nothing survives."""
    group = Children(flower_env())
    yield group
    below = [pid for proc in group.procs.values() for pid in descendants(proc.pid)]
    tops = [proc.pid for proc in group.procs.values()]
    group.stop(grace=15)
    time.sleep(1)
    survivors = [pid for pid in tops + below if alive(pid)]
    assert not survivors, f"processes left behind: {survivors}"


@pytest.mark.e2e
def test_tls_federation_with_authenticated_devices(tmp_path, children):
    certs, out, fleet = tmp_path / "certs", tmp_path / "server", tmp_path / "fleet"
    app = (
        ["--app", os.environ["FEDREC_E2E_APP"]] if "FEDREC_E2E_APP" in os.environ else []
    )  # default: the App written by `fedrec server`

    def fedrec(name: str, *args: str, python: list[str] = FEDREC):
        return children.start(name, [*python, *args], log=tmp_path / f"{name}.log", cwd=ROOT)

    # 1. PKI: a CA, a server certificate for localhost/127.0.0.1, four device keys (only three registered).
    proc = fedrec(
        "certs",
        "certs",
        "init",
        "--out",
        str(certs),
        "--server-name",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--devices",
        "4",
    )
    assert wait_exit(proc, tmp_path / "certs.log", 60) == 0, _read(tmp_path / "certs.log")
    create_ca(tmp_path / "other-ca")
    stores = tiny_fleet(fleet)

    # 2. The server: SuperLink with TLS + device auth, devices 0-2 registered, waits for three online.
    port = free_port()
    pubs = [str(certs / "devices" / f"device-{i}.pub") for i in range(3)]
    server = fedrec(
        "server",
        "server",
        "--certs",
        str(certs),
        *sum([["--devices", p] for p in pubs], []),
        "--out",
        str(out),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--rounds",
        str(ROUNDS),
        "--run-config",
        RUN_CONFIG,
        "--timeout",
        str(WAIT),
        *app,
    )
    server_log = tmp_path / "server.log"
    wait_for_text(server_log, "waiting for 3 device(s)", server)
    assert "registered device device-2" in _read(server_log)
    assert set(json.loads((out / "superlink" / "devices.json").read_text())) == {"device-0", "device-1", "device-2"}

    def client(name: str, store: Path, key: Path, ca: Path, auth: Path, *policy: str):
        return fedrec(
            name,
            "client",
            "--store",
            str(store),
            "--key-file",
            str(key),
            "--superlink",
            f"127.0.0.1:{port}",
            "--root-cert",
            str(ca),
            "--auth-key",
            str(auth),
            "--max-wait",
            "60",
            *policy,
            python=DEVICE,
        )

    # 3. Refusals: a device that trusts another CA, and a device whose key was never registered.
    store0, key0 = stores[0]
    wrong_ca = client("wrong-ca", store0, key0, tmp_path / "other-ca" / "ca.crt", certs / "devices" / "device-0")
    unregistered = client("unregistered", store0, key0, certs / "ca.crt", certs / "devices" / "device-3")
    for name, proc, expected in (
        ("wrong-ca", wrong_ca, "not signed by the CA"),
        ("unregistered", unregistered, "is not registered"),
    ):
        assert wait_exit(proc, tmp_path / f"{name}.log", 90) == 1
        last = _read(tmp_path / f"{name}.log").strip().splitlines()[-1]
        assert last.startswith("error:") and expected in last, last

    # 4. Three registered devices take part in two rounds of a server that asks for a budget of 8. Their owners
    # set their own limits: device-1 spends at most epsilon 7 in its lifetime, so it takes round 1 (5.79) and
    # refuses round 2 (8.00); device-2 accepts no less noise than 50, so it refuses every round. One log line
    # per refusal, and nothing spent on a refused round.
    policies = {1: ("--max-epsilon", "7"), 2: ("--min-noise-multiplier", "50")}
    for i, (store, key) in enumerate(stores):
        client(f"device-{i}", store, key, certs / "ca.crt", certs / "devices" / f"device-{i}", *policies.get(i, ()))
    assert wait_exit(server, server_log) == 0, _read(server_log)[-3000:]
    log = _read(server_log)
    assert "finished:completed" in log and "stopped all server processes" in log

    # 5. The final global model: global parameters only, the architecture beside it, a checkpoint per round.
    state = torch.load(out / "global_model.pt", weights_only=True)
    info = json.loads((out / "model.json").read_text())
    assert info["federation"]["device"]["n_items"] == N_ITEMS and state["item_emb.weight"].shape[0] == N_ITEMS
    noise = info["privacy"]["noise_multiplier"]
    assert noise > 0 and info["federation"]["device"]["model"]["layers"] == [8, 4]
    assert state and not any(is_local(k) for k in state)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == ROUNDS
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert all(torch.isfinite(v).all() for v in state.values()) and checkpoint.keys() == state.keys()

    # 6. Each device's ledger counts the rounds it took (record-level DP, the noise the server set), its embedding
    # stayed local; the lifetime ledger holds the same; the refusing devices say why in their logs.
    for (store, key), i, taken in zip(stores[:2], range(2), (ROUNDS, 1)):
        children.stop_one(f"device-{i}")
        with DeviceStore.open(store, store_key(store, key)) as opened:
            ledger = PrivacyLedger.from_json(opened.get_state("privacy_ledger"))
            lifetime = LifetimeLedger.from_json(opened.get_state(LIFETIME))
            assert int(opened.get_state("rounds")) == taken
            assert opened.get_state("user_embedding") is not None
        assert ledger.steps == taken * STEPS and ledger.history[0][0] == noise
        assert 0 < ledger.epsilon(1e-5) <= 8.0 + 1e-6
        assert lifetime.epsilon("record", 1e-5) == pytest.approx(ledger.epsilon(1e-5))
    assert ledger.epsilon(1e-5) <= 7.0 and "lifetime" in _read(tmp_path / "device-1.log")
    children.stop_one("device-2")
    with DeviceStore.open(stores[2][0], store_key(*stores[2])) as opened:
        assert opened.get_state("rounds") is None and opened.get_state("lifetime_ledger") is None
    assert "is below this device's minimum 50" in _read(tmp_path / "device-2.log")

    # 7. On-device recommendations: original item ids, nothing the user has seen (titles: test_device.py).
    store, key = stores[0]
    rec = fedrec(
        "recommend",
        "recommend",
        "--store",
        str(store),
        "--key-file",
        str(key),
        "--model",
        str(out / "global_model.pt"),
        "-k",
        "5",
        python=DEVICE,
    )
    assert wait_exit(rec, tmp_path / "recommend.log", 120) == 0, _read(tmp_path / "recommend.log")
    rows = [line.split() for line in _read(tmp_path / "recommend.log").splitlines() if line.strip()]
    assert len(rows) == 5 and [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    with DeviceStore.open(store, store_key(store, key)) as opened:
        seen = {101 + int(i) for i in opened.read_events(None).items}
    recommended = {int(r[1]) for r in rows}
    assert recommended <= set(range(101, 101 + N_ITEMS)) and not recommended & seen


# --- fast checks of the pieces (no processes) ----------------------------------------------------

SETTINGS = ClientSettings(Path("d.db"), Path("d.key"), "fl.example.org:9092", Path("ca.crt"), Path("dev"))


@pytest.mark.parametrize(
    "flower_says, expected",
    [
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate",
            "not signed by the CA in ca.crt",
        ),
        (
            "certificate verify failed: Hostname mismatch, certificate is not valid for 'fl.example.org'",
            "not valid for fl.example.org",
        ),
        (
            "Failed to initialize the connection to the SuperLink.\n[code: 2004] Failed to activate SuperNode.",
            "the public key of dev is not registered",
        ),
        ("httpx.ConnectError: [Errno 111] Connection refused", "cannot reach the SuperLink at fl.example.org:9092"),
        ("something new went wrong\nERROR : Exit Code: 999", "exited with code 1: ERROR : Exit Code: 999"),
    ],
)
def test_refusals_become_one_line(flower_says, expected):
    message = explain_exit(flower_says.splitlines(), SETTINGS, 1)
    assert expected in message and "\n" not in message


def test_catalogue_ids_and_titles(tmp_path):
    manifest = Manifest(tmp_path, "tiny", 0, 0, 3, (7, 9, 11), {"9": "Heat (1995)"}, {}, ())
    assert item_catalogue(manifest, 3) == (["7", "9", "11"], {1: "Heat (1995)"})
    with pytest.raises(FedrecError, match="catalogue has 3 items but the model scores 4"):
        item_catalogue(manifest, 4)
    assert item_catalogue(None, 2) == (["0", "1"], {})


def test_cli_connects_by_a_name_the_certificate_covers(tmp_path):
    create_ca(tmp_path)
    cert = issue_server_cert(tmp_path, ["fl.example.org"], ["10.0.0.5"]).cert
    assert connect_host(cert, "0.0.0.0") == "fl.example.org"
    assert connect_host(cert, "10.0.0.5") == "10.0.0.5"
    cert = issue_server_cert(tmp_path, ["fl.example.org", "localhost"], ["127.0.0.1"]).cert
    assert connect_host(cert, "0.0.0.0") == "127.0.0.1"


def test_run_config_round_trips_through_flowers_parser():
    config = parse_run_config(
        'device.model.layers="8,4" device.training.lr=0.05 server.rounds=2 '
        'server.out_dir="/tmp/a b" server.strategy.name="fedavg"'
    )
    assert config == {
        "device.model.layers": "8,4",
        "device.training.lr": 0.05,
        "server.rounds": 2,
        "server.out_dir": "/tmp/a b",
        "server.strategy.name": "fedavg",
    }
    assert parse_run_config(run_config_arg(config)) == config
    whole = flatten(FederationConfig())
    assert parse_run_config(run_config_arg(whole)) == whole
    with pytest.raises(FedrecError, match="--run-config"):
        parse_run_config("lr=")


def test_node_config_names_one_device_or_a_gateways_group(tmp_path):
    """`fedrec client --store/--key-file` and `--stores-dir/--master-key-file` both reach the ClientApp's stores."""
    from fedrec.client.fleet import node_devices

    manifest, master = tiny_provision(tmp_path)
    group = node_devices({"stores-dir": str(tmp_path), "master-key-file": str(tmp_path / "master.key")}, Fleet())
    assert [ref.device_id for ref in group] == [d.device_id for d in manifest.devices]
    store = manifest.store_path(manifest.devices[1])
    own = create_key_file(tmp_path / "own.key")
    rotate_key(store, derive_device_key(master, "device-00001"), derive_device_key(own, "device-00001"))
    (single,) = node_devices({"store": str(store), "key-file": str(tmp_path / "own.key")}, Fleet())
    for ref in (group[0], single):
        with DeviceStore.open(ref.path, ref.key) as opened:
            assert len(opened.read_events(None)) == 10
    simulated = node_devices(
        {"partition-id": 0, "num-partitions": 1}, Fleet(str(tmp_path), str(tmp_path / "master.key"))
    )
    # a deployed device's randomness comes from the OS; only a simulated one repeats from the run config
    assert not any(ref.seeded for ref in (*group, single)) and all(ref.seeded for ref in simulated)
    with pytest.raises(FedrecError, match="--store and --key-file .* or --stores-dir"):
        check_inputs(ClientSettings(store, None, "h:1", tmp_path / "ca", tmp_path / "k", stores_dir=tmp_path))


def test_a_deployed_private_device_draws_from_the_operating_system():
    """The server writes the run config: a deployed DP device must not derive any draw from it, nor fall
    back to a seeded torch generator."""
    from dataclasses import replace

    from fedrec.client.device_round import DeviceRef, round_randomness
    from fedrec.client.round_randomness import SecureRandomness, SimulatedRandomness
    from fedrec.common.config import DeviceConfig
    from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo

    private = DeviceInstructions(DeviceConfig(), DevicePrivacy(1.0, 1.0, 1e-5, 8.0), RoundInfo(3))
    deployed = DeviceRef("device-1", Path("x.db"), b"k")
    simulated = replace(deployed, seeded=True)
    secure = round_randomness(deployed, private)
    assert isinstance(secure, SecureRandomness) and not secure.reproducible
    with pytest.raises(FedrecError, match="seeded torch generator"):
        secure.torch_seed()
    first, second = (round_randomness(deployed, private).draws("noise").normal(64, 1.0) for _ in range(2))
    assert not torch.equal(first, second)
    again = round_randomness(simulated, private), round_randomness(simulated, private)
    assert all(isinstance(r, SimulatedRandomness) for r in again) and again[0].seed == again[1].seed
    plain = DeviceInstructions(DeviceConfig(), DevicePrivacy(), RoundInfo(3))
    plain_seeds = [round_randomness(ref, plain) for ref in (deployed, simulated)]
    assert all(isinstance(r, SimulatedRandomness) for r in plain_seeds)  # nothing rests on it without DP
    assert plain_seeds[0].torch_seed() == plain_seeds[1].torch_seed()
