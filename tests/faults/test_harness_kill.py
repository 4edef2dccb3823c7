"""A harness killed with SIGKILL mid-simulation leaves none of Ray's processes behind (issue 14, item 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from process_checks import assert_all_ended, command_of

from fedrec.common.processes import descendants

FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]


@pytest.mark.e2e
def test_sigkill_of_a_simulation_takes_rays_processes_with_it(tmp_path, ml100k_dir):
    log = tmp_path / "simulate.log"
    harness = subprocess.Popen(
        [
            *FEDREC,
            "simulate",
            "--out",
            str(tmp_path / "run"),
            "--users",
            "8",
            "--rounds",
            "50",
            "--arms",
            "federated",
            "--no-retention",
            "--quiet",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, tree = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            assert harness.poll() is None, log.read_text()[-2000:]
            tree = descendants(harness.pid)
            if any("ClientAppActor" in command_of(p) or "raylet" in command_of(p) for p in tree):
                break
            time.sleep(1)
        ray = [p for p in tree if "ray" in command_of(p).lower()]
        assert ray, "Ray never started"
        time.sleep(3)
        tree = descendants(harness.pid)
        harness.send_signal(signal.SIGKILL)
        harness.wait(timeout=30)
        assert_all_ended(tree, 45, "the killed harness")
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGKILL)
