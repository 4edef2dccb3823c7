"""Helpers for the fault tests of issue 14: run the CLI as a user would and read its answer."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, user: int | None = None, timeout: float = 300) -> CliResult:
    """``python -m fedrec.simulations.cli ARGS`` in a fresh process (``user``: run under that uid)."""
    env = {**os.environ, "COLUMNS": "80", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "fedrec.simulations.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, user=user)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, *fragments: str) -> str:
    """Non-zero exit, no traceback, and exactly one line on stderr holding every fragment."""
    assert result.code != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def cli():
    return run_cli
