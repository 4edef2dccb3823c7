"""Issue 14, item 1: an outsider holding only the CA certificate controls nothing.

A real `fedrec server` (host 0.0.0.0, an operator port) runs on loopback with one registered device.
The outsider, with an FLWR_HOME holding nothing but a connection to the CA, tries every Control API
call of the issue against every port the server listens on beyond loopback: each is refused, and
the SuperLink's registrations are unchanged. The operator's calls through `fedrec operator` (the
operator certificate) work, another certificate from the same CA does not open the operator door,
and the registered device still trains the run to the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from test_deployment import RUN_CONFIG, _read, tiny_fleet, wait_exit, wait_for_text

from fedrec.client.store_key import store_key
from fedrec.common.certs import create_device_keys
from fedrec.common.config import FederationConfig
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.processes import alive, descendants, flower_env, free_port
from fedrec.common.store import DeviceStore
from fedrec.server.flower_app import write_app

FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]
ROUNDS = 2


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket these processes listen on (Linux /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add((_scope(address), int(port, 16)))
    return found


def _scope(address: str) -> str:
    """/proc/net/tcp* hex addresses (little-endian words): any, loopback, or the hex itself."""
    if set(address) == {"0"}:
        return "any"
    if (len(address) == 8 and address.endswith("7F")) or address == "0" * 24 + "01000000":
        return "loopback"
    return address


def outsider(home: Path, port: int, *args: str) -> tuple[int, str]:
    """``flwr ARGS`` with an FLWR_HOME that knows the server's address and the CA, nothing more."""
    env = {**flower_env(home), "COLUMNS": "250"}
    done = subprocess.run(
        ["flwr", *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def operator(certs: Path, port: int, *args: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    argv = [*FEDREC, "operator", "--server", f"127.0.0.1:{port}", "--certs", str(certs), *extra, *args]
    env = {**flower_env(), "COLUMNS": "250"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def node_ids(certs: Path, port: int) -> set[str]:
    """The SuperNodes the SuperLink admits (Flower keeps revoked ones listed as "unregistered")."""
    done = operator(certs, port, "supernode", "list", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    reply = json.loads(done.stdout[done.stdout.index("{") :])
    return {str(node["node-id"]) for node in reply["nodes"] if node.get("status") != "unregistered"}


@pytest.mark.e2e
def test_outsider_with_the_ca_certificate_is_refused_everywhere(tmp_path):
    certs, out, fleet = tmp_path / "certs", tmp_path / "server", tmp_path / "fleet"
    init = [*FEDREC, "certs", "init", "--out", str(certs), "--ip", "127.0.0.1", "--devices", "2"]
    subprocess.run(init, check=True, capture_output=True, timeout=120)
    subprocess.run([*FEDREC, "certs", "operator", "--out", str(certs)], check=True, capture_output=True, timeout=120)
    attacker = create_device_keys(tmp_path / "attacker", "attacker").public_key
    (store, key_file), *_ = tiny_fleet(fleet)
    port, operator_port = free_port(), free_port()
    server_log = tmp_path / "server.log"
    argv = [*FEDREC, "server", "--certs", str(certs), "--devices", str(certs / "devices" / "device-0.pub")]
    argv += ["--out", str(out), "--host", "0.0.0.0", "--port", str(port), "--operator-port", str(operator_port)]
    argv += ["--rounds", str(ROUNDS), "--run-config", RUN_CONFIG, "--timeout", "240"]
    server = subprocess.Popen(
        argv, stdout=server_log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    started = [server]
    try:
        wait_for_text(server_log, "waiting for 1 device(s)", server)
        device_id = json.loads((out / "superlink" / "devices.json").read_text())["device-0"]

        # What listens beyond loopback: the devices' port and the operator port, nothing else.
        sockets = listening([server.pid, *descendants(server.pid)])
        assert {p for scope, p in sockets if scope != "loopback"} == {port, operator_port}, sockets
        assert {("any", port), ("any", operator_port)} <= sockets and len(sockets) > 2

        # The outsider: the CA certificate and an address, for each exposed port.
        app = write_app(tmp_path / "attacker-app", FederationConfig())
        for target in (port, operator_port):
            home = tmp_path / f"outsider-{target}"
            home.mkdir()
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "127.0.0.1:{target}"\n'
                f'root-certificates = "{certs / "ca.crt"}"\n'
            )
            refusal = "serves only the Fleet API" if target == port else "unavailable"
            for call in (
                ("ls", "x"),
                ("supernode", "list", "x"),
                ("supernode", "register", str(attacker), "x"),
                ("supernode", "unregister", device_id, "x"),
                ("run", str(app), "x"),
                ("stop", "1234", "x"),
            ):
                code, said = outsider(home, target, *call)
                assert code != 0 and refusal in said, (target, call, said)

        # Nothing changed: only device-0 is registered (seen by the operator, with the operator certificate).
        assert node_ids(certs, operator_port) == {device_id}

        # A certificate from the same CA that is not an operator's (the server's own) does not open the door.
        wrong = operator(
            certs, operator_port, "ls", extra=("--cert", str(certs / "server.crt"), "--key", str(certs / "server.pem"))
        )
        lines = wrong.stderr.strip().splitlines()
        assert wrong.returncode == 1 and len(lines) == 1 and "refused" in lines[0], wrong.stderr

        # The operator registers and revokes a device.
        done = operator(certs, operator_port, "supernode", "register", str(certs / "devices" / "device-1.pub"))
        assert done.returncode == 0, done.stdout + done.stderr
        (new_id,) = node_ids(certs, operator_port) - {device_id}
        done = operator(certs, operator_port, "supernode", "unregister", new_id)
        assert done.returncode == 0, done.stdout + done.stderr
        assert node_ids(certs, operator_port) == {device_id}

        # The legitimate device, through the devices' port, trains the run to the end.
        client_log = tmp_path / "client.log"
        client = subprocess.Popen(
            [*FEDREC, "client", "--store", str(store), "--key-file", str(key_file), "--superlink", f"127.0.0.1:{port}"]
            + ["--root-cert", str(certs / "ca.crt"), "--auth-key", str(certs / "devices" / "device-0")],
            stdout=client_log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(client)
        assert wait_exit(server, server_log) == 0, _read(server_log)[-3000:]
        assert "finished:completed" in _read(server_log)
        os.killpg(client.pid, signal.SIGTERM)
        client.wait(timeout=60)
        with DeviceStore.open(store, store_key(store, key_file)) as opened:
            assert int(opened.get_state("rounds")) == ROUNDS
            assert PrivacyLedger.from_json(opened.get_state("privacy_ledger")).steps > 0
    finally:
        tree = [pid for proc in started for pid in descendants(proc.pid)]
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        deadline = time.monotonic() + 30  # the reaper of a killed command ends its tree within its grace period
        while time.monotonic() < deadline and any(alive(pid) for pid in tree):
            time.sleep(0.5)
        assert not [pid for pid in tree if alive(pid)], "processes outlived the test"


def test_the_device_door_admits_exactly_flowers_fleet_routes():
    from fedrec.server.front import admitted, fleet_routes

    assert "/v1/fleet/pull-messages" in fleet_routes() and len(fleet_routes()) >= 10
    assert all(admitted("POST", path, fleet_only=True) for path in fleet_routes())
    for method, path in (
        ("POST", "/v1/control/list-runs"),
        ("POST", "/v1/fleet/../control/list-runs"),
        ("POST", "/v1/fleet/pull-messages/"),
        ("POST", "/v1/fleet"),
        ("GET", "/v1/fleet/pull-messages"),
        ("POST", "/v1/runtime/pull-messages"),
        ("GET", "/health"),
    ):
        assert not admitted(method, path, fleet_only=True), (method, path)
    assert admitted("POST", "/v1/control/list-runs", fleet_only=False)  # the operator door (mutual TLS)


def test_operator_certificates_are_for_tls_clients_and_the_loopback_ca_key_is_gone(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from fedrec.common.certs import create_ca, issue_operator_cert, issue_server_cert, loopback_pki

    create_ca(tmp_path)
    usage = x509.ExtendedKeyUsage

    def eku(path: Path) -> list:
        return list(x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(usage).value)

    operator_cert = issue_operator_cert(tmp_path)
    assert (
        eku(operator_cert.cert) == [ExtendedKeyUsageOID.CLIENT_AUTH] and operator_cert.key.stat().st_mode & 0o077 == 0
    )
    assert eku(issue_server_cert(tmp_path, [], ["127.0.0.1"]).cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    inner = loopback_pki(tmp_path / "loopback")
    assert inner.cert.is_file() and not (tmp_path / "loopback" / "ca.key").exists()


def test_operator_mistakes_are_one_line(cli, tmp_path):
    assert_one_line_error(cli("operator", "--server", "127.0.0.1:1", "ls"), "--ca-cert is required")
    assert_one_line_error(
        cli("operator", "--server", "127.0.0.1:1", "--certs", str(tmp_path), "ls"), "file not found (--ca-cert)"
    )
