"""bench/user_dp_population.py reads a run's report.json into one table row (no run, well under a second)."""

from __future__ import annotations

import math

import pytest

from bench.user_dp_population import ARMS, summarize, table


def _report(users: int, ndcg: dict[str, float]) -> dict:
    arms = {arm: {"accuracy": {"ndcg@10": ndcg[arm], "hr@10": 2 * ndcg[arm]}} for arm in ARMS}
    arms["federated_user_dp"]["privacy"] = {
        "epsilon_max": 7.99,
        "delta": 1e-5,
        "noise_multiplier": 0.8,
        "sample_rate": 0.1,
        "steps": 30,
        "unit": "user",
    }
    federation = {"privacy": {"max_update_norm": 4.0}, "server": {"rounds": 30}}
    return {"meta": {"n_users": users, "config": {"federation": federation}, "wall_s": 5.0}, "arms": arms}


def test_summarize_reads_accuracy_ratios_and_the_noise_on_the_mean() -> None:
    row = summarize(_report(1000, {"popularity": 0.04, "federated": 0.05, "federated_user_dp": 0.045}), 12.0)
    assert row["users"] == 1000 and row["rounds"] == 30 and row["wall_s"] == 12.0
    assert row["federated_user_dp_hr"] == pytest.approx(0.09)
    assert row["udp_over_fed"] == pytest.approx(0.9)
    assert row["udp_over_pop"] == pytest.approx(1.125)
    # sigma C / (q N) = 0.8 * 4 / (0.1 * 1000)
    assert row["mean_noise_std"] == pytest.approx(0.032)
    assert table([row]).row_count == 1


def test_summarize_zero_baseline_gives_nan_not_a_crash() -> None:
    row = summarize(_report(10, {"popularity": 0.0, "federated": 0.0, "federated_user_dp": 0.01}), 1.0)
    assert math.isnan(row["udp_over_fed"]) and math.isnan(row["udp_over_pop"])
