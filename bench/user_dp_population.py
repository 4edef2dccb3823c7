"""federated_user_dp against federated and popularity as the synthetic population grows (issue 13).

    python -m bench.user_dp_population [--users 943,10000] [--items 1682] [--seed 0]
                                       [--config bench/configs/user_dp_population.toml] --out DIR

For each population size N: ``fedrec data synth`` writes DIR/synth-N.csv (kept and reused if present:
the same seed and sizes give the same file), then ``fedrec simulate`` runs popularity, federated and
federated_user_dp on it into DIR/N (a finished DIR/N/report.json is read instead of run again, since
the harness refuses a used run dir). Both are the real CLI, each in its own child process, one at a time.
Every N runs under the same config (epsilon, delta, C, participation q, rounds), so only the population
changes: the user-level noise on the mean update, sigma C / (q N), shrinks as 1/N while the per-user
guarantee stays the same. Prints one table and saves DIR/ndcg_vs_users.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ARMS = ("popularity", "federated", "federated_user_dp")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "user_dp_population.toml"


def fedrec(*args: str) -> list[str]:
    """The `fedrec` console script, run by this interpreter (so the same installation answers)."""
    return [sys.executable, "-m", "fedrec.simulations.main", *args]


def run_logged(cmd: list[str], log: Path) -> float:
    """Run one CLI command with its output in ``log``; wall seconds. A failure stops the bench."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}: {tail[0]} (log: {log})")
    return time.perf_counter() - t0


def summarize(report: dict, wall_s: float) -> dict:
    """One table row from a run's report.json: test accuracy of the three arms and the user-level terms."""
    arms = report["arms"]
    acc = {arm: arms[arm]["accuracy"] for arm in ARMS}
    privacy = arms["federated_user_dp"]["privacy"]
    config = report["meta"]["config"]["federation"]
    users = int(report["meta"]["n_users"])
    q = float(privacy["sample_rate"])
    sigma = float(privacy["noise_multiplier"])
    clip = float(config["privacy"]["max_update_norm"])
    udp, fed, pop = (acc[a]["ndcg@10"] for a in ("federated_user_dp", "federated", "popularity"))
    return {
        "users": users,
        **{f"{arm}_ndcg": acc[arm]["ndcg@10"] for arm in ARMS},
        **{f"{arm}_hr": acc[arm]["hr@10"] for arm in ARMS},
        "udp_over_fed": udp / fed if fed else float("nan"),
        "udp_over_pop": udp / pop if pop else float("nan"),
        "epsilon": float(privacy["epsilon_max"]),
        "delta": float(privacy["delta"]),
        "unit": privacy["unit"],
        "sigma": sigma,
        "q": q,
        "rounds": int(config["server"]["rounds"]),
        "clip": clip,
        "mean_noise_std": sigma * clip / (q * users),
        "wall_s": wall_s,
    }


def one_population(users: int, args: argparse.Namespace, console: Console) -> dict:
    data = args.out / f"synth-{users}.csv"
    if not data.exists():
        console.print(f"N={users:,}: fedrec data synth ...")
        synth_s = run_logged(
            fedrec("data", "synth", "--users", str(users), "--items", str(args.items), "--seed", str(args.seed))
            + ["--out", str(data)],
            args.out / f"synth-{users}.log",
        )
        console.print(f"N={users:,}: synthetic population written in {synth_s:.0f} s")
    run_dir = args.out / str(users)
    report_file = run_dir / "report.json"
    if report_file.exists():
        report = json.loads(report_file.read_text())
        console.print(f"N={users:,}: reusing finished run {run_dir} (wall {report['meta']['wall_s']:.0f} s)")
        return summarize(report, float(report["meta"]["wall_s"]))
    console.print(f"N={users:,}: fedrec simulate {','.join(ARMS)} ... (log {run_dir}.log)")
    wall_s = run_logged(
        fedrec("simulate", "--dataset", str(data), "--config", str(args.config), "--arms", ",".join(ARMS))
        + ["--seeds", str(args.seed), "--no-retention", "--out", str(run_dir)],
        args.out / f"{users}.log",
    )
    console.print(f"N={users:,}: done in {wall_s:.0f} s")
    return summarize(json.loads(report_file.read_text()), wall_s)


def table(rows: list[dict]) -> Table:
    t = Table(
        "N",
        "pop NDCG",
        "fed NDCG",
        "udp NDCG",
        "pop HR",
        "fed HR",
        "udp HR",
        "udp/fed",
        "udp/pop",
        "eps (user)",
        "sigma",
        "q",
        "rounds",
        "C",
        "noise/mean",
        "wall s",
        title="test NDCG@10 / HR@10, full ranking (udp = federated_user_dp)",
    )
    for r in rows:
        t.add_row(
            f"{r['users']:,}",
            *(f"{r[f'{arm}_ndcg']:.4f}" for arm in ARMS),
            *(f"{r[f'{arm}_hr']:.4f}" for arm in ARMS),
            f"{r['udp_over_fed']:.2f}",
            f"{r['udp_over_pop']:.2f}",
            f"{r['epsilon']:.3f}",
            f"{r['sigma']:.3f}",
            f"{r['q']:g}",
            str(r["rounds"]),
            f"{r['clip']:g}",
            f"{r['mean_noise_std']:.5f}",
            f"{r['wall_s']:.0f}",
        )
    return t


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [r["users"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, style in zip(ARMS, ("s--", "o-", "^-"), strict=True):
        ax.plot(users, [r[f"{arm}_ndcg"] for r in rows], style, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("users (devices) in the synthetic population")
    ax.set_ylabel("test NDCG@10 (full ranking, seed 0)")
    ax.set_title(f"user-level epsilon {rows[0]['epsilon']:.0f}: accuracy against population size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="943,10000")
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--seed", type=int, default=0, help="generator seed and split seed")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, required=True, help="work dir: synthetic CSVs, run dirs, logs, plot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)
    rows = [one_population(int(n), args, console) for n in args.users.split(",")]
    console.print(table(rows))
    (args.out / "table.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "ndcg_vs_users.png")
    console.print(f"rows: {args.out / 'table.json'}  plot: {args.out / 'ndcg_vs_users.png'}")


if __name__ == "__main__":
    main()
