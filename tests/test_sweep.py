"""`fedrec simulate --sweep`: every private arm of the run is repeated at each budget, and the report
gets one accuracy-versus-epsilon table and plot with a curve per arm."""

from __future__ import annotations

from pathlib import Path

from fedrec.common.config import load_config
from fedrec.simulations.simulate import add_sweep, build_experiment


def _tiny_csv(tmp_path: Path, tiny) -> Path:
    csv = tmp_path / "tiny.csv"
    csv.write_text(
        "user,item,timestamp,rating\n"
        + "".join(f"{u},{i},{t},4\n" for u, i, t in zip(tiny.users, tiny.items, tiny.timestamps))
    )
    return csv


def _arms(**ndcg: float) -> dict:
    return {name: {"accuracy": {"hr@10": 2 * v, "ndcg@10": v}} for name, v in ndcg.items()}


def test_sweep_rows_and_plot_have_one_curve_per_private_arm(tmp_path):
    report = {
        "arms": _arms(
            popularity=0.04,
            federated=0.05,
            federated_dp=0.03,
            federated_dp_eps2=0.02,
            centralized_dp=0.051,
            centralized_dp_eps2=0.045,
        )
    }
    add_sweep([2.0], {"federated_dp": 8.0, "centralized_dp": 8.0})(report, tmp_path)
    rows = [(r["mechanism"], r["epsilon"], r["arm"], r["ndcg@10"]) for r in report["epsilon_sweep"]]
    assert rows == [
        ("federated_dp", 2.0, "federated_dp_eps2", 0.02),
        ("federated_dp", 8.0, "federated_dp", 0.03),
        ("centralized_dp", 2.0, "centralized_dp_eps2", 0.045),
        ("centralized_dp", 8.0, "centralized_dp", 0.051),
        ("federated", "no DP", "federated", 0.05),
    ]
    assert (tmp_path / "epsilon_sweep.png").stat().st_size > 0


def test_the_run_sweeps_its_own_private_arms(tmp_path, tiny):
    csv = _tiny_csv(tmp_path, tiny)
    arms = ["popularity", "centralized_dp", "federated_user_dp"]
    exp = build_experiment(load_config(), arms, str(csv), tmp_path / "run", [0], None, None, [1.0, 2.0], show=False)
    assert set(exp.fitters) - set(arms) == {
        "centralized_dp_eps1",
        "centralized_dp_eps2",
        "federated_user_dp_eps1",
        "federated_user_dp_eps2",
    }


def test_the_sweep_starts_at_each_arms_own_budget(tmp_path, tiny):
    """federated_ddp's budget is its own branch's: the report's sweep puts its run arm at that epsilon."""
    csv = _tiny_csv(tmp_path, tiny)
    cfg = load_config(None, {"federated_ddp.privacy.epsilon": 4.0})
    exp = build_experiment(
        cfg, ["federated_dp", "federated_ddp"], str(csv), tmp_path / "run", [0], None, None, [], False
    )
    report = {"arms": _arms(federated_dp=0.03, federated_ddp=0.04)}
    exp.post[0](report, tmp_path)
    assert [(r["arm"], r["epsilon"]) for r in report["epsilon_sweep"]] == [
        ("federated_ddp", 4.0),
        ("federated_dp", 8.0),
    ]
