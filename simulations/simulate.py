"""`fedrec simulate`: the centralized arms and the federated arms on one split, one report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedrec.common.config import FederationConfig, FedrecConfig, PrivacyConfig
from fedrec.common.errors import FedrecError
from fedrec.common.settings import SettingError
from fedrec.simulations.arm_names import FEDERATED_ARMS, PRIVATE_ARMS
from fedrec.simulations.arms.registry import central_fitters
from fedrec.simulations.experiment import Experiment, load
from fedrec.simulations.federated import FederatedArm, fit_federated

MECHANISM_OF = {"federated": "none", "federated_dp": "local", "federated_user_dp": "user"}
BACKGROUND_ARMS = ("centralized", "centralized_dp")  # the centralized arms that take minutes


def sweep_arm_name(arm: str, epsilon: float) -> str:
    return f"{arm}_eps{epsilon:g}"


def swept_arms(arms: list[str]) -> list[str]:
    """The private arms --sweep repeats at each budget: those of the run, federated_dp when it has none."""
    return [a for a in PRIVATE_ARMS if a in arms] or ["federated_dp"]


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
    for eps in sweep:  # each budget is checked as the config's epsilon is, before the data loads
        try:
            replace(cfg.federation.privacy, epsilon=eps)
        except SettingError as exc:
            raise FedrecError(f"--sweep: epsilon {eps} {exc}") from None
    data = load(dataset, data_dir, users)
    central = [a for a in arms if a not in FEDERATED_ARMS]
    # a background fit shows no progress bar: its process does not own the terminal
    beside = cfg.simulation.background_central and len(central) < len(arms)
    fitters = central_fitters(central, cfg, show=show and not beside)

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

    def private(name: str, arm: str, epsilon: float):
        """The private ``arm`` at ``epsilon`` (delta and the rest of its settings as configured)."""
        at = replace(privacy, epsilon=epsilon)
        if arm == "centralized_dp":
            at_budget = replace(cfg, federation=replace(cfg.federation, privacy=at))
            return central_fitters([arm], at_budget, show=show and not beside)[arm]
        if arm == "federated_ddp":
            ddp = replace(at, mechanism="distributed", max_grad_norm=cfg.centralized_dp.max_grad_norm)
            return federated(name, ddp, shared_noise_federation(cfg))
        return federated(name, replace(at, mechanism=MECHANISM_OF[arm]))

    for name in arms:
        if name == "federated":
            fitters[name] = federated(name, replace(privacy, mechanism="none"))
        elif name in FEDERATED_ARMS:
            fitters[name] = private(name, name, privacy.epsilon)
    swept = swept_arms(arms)
    for arm in swept:
        for eps in sweep:
            fitters[sweep_arm_name(arm, eps)] = private(sweep_arm_name(arm, eps), arm, eps)
    background = {a for a in central if a in BACKGROUND_ARMS}
    background |= {sweep_arm_name(a, eps) for a in swept if a in BACKGROUND_ARMS for eps in sweep}
    post = [add_federated_plots]
    if sweep or any(a in arms for a in PRIVATE_ARMS):
        post.insert(0, add_sweep(sweep, privacy.epsilon, swept))
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
        background=frozenset(background) if beside else frozenset(),
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


def add_sweep(epsilons: list[float], run_epsilon: float, swept: list[str]):
    """Report step: accuracy of every swept arm at each budget (and federated without DP) as a table and
    one plot, a curve per arm, the non-private arms as lines."""

    def step(report: dict, run_dir: Path) -> None:
        from fedrec.simulations.plots import curves

        arms = report["arms"]
        rows = []
        for arm in swept:
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
        series = {}
        for arm in swept:
            finite = [r for r in rows if r["mechanism"] == arm]
            if finite:
                series[arm] = ([r["epsilon"] for r in finite], [r["ndcg@10"] for r in finite])
        xs = [x for xs_, _ in series.values() for x in xs_] or [1.0]
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
