"""End to end: `fedrec baseline` writes a run dir, `fedrec retention` adds simulated retention to it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.common.datasets import load_csv
from fedrec.common.errors import FedrecError
from fedrec.simulations.main import app
from fedrec.simulations.retention import run_retention

DAY = 86_400


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory):
    """60 users over 200 days: some come back often, some never; ratings favour low item ids."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["user", "item", "timestamp", "rating"])
        for u in range(60):
            day = int(rng.integers(0, 150))
            for _ in range(int(rng.integers(1, 6))):
                for item in rng.choice(80, size=int(rng.integers(3, 7)), replace=False):
                    out.writerow(
                        [u, item, day * DAY + int(rng.integers(0, DAY)), 5 if item < 30 else int(rng.integers(1, 4))]
                    )
                day += int(rng.integers(1, 20))
    return path


@pytest.fixture(scope="module")
def run_dir(toy_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "toy"
    result = CliRunner().invoke(
        app, ["baseline", "--dataset", str(toy_csv), "--arms", "random,popularity,ease", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_cli_retention_updates_report_and_plots(run_dir, toy_csv):
    result = CliRunner().invoke(
        app, ["retention", str(run_dir), "--seeds", "0,1", "--dataset", str(toy_csv), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "(simulated)" in result.stdout and "**observed**" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["meta"]["retention_observed"]) >= {"d1", "d7", "d30"}
    for arm in ("random", "popularity", "ease"):
        by_oracle = report["arms"][arm]["retention"]
        assert set(by_oracle) == {"ease+mf", "ease+knn", "wrmf+mf", "wrmf+knn"}
        for by_beta in by_oracle.values():
            assert set(by_beta) == {"0", "0.5", "2", "5"}
            for cell in by_beta.values():
                assert set(cell) == {"d1", "d7", "d30", "active_days", "satisfaction"}
                assert 0.0 <= cell["d1"] <= cell["d7"] <= cell["d30"] <= 1.0
    ret = report["retention"]
    assert ret["label"] == "simulated" and ret["reference_arm"] == "ease"
    assert ret["checks"]["identical_at_beta_0"]["holds"]
    assert "by_rank_band" in ret["user_model_parts"]["pick"]["wrmf"]["checks"]
    assert "by_decile" in ret["user_model_parts"]["like"]["knn"]["checks"]
    assert ret["headline"]["arm"] is None and "no private arm" in ret["headline"]["chosen_because"]
    assert len(ret["cells"]) == 2
    md = (run_dir / "report.md").read_text()
    assert "## Retention (simulated)" in md and "## Accuracy" in md
    for png in ret["plots"].values():
        assert (run_dir / png).stat().st_size > 0 and f"]({png})" in md


def test_cli_retention_names_the_problem_on_bad_input(run_dir, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["retention", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "report.json" in str(missing.exception)
    reload = runner.invoke(app, ["retention", str(run_dir), "--seeds", "0"])  # meta.dataset is the CSV's stem
    assert reload.exit_code != 0 and "--dataset" in str(reload.exception)


def test_run_retention_with_given_scores_and_wrong_shapes(run_dir, toy_csv):
    data = load_csv(toy_csv)
    scores = {
        "ease": np.load(run_dir / "scores" / "ease.npy"),
        "extra": np.random.default_rng(0).random((data.n_users, data.n_items)),
    }
    report = run_retention(run_dir, data, arms=scores, seeds=(0,), show=False)
    assert "extra" in report["arms"] and "retention" in report["arms"]["extra"]
    with pytest.raises(FedrecError, match="shape"):
        run_retention(run_dir, data, arms={"ease": np.zeros((2, 2))}, seeds=(0,), show=False)


def test_dataset_without_ratings_counts_every_pick_as_liked(run_dir, toy_csv, tmp_path):
    no_ratings = tmp_path / "toy.csv"
    with toy_csv.open() as src, no_ratings.open("w", newline="") as dst:
        csv.writer(dst).writerows(row[:3] for row in csv.reader(src))
    report = run_retention(run_dir, load_csv(no_ratings), seeds=(0,), show=False)
    assert set(report["arms"]["ease"]["retention"]) == {"ease+all", "wrmf+all"}
    assert "skipped" in report["retention"]["user_model_parts"]["like"]["all"]["checks"]
    assert "every pick counts as liked" in (run_dir / "report.md").read_text()


def test_headline_reports_the_private_arm_and_rho_against_centralized(run_dir, toy_csv):
    data = load_csv(toy_csv)
    ease = np.load(run_dir / "scores" / "ease.npy")
    noise = np.random.default_rng(1).normal(0, ease.std(), ease.shape)
    arms = {"centralized": ease, "federated": ease + 0.5 * noise, "federated_dp": ease + 3.0 * noise}
    report = run_retention(run_dir, data, arms=arms, seeds=(0, 1, 2), show=False)
    h = report["retention"]["headline"]
    assert h["arm"] == "federated_dp" and h["reference_arm"] == "centralized" and h["beta"] == "2"
    assert set(h["rho"]) == {"federated", "federated_dp"}
    assert set(h["by_oracle"]) == {"ease+mf", "ease+knn", "wrmf+mf", "wrmf+knn"}
    cell = h["by_oracle"]["ease+mf"]
    assert cell["vs_reference"]["d30"]["mean"] == pytest.approx(
        cell["d30"]["mean"] - report["retention"]["ci95"]["centralized"]["ease+mf"]["2"]["d30"]["mean"]
    )
    md = (run_dir / "report.md").read_text()
    assert md.index("**Headline (simulated, beta 2).** `federated_dp`") < md.index("**What these numbers mean.**")
    assert "Gap closed" in md
