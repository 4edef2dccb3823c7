"""Ctrl-C or SIGTERM in the middle of a command: it exits within 10 s with one line (130 or 143). In a
federated arm, the line names the run dir left incomplete, no process of the run is left, and every later
reader (a re-run into the same --out, `fedrec retention`, `fedrec audit`) refuses the dir in one line."""

from __future__ import annotations

import json
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
ARGS = ["--users", "8", "--rounds", "200", "--arms", "popularity,federated", "--no-retention", "--quiet"]


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
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
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
    for reader in ("retention", "audit"):
        later = subprocess.run([*FEDREC, reader, str(out)], capture_output=True, text=True)
        assert later.returncode == 1 and len(later.stderr.strip().splitlines()) == 1, later.stderr
        assert "the run did not finish" in later.stderr


def _interrupted(argv: list[str], sig: int, after: float, log: Path, ready: str = "") -> tuple[int, float, list[str]]:
    """``argv`` in a session of its own, ``sig`` to its group ``after`` seconds once its output holds
    ``ready``: exit code, seconds to exit, non-blank output lines."""
    proc = subprocess.Popen(
        argv, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while ready not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(after)
        assert proc.poll() is None, log.read_text()[-2000:]
        os.killpg(proc.pid, sig)
        started = time.monotonic()
        code = proc.wait(timeout=30)
        return code, time.monotonic() - started, [line for line in log.read_text().splitlines() if line.strip()]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_any_command_ends_in_one_line(tmp_path, ml100k_dir, sig, code):
    out = tmp_path / "synth.csv"
    argv = [*FEDREC, "data", "synth", "--users", "300", "--out", str(out)]
    exit_code, seconds, lines = _interrupted(argv, sig, 4.0, tmp_path / "synth.log")
    assert (exit_code, lines[-1:]) == (code, ["interrupted"]), lines
    assert seconds < 10
    assert not any("Traceback" in line for line in lines), lines
    assert not out.exists()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_centralized_fit_marks_its_run_dir(tmp_path, ml100k_dir, sig, code):
    out = tmp_path / "run"
    argv = [*FEDREC, "baseline", "--arms", "centralized", "--out", str(out), "--no-retention"]
    exit_code, seconds, lines = _interrupted(argv, sig, 1.0, tmp_path / "baseline.log", "fitting centralized")
    assert exit_code == code and lines[-1].startswith(f"interrupted: {out} is incomplete"), lines
    assert seconds < 10
    assert not any("Traceback" in line for line in lines), lines
    assert (out / "INCOMPLETE").is_file() and not (out / "report.json").exists()


def test_an_interrupted_retention_stage_leaves_the_finished_arms(tmp_path, ml100k_dir):
    out, log = tmp_path / "run", tmp_path / "baseline.log"
    proc = subprocess.Popen(
        [*FEDREC, "baseline", "--arms", "popularity", "--out", str(out)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while "retention: fitting" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines[-1] == f"interrupted: {out} holds every arm but no retention; `fedrec retention {out}` adds it"
    assert not (out / "INCOMPLETE").exists() and "retention" not in json.loads((out / "report.json").read_text())
