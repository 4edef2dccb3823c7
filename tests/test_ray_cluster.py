"""`fedrec simulate --ray-address` on an existing Ray cluster: a `ray start --head` in a session of its own.

The cluster is started here as an operator would, the harness runs against it as a separate command,
and only this test's process group is ended afterwards (never `ray stop`, which ends every Ray process
on the machine).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fedrec_cli import call_fedrec

from fedrec.common.config import load_config
from fedrec.common.errors import FedrecError
from fedrec.common.processes import alive, descendants, free_port, wait_until
from fedrec.common.reaper import children_by_parent
from fedrec.simulations.ray_backend import backend_config, require_head

RAY = Path(sys.executable).parent / "ray"

SMALL = """
[federation.server]
rounds = 2

[federation.device]
participation = 1.0

[federation.device.model]
gmf_dim = 4
mlp_dim = 4
layers = [8, 4]

[federation.device.training]
steps_per_epoch = 2

[simulation]
nodes = 2
"""


@dataclass(frozen=True)
class Head:
    pid: int  # also its process group: the head runs in a session of its own
    address: str
    logs: Path  # the session's log dir, under the temp dir this test gave the head


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    found = []
    for pid in (p for kids in children_by_parent().values() for p in kids):
        try:
            if os.getpgid(pid) == pgid and alive(pid):
                found.append(pid)
        except ProcessLookupError:
            continue
    return found


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def ray_head(log: Path) -> Iterator[Head]:
    """A one-node cluster with 2 CPUs; every port it would otherwise fix (client server, dashboard,
    dashboard agent) is a free one, so other Ray users of this machine are not disturbed."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    argv = [
        str(RAY), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
        "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp),
        "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
    ]  # fmt: skip
    with log.open("wb") as out:
        head = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=temp, start_new_session=True
        )
    try:
        wait_until(
            lambda: "Ray runtime started" in log.read_text() and accepts(port),
            60,
            "ray start --head",
            alive=lambda: head.poll() is None,
        )
        yield Head(head.pid, f"127.0.0.1:{port}", temp / "session_latest" / "logs")
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def end_group(head: Head, grace: float = 30.0) -> list[int]:
    """SIGTERM the head's process group, SIGKILL what is left after ``grace``; the PIDs still alive."""
    members = set(group_members(head.pid)) | set(descendants(head.pid)) | {head.pid}
    os.killpg(head.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in members):
        time.sleep(0.5)
    if any(alive(p) for p in members):
        os.killpg(head.pid, signal.SIGKILL)
        time.sleep(2)
    return sorted(p for p in members if alive(p)) + group_members(head.pid)


def tiny_csv(path: Path) -> None:
    """12 users, 30 items, a few interactions each on distinct days (enough for a split per user)."""
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["user", "item", "timestamp", "rating"])
        for u in range(12):
            for day, item in enumerate(rng.choice(30, size=6, replace=False)):
                out.writerow([u, item, (u + day * 3) * 86_400, 5 if item < 10 else 2])


def test_backend_config_passes_no_resources_to_an_existing_cluster():
    cluster = backend_config(2, "10.0.0.1:6379")["init_args"]
    assert cluster["address"] == "10.0.0.1:6379"
    assert not {"num_cpus", "num_gpus", "resources", "object_store_memory"} & set(cluster)
    private = backend_config(3)["init_args"]
    assert private["address"] == "local" and private["num_cpus"] == 3  # never a cluster RAY_ADDRESS names


def test_an_address_where_no_head_listens_fails_in_one_line():
    port = free_port()  # nobody listens: ray.init would retry this address forever
    with pytest.raises(FedrecError, match=f"no Ray head answers at 127.0.0.1:{port}"):
        require_head(f"127.0.0.1:{port}", timeout=1.0)


def test_simulate_checks_the_address_before_any_work(tmp_path, monkeypatch, capsys):
    port = free_port()
    out = tmp_path / "run"
    done = call_fedrec(monkeypatch, capsys, "simulate", "--ray-address", f"127.0.0.1:{port}", "--out", str(out))
    assert done.code == 1 and done.stderr.strip().startswith(
        f"error: simulation.ray_address: no Ray head answers at 127.0.0.1:{port}"
    )
    assert not out.exists()  # a retry into the same --out is not refused


@pytest.mark.parametrize("bad", ["ray://h:10001", "h", "h:port", ":6379"])
def test_ray_address_must_name_a_head(bad):
    with pytest.raises(FedrecError, match="simulation.ray_address"):
        load_config(None, {"simulation.ray_address": bad})


@pytest.mark.e2e
def test_simulate_runs_on_an_existing_cluster_and_leaves_it_running(tmp_path):
    data, config = tmp_path / "tiny.csv", tmp_path / "small.toml"
    tiny_csv(data)
    config.write_text(SMALL)
    with ray_head(tmp_path / "head.log") as head:
        cluster = group_members(head.pid)
        argv = [
            sys.executable, "-m", "fedrec.simulations.main", "simulate", "--out", "run", "--dataset", str(data),
            "--config", str(config), "--arms", "federated", "--no-retention", "--quiet",
            "--ray-address", head.address,
        ]  # fmt: skip
        harness = subprocess.Popen(  # a relative --out: the cluster's workers run in another cwd
            argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        output, _ = harness.communicate(timeout=180)
        assert harness.returncode == 0, output[-3000:]

        report = json.loads((tmp_path / "run" / "report.json").read_text())
        assert report["meta"]["config"]["simulation"]["ray_address"] == head.address
        assert 0.0 <= report["arms"]["federated"]["accuracy"]["hr@10"] <= 1.0
        drivers = list(head.logs.glob(f"python-core-driver-*_{harness.pid}.log"))
        assert drivers, "the harness never connected to this cluster as a driver"
        job = drivers[0].name.split("-")[3][:8]  # python-core-driver-<job id hex, padded>_<pid>.log
        actors = [p for p in head.logs.glob("worker-*.out") if ":actor_name:ClientAppActor" in p.read_text()]
        assert any(f":job_id:{job}" in p.read_text() for p in actors), "no ClientApp actor of this run on the cluster"
        assert all(alive(p) for p in cluster), "the harness ended processes of the cluster it was a guest on"

        left = end_group(head)
        assert not left, f"processes of the head left after ending its group: {left}"
