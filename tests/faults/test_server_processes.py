"""`fedrec server` killed with SIGKILL leaves nothing running; a second server on the same state is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedrec.common.processes import alive, descendants, free_port, port_in_use

FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        assert proc.poll() is None, f"exited {proc.returncode}: {path.read_text(errors='replace')[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r}: {path.read_text(errors='replace')[-2000:]}"
        time.sleep(0.5)


def _server_argv(tmp_path: Path, certs: Path, port: int) -> list[str]:
    out = ["--out", str(tmp_path / "run"), "--host", "127.0.0.1", "--port", str(port)]
    return [*FEDREC, "server", "--certs", str(certs), *out, "--run-config", "device.n_items=20", "--timeout", "600"]


def _server(tmp_path: Path, certs: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _server_argv(tmp_path, certs, port),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.e2e
def test_sigkill_of_the_server_takes_its_superlink_with_it(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run(
        [*FEDREC, "certs", "init", "--out", str(certs), "--ip", "127.0.0.1", "--devices", "1"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port, log = free_port(), tmp_path / "server.log"
    server = _server(tmp_path, certs, port, log)
    try:
        _wait_for(log, "waiting for 1 device(s)", server)
        tree = descendants(server.pid)
        assert tree and port_in_use("127.0.0.1", port)

        second = subprocess.run(_server_argv(tmp_path, certs, free_port()), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another fedrec server (pid {server.pid})" in lines[0]

        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (any(alive(p) for p in tree) or port_in_use("127.0.0.1", port)):
            time.sleep(0.5)
        assert not [p for p in tree if alive(p)], "processes outlived the killed server"
        assert not port_in_use("127.0.0.1", port)

        # the restart gets the port and the state back
        again = _server(tmp_path, certs, port, tmp_path / "again.log")
        _wait_for(tmp_path / "again.log", "waiting for 1 device(s)", again)
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=60) == 0 or "stopped all server processes" in (tmp_path / "again.log").read_text()
    finally:
        for proc in (server,):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
