"""report.md section for the federated arms: per-round curves, the epsilon distribution, privacy terms."""

from __future__ import annotations

from pathlib import Path

from fedrec.simulations.plots import curves


def _fed_arms(report: dict) -> dict[str, dict]:
    return {n: a for n, a in report["arms"].items() if "rounds" in a.get("info", {})}


def round_curves(report: dict) -> dict[str, tuple[list[int], list[float]]]:
    """Validation NDCG@10 per evaluated round of each federated arm that has a curve (two points or more):
    a single evaluation is a number in the table, not a plot."""
    series = {}
    for name, arm in _fed_arms(report).items():
        rounds = [r for r in arm["info"]["rounds"] if "ndcg@10" in r["evaluate"]]
        if len(rounds) >= 2:
            series[name] = ([r["round"] for r in rounds], [r["evaluate"]["ndcg@10"] for r in rounds])
    return series


def refusals(arm: dict) -> tuple[int, int, int | None]:
    """Device-rounds sat out because the device's budget was spent, device-rounds asked, the first such round."""
    rounds = arm["info"]["rounds"]
    refused = [int(r["train"].get("refused", 0)) for r in rounds]
    asked = sum(refused) + sum(int(r["train"].get("devices", 0)) for r in rounds)
    first = next((r["round"] for r, n in zip(rounds, refused) if n), None)
    return sum(refused), asked, first


def write_plots(report: dict, run_dir: Path) -> None:
    """federated_rounds.png (validation NDCG@10 per round) and epsilon.png (per-device epsilon)."""
    import matplotlib.pyplot as plt

    arms = _fed_arms(report)
    if not arms:
        return
    series = round_curves(report)
    central = report["arms"].get("centralized", {}).get("info", {}).get("val_ndcg@10")
    if series and central is not None:
        xs = series[next(iter(series))][0]
        series["centralized (best val)"] = ([xs[0], xs[-1]], [central, central])
    if series:
        curves(
            series,
            run_dir / "federated_rounds.png",
            "round",
            "validation NDCG@10 (on devices)",
            "federated training, accuracy per round",
        )
    private = {n: a for n, a in arms.items() if "privacy" in a}
    if private:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, arm in private.items():
            ax.hist(_ledger_epsilons(run_dir, arm), bins=30, alpha=0.6, label=name)
        ax.set_xlabel("cumulative epsilon per device (record-level, RDP)")
        ax.set_ylabel("devices")
        ax.set_title("per-device privacy spent")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "epsilon.png", dpi=110)
        plt.close(fig)


def _ledger_epsilons(run_dir: Path, arm: dict) -> list[float]:
    import csv

    path = run_dir / "privacy" / arm["privacy"]["ledger"]
    if not path.exists():
        return []
    per_device = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            per_device[row["device_id"]] = float(row["epsilon"])
    return list(per_device.values())


def markdown(report: dict) -> str:
    arms = _fed_arms(report)
    if not arms:
        return ""
    lines = ["## Federated training", ""]
    lines.append("| arm | rounds | strategy | device fraction | local lr | noise multiplier | final val NDCG@10 |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, arm in arms.items():
        fed, noise = arm["info"]["federation"], arm["info"]["device_privacy"]["noise_multiplier"]
        server, device = fed["server"], fed["device"]
        last = (
            arm["info"]["rounds"][-1]["evaluate"].get("ndcg@10", float("nan"))
            if arm["info"]["rounds"]
            else float("nan")
        )
        lines.append(
            f"| {name} | {server['rounds']} | {server['strategy']['name']} (server lr "
            f"{server['strategy']['server_lr']}) | {device['participation']} | {device['training']['lr']} | "
            f"{noise:.3f} | {last:.4f} |"
        )
    lines.append("")
    if round_curves(report):
        lines += ["![per-round accuracy](federated_rounds.png)", ""]
    private = {n: a for n, a in arms.items() if "privacy" in a}
    if private:
        lines += [
            "### Privacy",
            "",
            "| arm | epsilon max | epsilon median | against the server: max | median | delta | noise multiplier "
            "| sample rate | steps (max) | unit |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, arm in private.items():
            p = arm["privacy"]
            server = [p.get(f"epsilon_server_{k}") for k in ("max", "median")]
            lines.append(
                f"| {name} | {p['epsilon_max']:.3f} | {p['epsilon_median']:.3f} | "
                + " | ".join("-" if v is None else f"{v:.3f}" for v in server)
                + f" | {p['delta']:g} | {p['noise_multiplier']:.4f} | {p['sample_rate']:.4f} | {p['steps']} | "
                f"{p['unit']} |"
            )
        lines += [
            "",
            "Epsilon is composed over every step each device ever took (Opacus RDP accountant), against an "
            "observer of the released model and against the server (which sees only what the model is "
            "computed from: records are sampled on the device, and under user-level DP every device sends a "
            "noisy share each round, so no one's coin shows; docs/privacy.md). The ledgers in `privacy/` "
            "(`<arm>_ledger.csv`, `<arm>_server_ledger.csv`) let anyone recompute both from (noise "
            "multiplier, sample rate, steps).",
            "",
        ]
        for name, arm in private.items():
            refused, asked, first = refusals(arm)
            if refused:
                lines += [
                    f"{name}: {refused} of {asked} device-rounds ({refused / asked:.0%}) were sat out by devices "
                    f"that had spent their budget, the first in round {first}; what those devices would have "
                    "contributed afterwards is missing from the model (a smaller sample rate or fewer rounds "
                    "spreads the budget over the run).",
                    "",
                ]
        lines += ["![epsilon per device](epsilon.png)", ""]
    sweep = report.get("epsilon_sweep")
    if sweep:
        lines += [
            "### Accuracy against the privacy budget",
            "",
            "| arm | epsilon | HR@10 | NDCG@10 |",
            "| --- | --- | --- | --- |",
        ]
        for row in sweep:
            mechanism = row.get("mechanism", "federated_dp")
            lines.append(f"| {mechanism} | {row['epsilon']} | {row['hr@10']:.4f} | {row['ndcg@10']:.4f} |")
        lines.append("")
        if sweep_curves(sweep):
            lines += ["![accuracy vs epsilon](epsilon_sweep.png)", ""]
    return "\n".join(lines)


def sweep_curves(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Test NDCG@10 against epsilon of each private arm run at two budgets or more (--sweep)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        if isinstance(row["epsilon"], (int, float)):
            xs, ys = series.setdefault(row.get("mechanism", "federated_dp"), ([], []))
            xs.append(row["epsilon"])
            ys.append(row["ndcg@10"])
    return {arm: xy for arm, xy in series.items() if len(xy[0]) >= 2}
