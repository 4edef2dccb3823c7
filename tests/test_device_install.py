"""The device install (`pip install fedrec`, no `harness` extra) as `make test` builds it and names it in
``FEDREC_DEVICE_PYTHON``: it holds no Ray and no plotting, and a harness command on it is one line naming
the extra. (tests/test_deployment.py runs its devices' `fedrec client` and `fedrec recommend` from it.)"""

from __future__ import annotations

import os
import subprocess

import pytest

DEVICE_PYTHON = os.environ.get("FEDREC_DEVICE_PYTHON")
pytestmark = pytest.mark.skipif(not DEVICE_PYTHON, reason="FEDREC_DEVICE_PYTHON names no device install")


def device(*args: str) -> subprocess.CompletedProcess:
    assert DEVICE_PYTHON
    return subprocess.run([DEVICE_PYTHON, *args], capture_output=True, text=True, timeout=120)


def test_the_device_install_holds_no_harness():
    found = device(
        "-c", "import importlib.util as u; print([m for m in ('ray', 'matplotlib', 'dp_accounting') if u.find_spec(m)])"
    )
    assert found.returncode == 0 and found.stdout.strip() == "[]", found.stderr
    assert device("-c", "import fedrec.client.app, fedrec.client.recommend, opacus").returncode == 0


def test_a_harness_command_on_a_device_install_names_the_extra(tmp_path):
    ran = device("-m", "fedrec.simulations.main", "simulate", "--out", str(tmp_path / "run"), "--users", "10")
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        "error: this command needs matplotlib, which a device install leaves out: pip install 'fedrec[harness]'"
    ]
    assert not (tmp_path / "run").exists()
