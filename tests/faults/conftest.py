"""Helpers for the fault tests of issue 14: run the CLI as a user would and read its answer."""

from __future__ import annotations

import os
import shutil

import pytest
from fedrec_cli import CliResult, call_fedrec, run_fedrec


def obey_permissions() -> list[str]:
    """A command prefix under which file modes hold even for root (which otherwise writes anywhere)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only directory cannot be simulated")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


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
def cli(monkeypatch, capsys):
    """``cli(*ARGS)``: `fedrec ARGS` through its main() in this process. ``obey_modes=True`` runs it in a
    fresh process under which file modes bind root too; ``own_process=True`` in a fresh process (a command
    that, were the check under test broken, would go on serving instead of failing)."""

    def call(*args: str, obey_modes: bool = False, own_process: bool = False, timeout: float = 300) -> CliResult:
        if obey_modes or own_process:
            prefix = tuple(obey_permissions()) if obey_modes else ()
            return run_fedrec(*args, prefix=prefix, timeout=timeout)
        return call_fedrec(monkeypatch, capsys, *args)

    return call


def flip(blob: bytes, at: int) -> bytes:
    """``blob`` with the lowest bit of byte ``at`` inverted."""
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


def small_model_state(seed: int = 0):
    """A global NeuMF state (30 items) and its architecture, as the server checkpoints it."""
    import torch

    from fedrec.common.model import ModelConfig, NeuMF, global_state

    torch.manual_seed(seed)
    config = ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8, 4))
    return global_state(NeuMF(1, 30, config)), config


def model_info(config, n_items: int = 30) -> dict:
    """What the server writes into model.json beside the final model (settings, mechanism)."""
    from fedrec.common.config import DeviceConfig, FederationConfig
    from fedrec.common.instructions import DevicePrivacy
    from fedrec.common.settings import to_nested

    federation = FederationConfig(device=DeviceConfig(model=config, n_items=n_items))
    return {"federation": to_nested(federation), "privacy": to_nested(DevicePrivacy())}
