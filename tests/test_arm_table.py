"""The arm table is the one list of arms: docs/simulate.md's "Arms" section, the CLI's choices and errors,
the settings each arm reads and what each command-line flag sets all agree with it."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.common.config import CentralDPConfig, FederationConfig, FedrecConfig, PrivacyConfig
from fedrec.common.mechanisms.registry import MECHANISMS
from fedrec.simulations import api
from fedrec.simulations.arms.base import ArmBinding, budget_of
from fedrec.simulations.arms.registry import binder
from fedrec.simulations.arms.table import ARMS, DEFAULT_ARMS, swept
from fedrec.simulations.audit.canary_runs import audited_federation
from fedrec.simulations.main import app

DOCS = Path(__file__).parents[1] / "docs" / "simulate.md"
WIDE = {"TERMINAL_WIDTH": "2000", "COLUMNS": "2000"}


def _docs_rows() -> list[list[str]]:
    section = DOCS.read_text().split("\n## Arms\n", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[1:-1] == [
        " arm ",
        " mechanism ",
        " unit ",
        " settings ",
        " in default run ",
        " sweeps ",
        " audit ",
    ]
    return [[cell.strip().strip("`") for cell in line.split("|")[1:-1]] for line in lines[2:]]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def test_the_docs_list_every_arm_as_the_table_does():
    expected = [
        [a.name, a.mechanism, a.unit or "-", a.settings or "-", _yes(a.default), _yes(a.sweeps), _yes(a.audit)]
        for a in ARMS.values()
    ]
    assert _docs_rows() == expected


def test_an_unknown_arm_is_one_line_listing_every_arm(tmp_path):
    command = [sys.executable, "-m", "fedrec.simulations.main", "simulate", "--arms", "federated,foo"]
    proc = subprocess.run([*command, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'foo'" in lines[0]
    assert lines[0].endswith("choose from " + ", ".join(ARMS))
    assert not (tmp_path / "run").exists()


def test_the_help_offers_every_arm_and_defaults_to_the_default_run():
    result = CliRunner().invoke(app, ["simulate", "--help"], env=WIDE)
    flat = " ".join(result.output.split())
    assert "any of " + ", ".join(ARMS) in flat
    assert f"[default: {','.join(DEFAULT_ARMS)}]" in flat
    assert DEFAULT_ARMS == ("random", "popularity", "ease", "centralized", "federated", "federated_ddp")


@pytest.mark.parametrize("name", list(ARMS))
def test_every_entry_names_real_settings_and_a_binder(name):
    arm = ARMS[name]
    cfg = FedrecConfig()
    assert arm.mechanism in MECHANISMS
    assert callable(binder(arm))
    if arm.settings:
        assert arm.settings in {f.name for f in fields(FedrecConfig)}
        assert isinstance(getattr(cfg, arm.settings), FederationConfig) == arm.federated
    else:
        assert not arm.federated and not arm.private
    if arm.private:
        assert isinstance(budget_of(arm, cfg), PrivacyConfig)
    assert not (arm.audit and not arm.federated)  # the canary audit retrains through the federated fitter


def test_a_run_without_an_arm_that_sweeps_sweeps_the_default_runs_private_arm():
    assert [a.name for a in swept([ARMS["popularity"], ARMS["federated"]])] == ["federated_ddp"]
    assert [a.name for a in swept([ARMS["centralized_dp"], ARMS["federated_dp"]])] == ["federated_dp", "centralized_dp"]


def test_federated_ddp_reads_its_own_branch_whose_defaults_are_the_centralized_dp_recipe():
    cfg, recipe = FedrecConfig(), CentralDPConfig()
    ddp = cfg.federated_ddp
    assert ddp.server.rounds == 1 + ddp.device.shared_noise.steps  # the histogram round, then the DP-SGD steps
    assert ddp.privacy.max_grad_norm == recipe.max_grad_norm
    # NeuMF with its tower, the recipe's widths, no bias column, the popularity prior (docs/dp-search.md)
    assert ddp.device.model == replace(recipe.model, kind="neumf", mlp_dim=32, layers=(64, 32, 16), prior=True)
    assert ddp.device.training.negatives == recipe.negatives
    assert ddp.device.participation == 1.0
    # the rest is the federation's (one epsilon and delta for every private arm by default)
    assert ddp.privacy == replace(cfg.federation.privacy, mechanism="distributed", max_grad_norm=recipe.max_grad_norm)
    binding = ArmBinding(ARMS["federated_ddp"], "federated_ddp", cfg)
    assert binding.settings is ddp and binding.budget is ddp.privacy


def test_rounds_epsilon_and_delta_set_every_arm_their_help_names(tmp_path, monkeypatch):
    seen = {}

    def capture(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(api, "build_experiment", capture)
    args = ["simulate", "--out", str(tmp_path / "run"), "--rounds", "3", "--epsilon", "2", "--delta", "1e-6"]
    CliRunner().invoke(app, [*args, "--dropout", "0.2"])
    cfg = seen["cfg"]
    assert cfg.federation.server.rounds == cfg.federated_ddp.server.rounds == 3
    assert cfg.federation.device.fleet.dropout == cfg.federated_ddp.device.fleet.dropout == 0.2
    for arm in ARMS.values():
        if arm.private:
            assert (budget_of(arm, cfg).epsilon, budget_of(arm, cfg).delta) == (2.0, 1e-6), arm.name
    flat = " ".join(CliRunner().invoke(app, ["simulate", "--help"], env=WIDE).output.split())
    rounds_help = re.search(r"--rounds INTEGER (.*?) --epsilon", flat).group(1)
    epsilon_help = re.search(r"--epsilon FLOAT (.*?) --delta", flat).group(1)
    assert "federation.server.rounds" in rounds_help and "federated_ddp.server.rounds" in rounds_help
    assert "federation.privacy.epsilon" in epsilon_help and "federated_ddp.privacy.epsilon" in epsilon_help


def test_the_canary_audit_retrains_an_arm_without_a_record_on_its_own_branch():
    """A report without the arm's resolved settings: the audit takes its branch of the run's settings."""
    cfg = FedrecConfig()
    report = {"meta": {"config": cfg.to_dict()}, "arms": {"federated_ddp": {}, "federated_dp": {}}}
    assert audited_federation(report, "federated_ddp", None) == cfg.federated_ddp
    federation = audited_federation(report, "federated_dp", 3)
    assert federation.privacy == replace(cfg.federation.privacy, mechanism=ARMS["federated_dp"].mechanism)
    assert federation.server.rounds == 3
