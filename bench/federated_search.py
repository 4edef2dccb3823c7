"""The federated arm's recipe search on validation, through the real harness (issue 11's parity half).

    python -m bench.federated_search [--arm federated|federated_dp] [--seeds 0,1,2]
                                     [--configs bench/configs/federated_search] [--only default,p50-e2] --out DIR

Every candidate is a TOML file of overrides (its name is the file's stem). For each candidate and seed,
``fedrec simulate --arms ARM --seeds S --no-retention`` runs into DIR/NAME-sS (federated) or
DIR/NAME-ARM-sS (a finished run's report.json is read instead of run again). The score is the devices'
own validation NDCG@10: each device ranks its validation item after refitting its serving row on its
train part, which never sees a test item. For ``federated`` that is the run's own on-device evaluation
at each evaluated round; a private arm's devices rank nothing during the run (their reply is a count),
so its score is the same evaluation run afterwards on the final model and the run's stores
(``bench.serving_refit.validation``). The harness keeps the rounds of its primary seed only, so every
seed is its own run. Test numbers are not printed: the choice is made on validation (docs/simulate.md
holds the table).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.serving_refit import validation
from bench.user_dp_population import fedrec, run_logged
from fedrec.common.datasets import load_dataset
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.simple import fit_popularity
from fedrec.simulations.stats import mean_ci

CONFIGS = Path(__file__).parent / "configs" / "federated_search"


def validation_curve(report: dict, arm: str, run_dir: Path) -> dict[int, float]:
    """Round -> validation NDCG@10 of the run's arm (a private arm: its last round only)."""
    info = report["arms"][arm]["info"]
    rounds = info["rounds"]
    curve = {int(r["round"]): float(r["evaluate"]["ndcg@10"]) for r in rounds if r.get("evaluate", {}).get("ndcg@10")}
    if not curve:
        curve = {int(rounds[-1]["round"]): validation(run_dir, arm)[1]}
    return curve


def run_one(config: Path, arm: str, seed: int, out: Path, console: Console) -> tuple[dict[int, float], float, str]:
    run_dir = out / (f"{config.stem}-s{seed}" if arm == "federated" else f"{config.stem}-{arm}-s{seed}")
    report_file = run_dir / "report.json"
    if not report_file.exists():
        console.print(f"{config.stem} seed {seed}: fedrec simulate --arms {arm} ... (log {run_dir}.log)")
        cmd = fedrec("simulate", "--config", str(config), "--arms", arm, "--seeds", str(seed))
        cmd += ["--no-retention", "--quiet", "--out", str(run_dir)]
        run_logged(cmd, out / f"{run_dir.name}.log")
    report = json.loads(report_file.read_text())
    privacy = report["arms"][arm].get("privacy")
    spent = f"{privacy['epsilon_median']:.2f} / {privacy['epsilon_budget']:g}" if privacy else ""
    return validation_curve(report, arm, run_dir), float(report["arms"][arm]["info"]["fit_s"]), spent


def popularity_validation(seed: int) -> float:
    """The line to beat: popularity's validation NDCG@10 on the same split."""
    split = temporal_split(load_dataset("ml-100k"), seed)
    return hit_ndcg(full_ranks(fit_popularity(split, seed).scores, split, "validation", seed))[1]


def interval(values: list[float]) -> str:
    """Mean and the half-width of its 95% t-interval over seeds (the report's own ``mean_ci``)."""
    ci = mean_ci(values)
    return f"{ci['mean']:.4f}" if len(values) < 2 else f"{ci['mean']:.4f} ± {ci['ci95'][1] - ci['mean']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", default="federated", choices=("federated", "federated_dp"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--configs", type=Path, default=CONFIGS)
    parser.add_argument("--only", default="", help="comma-separated candidate names (default: every file)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = sorted(args.configs.glob("*.toml"))
    if args.only:
        wanted = args.only.split(",")
        missing = sorted(set(wanted) - {c.stem for c in configs})
        if missing:
            raise SystemExit(f"error: --only: no {', '.join(missing)} in {args.configs}")
        configs = [c for c in configs if c.stem in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=160)
    table = Table(
        "candidate",
        "seed",
        "validation NDCG@10 by round",
        "last round",
        "fit s",
        "epsilon median / budget",
        title=f"{args.arm}, on-device validation NDCG@10 (full ranking)",
    )
    summary = Table(
        "candidate", "last-round validation NDCG@10, mean ± 95%", "per seed", title=f"over seeds {args.seeds}"
    )
    t0 = time.perf_counter()
    for config in configs:
        lasts = []
        for seed in seeds:
            curve, fit_s, spent = run_one(config, args.arm, seed, args.out, console)
            last = curve[max(curve)]
            lasts.append(last)
            table.add_row(
                config.stem,
                str(seed),
                " ".join(f"{r}:{v:.4f}" for r, v in curve.items()),
                f"{last:.4f}",
                f"{fit_s:.0f}",
                spent,
            )
        summary.add_row(config.stem, interval(lasts), " ".join(f"{v:.4f}" for v in lasts))
    pop = [popularity_validation(seed) for seed in seeds]
    summary.add_row("(popularity)", interval(pop), " ".join(f"{v:.4f}" for v in pop))
    console.print(table)
    console.print(summary)
    console.print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
