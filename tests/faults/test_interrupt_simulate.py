"""Ctrl-C or SIGTERM in the middle of a federated arm (issue 26, item 1): `fedrec simulate` exits within
10 s with one line naming the run dir it leaves incomplete, no process of the run is left, and every later
reader (a re-run into the same --out, `fedrec retention`) refuses the dir in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_checks import assert_all_ended, command_of

from fedrec.common.processes import descendants

FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]
ARGS = ["--clients", "8", "--rounds", "200", "--arms", "popularity,federated", "--no-retention", "--quiet"]


def _started(out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*FEDREC, "simulate", "--out", str(out), *ARGS],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the signal goes to the group, as a terminal sends it
    )


def _wait_for_ray(harness: subprocess.Popen, log: Path) -> list[int]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert harness.poll() is None, log.read_text()[-2000:]
        tree = descendants(harness.pid)
        if any("ClientAppActor" in command_of(p) for p in tree):
            time.sleep(3)  # a few rounds in
            return descendants(harness.pid)
        time.sleep(0.5)
    raise AssertionError("Ray's ClientApp actors never started")


@pytest.mark.e2e
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_simulation_ends_at_once_and_its_run_dir_says_incomplete(tmp_path, ml100k_dir, sig, code):
    out, log = tmp_path / "run", tmp_path / "simulate.log"
    harness = _started(out, log)
    try:
        tree = _wait_for_ray(harness, log)
        os.killpg(harness.pid, sig)
        started = time.monotonic()
        assert harness.wait(timeout=30) == code, log.read_text()[-2000:]
        assert time.monotonic() - started < 10
        lines = log.read_text().strip().splitlines()
        assert lines[-1].startswith(f"interrupted: {out} is incomplete"), lines[-5:]
        assert not any("Traceback" in line for line in lines), log.read_text()[-2000:]
        assert_all_ended(tree, 15, "the interrupted harness")
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGKILL)
    assert (out / "INCOMPLETE").is_file()
    again = subprocess.run([*FEDREC, "simulate", "--out", str(out), *ARGS], capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        f"error: {out}: already holds an unfinished run (interrupted or failed); give a fresh --out "
        "(a harness run cannot be resumed: its devices' ledgers would mix two runs)"
    ]
    later = subprocess.run([*FEDREC, "retention", str(out)], capture_output=True, text=True)
    assert later.returncode == 1 and len(later.stderr.strip().splitlines()) == 1
    assert "the run did not finish" in later.stderr
