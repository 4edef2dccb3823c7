"""`fedrec ARGS` as a test runs it: in this process (main() with its argv, output read back), or in a fresh
process where the process itself is what a test checks (file modes, signals, a command that might hang).
A module, not conftest: tests/faults has its own conftest (see synthetic_data.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

import fedrec.common.cli
from fedrec.simulations.main import main

FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def call_fedrec(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> CliResult:
    """``fedrec ARGS`` through main(), as the installed command starts it; what it printed, and its exit code."""
    capsys.readouterr()  # what the test printed before is not the command's
    code = 0
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", ["fedrec", *args])
        patch.setenv("COLUMNS", "80")
        # A thread some earlier command of this process left behind would make exit_now end the whole
        # test process (os._exit); tests/test_cli_exit.py checks that path in a process of its own.
        patch.setattr(fedrec.common.cli, "exit_now", sys.exit)
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def run_fedrec(*args: str, prefix: tuple[str, ...] = (), timeout: float = 300, **popen) -> CliResult:
    """``python -m fedrec.simulations.main ARGS`` in a fresh process (``prefix`` runs it under a wrapper)."""
    env = {**os.environ, "COLUMNS": "80", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*prefix, *FEDREC, *args], capture_output=True, text=True, env=env, timeout=timeout, **popen)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
