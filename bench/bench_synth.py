"""How close a synthetic population is to ML-100K, and what writing 100k users costs.

    python -m bench.bench_synth [--users 943,100000] [--items 1682,3000] [--seed 0] [--out DIR]

Measured in one run: the fit (in process), then for each (users, items) pair the whole
``fedrec data synth`` command in a child process (wall time, peak RSS of the child, CSV size), and the
statistics of docs/synth.md for ML-100K beside each population (computed on the same population in
memory: the CSV holds exactly those rows, tests/test_synth.py checks that). The accuracy rows of the
table come from ``fedrec baseline`` on the CSV (see docs/synth.md), not from here.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedrec.common.datasets import load_dataset
from fedrec.simulations.synth.fit import fit_synth
from fedrec.simulations.synth.generate import synthesize
from fedrec.simulations.synth.measure import PopulationStats, measure

SYNTH = [sys.executable, "-m", "fedrec.simulations.main", "data", "synth"]

ROWS = (
    ("users", "{:,}"),
    ("items", "{:,}"),
    ("interactions", "{:,}"),
    ("per_user_mean", "{:.1f}"),
    ("per_user_median", "{:.0f}"),
    ("per_user_p90", "{:.0f}"),
    ("item_gini", "{:.3f}"),
    ("d1", "{:.3f}"),
    ("d7", "{:.3f}"),
    ("d30", "{:.3f}"),
    ("active_days_mean", "{:.2f}"),
    ("single_day_share", "{:.3f}"),
    ("heldout_shift", "{:+.3f}"),
    ("order_spearman", "{:+.3f}"),
    ("validation_lift", "{:.2f}"),
    ("rating_mean", "{:.3f}"),
)


def run_cli(users: int, items: int, seed: int, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one ``fedrec data synth`` child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(
        [
            *SYNTH,
            "--users",
            str(users),
            "--items",
            str(items),
            "--seed",
            str(seed),
            "--out",
            str(out),
        ],
        check=True,
    )
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:  # ru_maxrss is the largest child so far: a smaller later child cannot be told apart
        return wall, float("nan")
    return wall, peak / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="943,100000")
    parser.add_argument("--items", default="1682,3000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Where the CSVs go (default: a temp dir).")
    args = parser.parse_args()
    sizes = list(zip([int(x) for x in args.users.split(",")], [int(x) for x in args.items.split(",")]))
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-synth-"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console()

    source = load_dataset("ml-100k")
    t0 = time.perf_counter()
    stats = fit_synth(source, args.seed)
    fit_s = time.perf_counter() - t0
    console.print(
        f"fit to ml-100k: {fit_s:.1f} s (taste strength {stats.taste.strength:.2f}, "
        f"time-order spread {stats.order_spread:.2f})"
    )

    columns: list[tuple[str, PopulationStats]] = [("ML-100K", measure(source))]
    costs = Table("users x items", "command wall s", "peak RSS GB", "CSV MB", "in-memory draw s")
    for users, items in sizes:
        csv_path = out / f"synth_{users}x{items}_s{args.seed}.csv"
        wall, rss = run_cli(users, items, args.seed, csv_path)
        t0 = time.perf_counter()
        population = synthesize(stats, users, items, args.seed)
        draw_s = time.perf_counter() - t0
        columns.append((f"synth {users:,} x {items:,}", measure(population)))
        costs.add_row(
            f"{users:,} x {items:,}",
            f"{wall:.1f}",
            f"{rss:.2f}",
            f"{csv_path.stat().st_size / 1e6:.0f}",
            f"{draw_s:.1f}",
        )
        del population

    table = Table("statistic", *[name for name, _ in columns])
    for field, fmt in ROWS:
        table.add_row(field, *[fmt.format(getattr(s, field)) for _, s in columns])
    console.print(table)
    console.print(costs)
    console.print(f"CSVs in {out}")


if __name__ == "__main__":
    main()
