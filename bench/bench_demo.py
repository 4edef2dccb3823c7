"""`make demo`'s `fedrec simulate`, timed as the whole command, against the 5-minute target.

    python -m bench.bench_demo [--sequential] [-- EXTRA FEDREC SIMULATE ARGS]

Runs the installed `fedrec simulate` into a fresh temporary dir and prints the command's wall time, each
arm's fit time (from the report) and the ratio to 300 s. ``--sequential`` also runs it with the
centralized arms fitted one after the other (`simulation.background_central = false`), in the same run,
and prints the ratio of the two wall times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

TARGET_S = 300.0


def timed_run(extra: list[str], sequential: bool) -> tuple[float, dict]:
    """Wall seconds of one whole `fedrec simulate`, and its report."""
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    try:
        argv = [str(Path(sys.executable).with_name("fedrec")), "simulate", "--out", str(work / "run"), *extra]
        if sequential:
            (work / "sequential.toml").write_text("[simulation]\nbackground_central = false\n")
            argv += ["--config", str(work / "sequential.toml")]
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        return wall, json.loads((work / "run" / "report.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", action="store_true", help="also time the arms one after the other")
    parser.add_argument("extra", nargs="*", help="more `fedrec simulate` arguments (after --)")
    args = parser.parse_args()
    runs = {"beside (default)": timed_run(args.extra, sequential=False)}
    if args.sequential:
        runs["one after the other"] = timed_run(args.extra, sequential=True)
    table = Table(title="fedrec simulate, whole command (seconds)")
    table.add_column("")
    for name in runs:
        table.add_column(name, justify="right")
    table.add_row("wall", *[f"{wall:.1f}" for wall, _ in runs.values()])
    table.add_row("x 5 minutes", *[f"{wall / TARGET_S:.2f}" for wall, _ in runs.values()])
    for arm in next(iter(runs.values()))[1]["arms"]:
        table.add_row(f"{arm} fit", *[f"{report['arms'][arm]['info']['fit_s']:.1f}" for _, report in runs.values()])
    console = Console()
    console.print(table)
    commit = next(iter(runs.values()))[1]["meta"]["git_commit"]
    console.print(f"commit {commit}")
    if args.sequential:
        walls = [wall for wall, _ in runs.values()]
        console.print(f"one after the other / beside: {walls[1] / walls[0]:.2f}")


if __name__ == "__main__":
    main()
