"""The federated report section draws a curve only where there is one and says when devices ran out of
budget (issue 25: a one-point plot with a NaN legend, a sweep plot without --sweep, silent refusals)."""

from __future__ import annotations

from fedrec.simulations.federated_report import markdown, refusals, sweep_curves, write_plots


def _round(number: int, devices: int, refused: int, ndcg: float | None) -> dict:
    return {
        "round": number,
        "train": {"devices": devices, "refused": refused},
        "evaluate": {} if ndcg is None else {"ndcg@10": ndcg},
    }


def _report(rounds: list[dict]) -> dict:
    info = {
        "rounds": rounds,
        "federation": {
            "server": {"rounds": len(rounds), "strategy": {"name": "fedavg", "server_lr": 1.0}},
            "device": {"participation": 0.25, "training": {"lr": 0.1}},
        },
        "device_privacy": {"noise_multiplier": 1.0},
    }
    privacy = {
        "epsilon_max": 8.0,
        "epsilon_median": 7.9,
        "delta": 1e-5,
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
        "steps": 80,
        "unit": "record, per device",
        "ledger": "federated_dp_ledger.csv",
    }
    return {"arms": {"federated_dp": {"info": info, "privacy": privacy, "accuracy": {"ndcg@10": 0.03}}}}


def test_one_evaluation_is_no_curve(tmp_path):
    report = _report([_round(1, 10, 0, None), _round(2, 10, 0, 0.02)])
    write_plots(report, tmp_path)
    assert not (tmp_path / "federated_rounds.png").exists()
    assert "federated_rounds.png" not in markdown(report)


def test_two_evaluations_are_a_curve(tmp_path):
    report = _report([_round(1, 10, 0, 0.01), _round(2, 10, 0, 0.02)])
    write_plots(report, tmp_path)
    assert (tmp_path / "federated_rounds.png").stat().st_size > 0
    assert "![per-round accuracy](federated_rounds.png)" in markdown(report)


def test_devices_out_of_budget_are_counted_and_said():
    report = _report([_round(1, 10, 0, None), _round(2, 6, 4, None), _round(3, 2, 8, 0.02)])
    assert refusals(report["arms"]["federated_dp"]) == (12, 30, 2)
    text = markdown(report)
    assert "federated_dp: 12 of 30 device-rounds (40%) were sat out by devices that had spent their budget" in text
    assert "the first in round 2" in text
    assert "sat out" not in markdown(_report([_round(1, 10, 0, None)]))


def test_a_sweep_curve_needs_two_budgets():
    one = [{"mechanism": "federated_dp", "epsilon": 8.0, "ndcg@10": 0.03}]
    one.append({"mechanism": "federated", "epsilon": "no DP", "ndcg@10": 0.05})
    assert sweep_curves(one) == {}
    two = [*one, {"mechanism": "federated_dp", "epsilon": 2.0, "ndcg@10": 0.02}]
    assert sweep_curves(two) == {"federated_dp": ([8.0, 2.0], [0.03, 0.02])}
