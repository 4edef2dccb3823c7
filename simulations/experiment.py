"""Run a set of arms over seeds on one dataset and write the run dir (baseline and simulate share it)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from fedrec.common.datasets import Interactions, load_dataset
from fedrec.common.errors import FedrecError
from fedrec.common.files import writable_dir
from fedrec.common.metrics import evaluate_scores
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.base import ArmResult, Fitter
from fedrec.simulations.background import BackgroundFits, timed_fit
from fedrec.simulations.plots import accuracy_bars
from fedrec.simulations.report import render
from fedrec.simulations.retention import run_retention
from fedrec.simulations.rundir import RunDir, git_commit
from fedrec.simulations.stats import summarize_runs


@dataclass
class Experiment:
    dataset: str
    out: Path
    fitters: dict[str, Fitter]
    seeds: list[int] = field(default_factory=lambda: [0])
    data_dir: str | None = None
    users: int | None = None
    config: dict = field(default_factory=dict)
    show: bool = True
    retention: bool = True  # run the retention simulator on every arm once the report is written
    data: Interactions | None = None  # already loaded (and subset) data, if the caller has it
    post: list[Callable[[dict, Path], None]] = field(default_factory=list)  # add to the report before writing
    # Arms fitted in a second process while the others run (simulations/background.py); their fitters pickle.
    background: frozenset[str] = frozenset()


def run(exp: Experiment) -> dict:
    """Fit every arm for every seed; the first seed's split, recommendations and scores go to disk."""
    console = Console(stderr=True, quiet=not exp.show)
    t0 = time.perf_counter()
    writable_dir(exp.out, "--out")  # fail before fitting, not after
    data = exp.data if exp.data is not None else load_dataset(exp.dataset, exp.data_dir, exp.users)
    if data.n_merged:
        console.print(
            f"{data.name}: {data.n_merged} repeated (user, item) rows merged into their latest "
            "occurrence (docs/protocol.md)",
            markup=False,
            highlight=False,
        )
    run_dir = RunDir.fresh(exp.out)
    run_dir.mark_incomplete()
    per_arm: dict[str, list[dict]] = {name: [] for name in exp.fitters}
    info: dict[str, dict] = {}
    for seed in exp.seeds:
        split = temporal_split(data, seed)
        primary = seed == exp.seeds[0]
        if primary:
            run_dir.write_split(split, data)

        def record(name: str, result: ArmResult, fit_s: float) -> None:
            acc = evaluate_scores(result.scores, split, "test", seed)
            per_arm[name].append(acc)
            console.print(f"  {name}: " + "  ".join(f"{k} {v:.4f}" for k, v in acc.items()) + f"  ({fit_s:.1f} s)")
            if primary:
                info[name] = {**result.info, "fit_s": fit_s}
                run_dir.write_recommendations(name, result.scores, split, data)
                run_dir.write_scores(name, result.scores)
            else:  # the retention simulator's intervals over training seeds need every seed's scores
                run_dir.write_scores(name, result.scores, seed=seed)

        with BackgroundFits() as background:
            pending = {}
            for name in exp.fitters:
                if name in exp.background:
                    console.print(f"[bold]seed {seed}[/bold]: fitting {name} in a background process")
                    pending[name] = background.submit(exp.fitters[name], split, seed)
            for name, fit in exp.fitters.items():
                if name not in pending:
                    console.print(f"[bold]seed {seed}[/bold]: fitting {name}")
                    record(name, *timed_fit(fit, split, seed))
            for name, job in pending.items():
                if not job.ready():
                    console.print(f"[bold]seed {seed}[/bold]: waiting for {name}")
                record(name, *job.get())
    arms = {}
    for name, runs in per_arm.items():
        mean, detail = summarize_runs(runs)
        arms[name] = {"accuracy": mean, "accuracy_ci95": detail, "accuracy_seeds": runs, "info": info[name]}
        if "privacy" in info[name]:
            arms[name]["privacy"] = info[name].pop("privacy")
    report: dict[str, Any] = {
        "meta": {
            "dataset": data.name,
            "n_users": data.n_users,
            "n_items": data.n_items,
            "n_interactions": len(data),
            "duplicates_merged": data.n_merged,  # repeated (user, item) rows merged into their latest (docs/protocol.md)
            "users": exp.users,
            "seed": exp.seeds[0],
            "seeds": exp.seeds,
            "git_commit": git_commit(),
            "wall_s": time.perf_counter() - t0,
            "config": exp.config,
            "command": " ".join(["fedrec", *sys.argv[1:]]),
        },
        "arms": arms,
    }
    accuracy_bars(arms, run_dir.path / "accuracy.png")
    for step in exp.post:
        step(report, run_dir.path)
    if not exp.retention:
        report["retention"] = {"skipped": "not requested (--no-retention)"}
    report["meta"]["wall_s"] = time.perf_counter() - t0
    run_dir.write_report(report, render(report))
    run_dir.mark_complete()  # every arm is in; retention reads the run dir as any later stage does
    if exp.retention:
        report = retention_or_skip(run_dir, report, data, exp.show, console)
    return report


def retention_or_skip(run_dir: RunDir, report: dict, data: Interactions, show: bool, console: Console) -> dict:
    """Retention as the last stage; when the data cannot support it (e.g. no user ever returns), the
    report says so and keeps every other section, instead of the whole run failing."""
    try:
        return run_retention(run_dir.path, data, show=show)
    except FedrecError as exc:
        console.print(f"retention skipped: {exc}", markup=False, highlight=False)
        report["retention"] = {"skipped": str(exc)}
        run_dir.write_report(report, render(report))
        return report
