"""`fedrec simulate`: the centralized arms and the federated arms on one split, one report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedrec.common.config import FederationConfig, FedrecConfig, PrivacyConfig
from fedrec.simulations.arm_names import FEDERATED_ARMS
from fedrec.simulations.arms.registry import central_fitters
from fedrec.simulations.experiment import Experiment, load
from fedrec.simulations.federated import FederatedArm, fit_federated

MECHANISM_OF = {"federated": "none", "federated_dp": "local", "federated_user_dp": "user"}


def sweep_arm_name(epsilon: float) -> str:
    return f"federated_dp_eps{epsilon:g}"


def build_experiment(
    cfg: FedrecConfig,
    arms: list[str],
    dataset: str,
    out: Path,
    seeds: list[int],
    data_dir: str | None,
    users: int | None,
    sweep: list[float],
    show: bool,
    retention: bool = True,
) -> Experiment:
    data = load(dataset, data_dir, users)
    central = [a for a in arms if a not in FEDERATED_ARMS]
    fitters = central_fitters(central, cfg, show=show)

    def federated(name: str, privacy: PrivacyConfig, federation: FederationConfig | None = None):
        arm = FederatedArm(
            name=name,
            data=data,
            run_dir=Path(out),
            federation=replace(federation or cfg.federation, privacy=privacy),
            nodes=cfg.simulation.nodes,
            ray_address=cfg.simulation.ray_address,
            primary_seed=seeds[0],
            show=show,
        )
        return lambda split, seed: fit_federated(arm, split, seed)

    privacy = cfg.federation.privacy
    for name in arms:
        if name == "federated_ddp":
            fitters[name] = federated(
                name,
                replace(privacy, mechanism="distributed", max_grad_norm=cfg.centralized_dp.max_grad_norm),
                shared_noise_federation(cfg),
            )
        elif name in FEDERATED_ARMS:  # federated_user_dp: the federated recipe, its updates clipped and noised
            fitters[name] = federated(name, replace(privacy, mechanism=MECHANISM_OF[name]))
    for eps in sweep:
        fitters[sweep_arm_name(eps)] = federated(sweep_arm_name(eps), replace(privacy, mechanism="local", epsilon=eps))
    post = [add_federated_plots]
    if sweep or "federated_dp" in arms:
        post.insert(0, add_sweep(sweep, privacy.epsilon))
    return Experiment(
        dataset=dataset,
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
    )


def shared_noise_federation(cfg: FedrecConfig) -> FederationConfig:
    """federated_ddp runs the centralized_dp recipe: its model (the prior in the item table's last column),
    negatives and clipping norm; every device in every round; one histogram round, then ``steps`` rounds."""
    recipe, federation = cfg.centralized_dp, cfg.federation
    device = federation.device
    model = replace(recipe.model, kind="gmf", item_bias=device.shared_noise.count_sigma > 0)
    device = replace(
        device,
        model=model,
        training=replace(device.training, negatives=recipe.negatives),
        participation=1.0,
    )
    rounds = device.shared_noise.steps + int(device.shared_noise.count_sigma > 0)
    strategy = replace(federation.server.strategy, name="fedavg", node_fraction=1.0)
    server = replace(federation.server, rounds=rounds, strategy=strategy)
    return replace(federation, server=server, device=device)


def add_sweep(epsilons: list[float], fed_epsilon: float):
    """Report step: accuracy at each budget (and without DP) as a table and a plot."""

    def step(report: dict, run_dir: Path) -> None:
        from fedrec.simulations.plots import curves

        arms = report["arms"]
        rows = []
        points = [(e, sweep_arm_name(e)) for e in epsilons]
        if "federated_dp" in arms and fed_epsilon:
            points.append((fed_epsilon, "federated_dp"))
        for eps, name in sorted(set(points)):
            if name in arms:
                rows.append(
                    {"epsilon": eps, "arm": name, **{k: arms[name]["accuracy"][k] for k in ("hr@10", "ndcg@10")}}
                )
        if "federated" in arms:
            rows.append(
                {
                    "epsilon": "no DP",
                    "arm": "federated",
                    **{k: arms["federated"]["accuracy"][k] for k in ("hr@10", "ndcg@10")},
                }
            )
        if not rows:
            return
        report["epsilon_sweep"] = rows
        finite = [r for r in rows if r["epsilon"] != "no DP"]
        series = {"federated_dp": ([r["epsilon"] for r in finite], [r["ndcg@10"] for r in finite])}
        xs = series["federated_dp"][0] or [1.0]
        for ref in ("federated", "centralized", "popularity"):
            if ref in arms:
                label = ref + (" (no DP)" if ref == "federated" else "")
                series[label] = ([min(xs), max(xs)], [arms[ref]["accuracy"]["ndcg@10"]] * 2)
        curves(
            series,
            run_dir / "epsilon_sweep.png",
            "epsilon (record-level, per device, delta 1e-5)",
            "test NDCG@10 (full ranking)",
            "accuracy against the privacy budget",
        )

    return step


def add_federated_plots(report: dict, run_dir: Path) -> None:
    from fedrec.simulations.federated_report import write_plots

    write_plots(report, run_dir)
