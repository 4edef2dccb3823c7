"""`fedrec audit` end to end on a small `fedrec simulate` run (Flower simulation engine, tiny config)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.simulations.main import app

SMALL = """
[central.model]
gmf_dim = 8
mlp_dim = 8
layers = [16, 8]

[central.train]
epochs = 3
batch_size = 64

[federation.server]
rounds = 2

[federation.privacy]
epsilon = 4.0

[federation.device.training]
steps_per_epoch = 4
lr = 0.1
"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    path = root / "tiny.csv"
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:  # 10 users with several sessions over weeks (retention needs returns)
        out = csv.writer(fh)
        out.writerow(["user", "item", "timestamp", "rating"])
        for u in range(10):
            day = int(rng.integers(0, 60)) if u else 0
            for _ in range(3 if u else 12):
                for item in rng.choice(30, size=4, replace=False):
                    out.writerow([u, item, day * 86_400 + int(rng.integers(0, 86_400)), 5 if item < 10 else 2])
                day += int(rng.integers(1, 15))
    (root / "small.toml").write_text(SMALL)
    run = root / "run"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--out",
            str(run),
            "--dataset",
            str(path),
            "--config",
            str(root / "small.toml"),
            "--arms",
            "centralized,federated,federated_dp",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return run, path


def test_audit_writes_every_required_field(small_run):
    run, csv_path = small_run
    result = CliRunner().invoke(
        app,
        [
            "audit",
            str(run),
            "--dataset",
            str(csv_path),
            "--shadows",
            "2",
            "--canary-trainer",
            "inprocess",
            "--canaries",
            "40",
            "--canary-guesses",
            "10",
            "--canary-users",
            "10",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    audit = json.loads((run / "audit.json").read_text())
    acc = audit["accounting"]
    report = json.loads((run / "report.json").read_text())
    assert acc["agree"] and acc["epsilon_max"] == pytest.approx(
        report["arms"]["federated_dp"]["privacy"]["epsilon_max"]
    )
    assert acc["epsilon_recomputed_max"] == pytest.approx(acc["epsilon_max"], rel=0.01)
    shown = json.loads(result.stdout)["accounting"]
    assert (shown["delta"], shown["unit"], shown["observer"]) == (
        acc["delta"],
        acc["unit"],
        "anyone holding the released model",
    )
    for arm in ("centralized", "federated", "federated_dp"):
        assert set(audit["mia"][arm]) >= {"auc", "tpr@1%fpr", "tpr@0.1%fpr"}
        assert 0.0 <= audit["mia"][arm]["auc"] <= 1.0
    canary = audit["canary"]
    assert {"epsilon_lower_bound", "confidence", "m", "guesses", "ceiling"} <= set(canary)
    assert canary["m"] == 40 and canary["guesses"] == 20 and canary["confidence"] == 0.95
    assert canary["epsilon_lower_bound"] <= canary["epsilon_formal"] <= 4.0 * 1.01
    assert audit["wire"]["ok"] and "item_emb.weight" in audit["wire"]["arrays"]
    assert audit["at_rest"]["ok"] and audit["at_rest"]["devices_scanned"] == 10
    text = (run / "audit.md").read_text()
    assert "Unit of privacy" in text and "Out of scope" in text
    assert (run / "audit_epsilon.png").exists() and (run / "audit_mia_roc.png").exists()


def test_audit_refuses_a_split_it_cannot_rebuild(small_run, tmp_path):
    run, csv_path = small_run
    rows = list(csv.reader(csv_path.open()))
    for row in rows[1:]:  # every user's history in reverse time order: the rebuilt test split differs
        row[2] = str(10**8 - int(row[2]))
    other = tmp_path / "other.csv"
    with other.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    result = CliRunner().invoke(app, ["audit", str(run), "--dataset", str(other), "--skip", "mia,canary", "--quiet"])
    assert result.exit_code != 0
    assert "differs from the run's test split" in str(result.exception)


def test_the_default_canary_audit_is_the_white_box_one_with_its_control(small_run, tmp_path):
    run, csv_path = small_run
    args = ["audit", str(run), "--dataset", str(csv_path), "--skip", "accounting,wire,at_rest,mia"]
    args += ["--canaries", "200", "--canary-guesses", "40", "--canary-users", "10", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    canary = json.loads((run / "audit.json").read_text())["canary"]
    assert canary["trainer"] == "whitebox" and canary["arm"] == "federated_dp"
    assert canary["m"] == 200 and canary["guesses"] == 80 and canary["devices"] == 10
    assert canary["epsilon_lower_bound"] <= canary["epsilon_formal"] <= 4.0 * 1.01
    control = canary["control"]
    assert control["budget"] == 1000 and control["epsilon_formal"] > 100
    assert "(control, budget 1000)" in (run / "audit.md").read_text()
    shown = json.loads(result.stdout)["canary"]  # the terminal summary: no epsilon without its terms
    assert shown["delta"] == canary["delta"] and shown["unit"].startswith("record-level")
    assert shown["observer"] == "the server, which sees each node's mean of DP updates"
    assert shown["epsilon_formal"] == canary["epsilon_formal"]
