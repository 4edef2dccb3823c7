"""Issue 14, the soak test: 10 SuperNodes over loopback TLS, 20 rounds, a device and the server killed.

`fedrec server` and ten `fedrec client` processes (one device each) run a tiny DP model. Mid-run one
device's `fedrec client` gets SIGKILL and is started again; later the server gets SIGKILL, its whole
tree must vanish and free the port, and the same command is started again: it resumes from
``checkpoint.pt``. The run must complete with rounds 1..20 each logged once, every device's privacy
ledger must count exactly the rounds its store says it trained, every update the server aggregated
must be one of those rounds, and no process of the test may survive it.

The server asks 2 of the 10 SuperNodes per round (``node_fraction=0.2``): every message starts a
ClientApp process (Flower 1.42, one per message), and that start-up (torch, Opacus: about 4 s of CPU
each) is what the test's time is made of.
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
from test_deployment import RUN_CONFIG, STEPS, _read, tiny_fleet, wait_for_text

from fedrec.client.store_key import store_key
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.processes import alive, descendants, free_port, port_in_use
from fedrec.common.store import DeviceStore

FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]
DEVICES, ROUNDS, PER_ROUND = 10, 20, 2
SOAK_CONFIG = (
    f"{RUN_CONFIG} server.eval_every={ROUNDS} server.strategy.node_fraction={PER_ROUND / DEVICES} "
    f"server.strategy.node_fraction_evaluate={PER_ROUND / DEVICES} server.strategy.min_nodes={PER_ROUND}"
)
WAIT = 900.0  # a hang guard per stage, not a speed target: the suite runs on more workers than cores


class Processes:
    """Every process the test starts, and every descendant ever seen below them (to prove none survive)."""

    def __init__(self, logs: Path):
        self.logs, self.top, self.seen = logs, {}, set()

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("a")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.top[name] = proc
        return proc

    def look(self) -> None:
        for proc in self.top.values():
            if proc.poll() is None:
                self.seen.update(descendants(proc.pid))

    def sigkill(self, name: str) -> list[int]:
        """SIGKILL the command alone (not its group): its reaper must end what it started."""
        proc = self.top[name]
        tree = descendants(proc.pid)
        self.seen.update(tree)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return tree

    def survivors(self, pids, timeout: float = 40.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.5)
        return [p for p in pids if alive(p)]

    def end(self) -> list[int]:
        self.look()
        for proc in self.top.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.top.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        return self.survivors(self.seen | {p.pid for p in self.top.values()})


def rounds_logged(out: Path) -> list[dict]:
    path = out / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_rounds(out: Path, at_least: int, procs: Processes, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while len(rounds_logged(out)) < at_least:
        procs.look()
        assert server.poll() is None, _read(log)[-3000:]
        assert time.monotonic() < deadline, f"round {at_least} not reached:\n{_read(log)[-3000:]}"
        time.sleep(0.5)


@pytest.mark.e2e
def test_ten_devices_twenty_rounds_survive_a_killed_device_and_a_killed_server(tmp_path):
    started = time.monotonic()
    certs, out = tmp_path / "certs", tmp_path / "server"
    init = [*FEDREC, "certs", "init", "--out", str(certs), "--ip", "127.0.0.1", "--devices", str(DEVICES)]
    subprocess.run(init, check=True, capture_output=True, timeout=120)
    stores = tiny_fleet(tmp_path / "fleet", tuple((2 * u) % 20 for u in range(DEVICES)))
    port = free_port()
    server_argv = [*FEDREC, "server", "--certs", str(certs), "--out", str(out), "--host", "127.0.0.1"]
    server_argv += ["--port", str(port), "--rounds", str(ROUNDS), "--run-config", SOAK_CONFIG, "--timeout", str(WAIT)]
    procs = Processes(tmp_path)
    server_log = tmp_path / "server.log"

    def client(i: int) -> subprocess.Popen:
        store, key = stores[i]
        argv = [*FEDREC, "client", "--store", str(store), "--key-file", str(key), "--superlink", f"127.0.0.1:{port}"]
        argv += ["--root-cert", str(certs / "ca.crt"), "--auth-key", str(certs / "devices" / f"device-{i}")]
        return procs.start(f"device-{i}", argv)

    try:
        server = procs.start("server", server_argv)
        wait_for_text(server_log, f"waiting for {DEVICES} device(s)", server, WAIT)
        for i in range(DEVICES):
            client(i)

        # A device dies (SIGKILL) mid-run: its SuperNode goes with it; started again, it rejoins.
        wait_rounds(out, 3, procs, server, server_log)
        tree = procs.sigkill("device-3")
        assert not procs.survivors(tree), "the killed device's SuperNode outlived it"
        client(3)

        # The server dies (SIGKILL) mid-run: SuperLink, doors, SuperExec, ServerApp go too; the port is free.
        wait_rounds(out, 9, procs, server, server_log)
        tree = procs.sigkill("server")
        assert not procs.survivors(tree), "server processes outlived the killed server"
        deadline = time.monotonic() + 30
        while port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not port_in_use("127.0.0.1", port)
        interrupted = len(rounds_logged(out))

        server = procs.start("server", server_argv)  # the same command, appending to server.log
        deadline = time.monotonic() + WAIT
        while server.poll() is None:
            procs.look()
            assert time.monotonic() < deadline, _read(server_log)[-3000:]
            time.sleep(1.0)
        assert server.returncode == 0, _read(server_log)[-3000:]
        log = _read(server_log)
        assert "the run continues from its round" in log and "finished:completed" in log
    finally:
        survivors = procs.end()
    assert not survivors, f"processes outlived the test: {survivors}"

    # The run: rounds 1..20 logged once each, in order, across the two server lives; the model is final.
    entries = rounds_logged(out)
    assert [e["round"] for e in entries] == list(range(1, ROUNDS + 1)), [e["round"] for e in entries]
    assert 9 <= interrupted < ROUNDS
    assert (out / "global_model.pt").is_file() and (out / "model.json").is_file()
    noise = json.loads((out / "model.json").read_text())["privacy"]["noise_multiplier"]

    # Every device's ledger counts exactly the rounds its store says it trained, under the run's noise.
    trained = []
    for store, key in stores:
        with DeviceStore.open(store, store_key(store, key)) as opened:
            rounds = int(opened.get_state("rounds") or b"0")
            ledger = PrivacyLedger.from_json(opened.get_state("privacy_ledger"))
        assert ledger.steps == rounds * STEPS, (store, rounds, ledger.history)
        assert all(sigma == noise for sigma, _, _ in ledger.history)
        trained.append(rounds)
    aggregated = sum(int(e["train"].get("devices", 0)) for e in entries)
    assert aggregated >= ROUNDS * PER_ROUND - PER_ROUND  # the resumed round may have been half-sampled
    # Every aggregated update was trained and counted; a device may also have trained for a reply that
    # was lost with the killed device or the killed server, at most one round's sample plus one.
    assert aggregated <= sum(trained) <= aggregated + PER_ROUND + 1, (trained, aggregated)
    print(f"soak: {sum(trained)} device-rounds trained, {aggregated} aggregated, {time.monotonic() - started:.0f} s")
