"""`fedrec simulate`: the centralized arms and the federated arms on one split, one report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fedrec.common.config import FedrecConfig
from fedrec.common.datasets import Interactions, load_dataset
from fedrec.common.errors import FedrecError
from fedrec.common.settings import SettingError
from fedrec.simulations.arms.base import Fitter, budget_of
from fedrec.simulations.arms.registry import at_budget, bind
from fedrec.simulations.arms.table import Arm, arms_named, sweep_arm_name, swept
from fedrec.simulations.experiment import Experiment
from fedrec.simulations.federated_report import sweep_curves
from fedrec.simulations.ray_backend import require_head


def build_experiment(
    cfg: FedrecConfig,
    arms: list[str],
    dataset: str | Interactions,
    out: Path,
    seeds: list[int],
    data_dir: str | None,
    users: int | None,
    sweep: list[float],
    show: bool,
    retention: bool = True,
) -> Experiment:
    """Every arm of ``arms`` (the table's names) bound to its settings, and each arm that sweeps again at
    every budget of ``sweep``; the centralized arms first, then the federated ones, then the sweep arms.
    ``dataset``: a name or CSV path, loaded once the settings are checked, or data already loaded."""
    for eps in sweep:  # each budget is checked as the config's epsilon is, before the data loads
        try:
            replace(cfg.federation.privacy, epsilon=eps)
        except SettingError as exc:
            raise FedrecError(f"--sweep: epsilon {eps} {exc}") from None
    chosen = arms_named(arms)
    if any(arm.federated for arm in chosen):  # before the data loads and anything is written into --out
        require_head(cfg.simulation.ray_address)
    if isinstance(dataset, Interactions):
        data = dataset.subset_users(users) if users else dataset
    else:
        data = load_dataset(dataset, data_dir, users)
    # the background arms fit in a second process beside the federated ones (their progress lines are
    # printed by this one: simulations/progress.py)
    beside = cfg.simulation.background_central and any(arm.federated for arm in chosen)

    def fitter(arm: Arm, name: str, config: FedrecConfig) -> Fitter:
        return bind(arm, config, name, show, data, Path(out), seeds[0])

    ordered = [a for a in chosen if not a.federated] + [a for a in chosen if a.federated]
    fitters = {arm.name: fitter(arm, arm.name, cfg) for arm in ordered}
    background = {arm.name for arm in ordered if arm.background}
    repeated = swept(chosen)
    for arm in repeated:
        for eps in sweep:
            name = sweep_arm_name(arm.name, eps)
            fitters[name] = fitter(arm, name, at_budget(cfg, arm, eps))
            if arm.background:
                background.add(name)
    post: list[Callable[[dict, Path], None]] = [add_federated_plots]
    if sweep or any(arm.private for arm in chosen):
        run_budgets = {arm.name: budget_of(arm, cfg).epsilon for arm in repeated}
        post.insert(0, add_sweep(sweep, run_budgets))
    return Experiment(
        dataset=data.name,
        out=Path(out),
        fitters=fitters,
        seeds=seeds,
        data_dir=data_dir,
        users=users,
        config=cfg.to_dict(),
        show=show,
        retention=retention,
        data=data,
        post=post,
        background=frozenset(background) if beside else frozenset(),
    )


def add_sweep(epsilons: list[float], run_budgets: dict[str, float]) -> Callable[[dict, Path], None]:
    """Report step: accuracy of every swept arm (mapped to the epsilon it runs at without --sweep) at each
    budget, and federated without DP, as a table and one plot, a curve per arm, the non-private arms as lines."""

    def step(report: dict, run_dir: Path) -> None:
        from fedrec.simulations.plots import curves

        arms = report["arms"]
        rows = []
        for arm, run_epsilon in run_budgets.items():
            points = {(e, sweep_arm_name(arm, e)) for e in epsilons} | {(run_epsilon, arm)}
            for eps, name in sorted(points):
                if name in arms:
                    accuracy = arms[name]["accuracy"]
                    rows.append({"mechanism": arm, "epsilon": eps, "arm": name, **_accuracy(accuracy)})
        if "federated" in arms:
            rows.append(
                {
                    "mechanism": "federated",
                    "epsilon": "no DP",
                    "arm": "federated",
                    **_accuracy(arms["federated"]["accuracy"]),
                }
            )
        if not rows:
            return
        report["epsilon_sweep"] = rows
        series = sweep_curves(rows)
        if not series:  # each arm at one budget: the table says it all
            return
        xs = [x for xs_, _ in series.values() for x in xs_]
        for ref in ("federated", "centralized", "popularity"):
            if ref in arms:
                label = ref + (" (no DP)" if ref == "federated" else "")
                series[label] = ([min(xs), max(xs)], [arms[ref]["accuracy"]["ndcg@10"]] * 2)
        curves(
            series,
            run_dir / "epsilon_sweep.png",
            "epsilon (delta 1e-5; each arm's unit in the privacy table)",
            "test NDCG@10 (full ranking)",
            "accuracy against the privacy budget",
        )

    return step


def _accuracy(accuracy: dict) -> dict:
    return {k: accuracy[k] for k in ("hr@10", "ndcg@10")}


def add_federated_plots(report: dict, run_dir: Path) -> None:
    from fedrec.simulations.federated_report import write_plots

    write_plots(report, run_dir)
