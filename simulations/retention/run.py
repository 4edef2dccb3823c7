"""``run_retention``: simulate every arm of a finished run dir and write the results into its report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from fedrec.common.datasets import Interactions
from fedrec.common.errors import FedrecError
from fedrec.simulations.report import render
from fedrec.simulations.retention.engine import (
    GREEDY,
    POPULARITY,
    TRAINING_SEED_STRIDE,
    Setup,
    popularity_scores,
    prepare,
    run_seeds,
)
from fedrec.simulations.retention.headline import headline
from fedrec.simulations.retention.slates import K
from fedrec.simulations.retention.summary import summarize
from fedrec.simulations.retention.survival_plot import survival_png
from fedrec.simulations.rundir import RunDir

SEEDS = (0, 1, 2, 3, 4)
REFERENCE = "centralized"


def arm_scores(run_dir: RunDir, report: dict, data: Interactions, given: dict[str, np.ndarray] | None) -> dict:
    """Every report arm with a score matrix on disk (scores/<arm>.npy) or given, checked against the data."""
    given = given or {}
    out = {}
    for name in list(report.get("arms", {})) + [n for n in given if n not in report.get("arms", {})]:
        path = run_dir.path / "scores" / f"{name}.npy"
        if name in given:
            out[name] = np.asarray(given[name])
        elif path.exists():
            out[name] = run_dir.read_scores(name)
        else:
            continue
        if out[name].shape != (data.n_users, data.n_items):
            where = f"arms[{name!r}]" if name in given else str(path)
            raise FedrecError(
                f"{where}: scores have shape {out[name].shape}, expected "
                f"({data.n_users}, {data.n_items}) for {data.name}"
            )
    if not out:
        raise FedrecError(f"{run_dir.path / 'scores'}: no arm score matrices (<arm>.npy) to simulate")
    return out


def reference_arm(report: dict, names: list[str]) -> str:
    """centralized; without it, the most accurate arm other than random and popularity stands in."""
    if REFERENCE in names:
        return REFERENCE
    candidates = [n for n in names if n not in ("random", POPULARITY)] or names
    return max(candidates, key=lambda n: report.get("arms", {}).get(n, {}).get("accuracy", {}).get("hr@10", -1.0))


def extra_training_seeds(run_dir: RunDir, report: dict, names: list[str], given: dict | None) -> list[tuple[int, dict]]:
    """Further training seeds of the run whose scores exist for every simulated arm (none when arms are given)."""
    if given:
        return []
    out = []
    for seed in run_dir.extra_score_seeds():
        if all(run_dir.scores_path(n, seed).exists() for n in names):
            out.append((seed, {n: run_dir.read_scores(n, seed) for n in names}))
    return out


def _parts_report(setup: Setup) -> dict:
    return {
        "pick": {p.name: {"family": p.family, "checks": p.check} for p in setup.picks},
        "like": {p.name: {"family": p.family, "checks": p.check} for p in setup.likes},
    }


def plot_name(oracle: str) -> str:
    return f"retention_{oracle.replace('+', '_')}.png"


def _mean_curves(curves: list[dict], oracle: str) -> dict:
    return {
        arm: {beta: np.mean([c[arm][oracle][beta] for c in curves], axis=0) for beta in curves[0][arm][oracle]}
        for arm in curves[0]
        if oracle in curves[0][arm]
    }


def run_retention(
    run_dir: Path,
    data: Interactions,
    arms: dict[str, np.ndarray] | None = None,
    seeds: Sequence[int] = SEEDS,
    show: bool = True,
) -> dict:
    """Simulated retention for every arm of ``run_dir`` under every user model and beta; updates the report.

    Cells: every training seed whose scores are on disk (scores/seed_<s>/) times every simulator seed."""
    t0 = time.perf_counter()
    seeds = tuple(int(s) for s in seeds)
    rd = RunDir(run_dir)
    report = rd.read_report()
    scores = arm_scores(rd, report, data, arms)
    reference = reference_arm(report, list(scores))
    primary = int(report.get("meta", {}).get("seed", 0))
    training = [(primary, scores)] + extra_training_seeds(rd, report, list(scores), arms)
    console = Console(stderr=True, quiet=not show)
    console.print(f"retention: fitting and calibrating the user models on {data.name} ({data.n_users} users)")
    setup = prepare(data)
    console.print(
        f"retention: simulating {len(scores)} arms x {len(setup.oracles)} user models x "
        f"{len(training)} training seeds x {len(seeds)} simulator seeds"
    )
    per_cell, curves, refs, first = run_seeds(setup, [t[1] for t in training], popularity_scores(data), seeds)
    s_ref = {o.name: float(refs[:, j].mean()) for j, o in enumerate(setup.oracles)}
    summary = summarize(per_cell, setup.observed, s_ref, reference, first[0])
    plots = {}
    for oracle in setup.oracles:
        name = plot_name(oracle.name)
        survival_png(
            _mean_curves(curves, oracle.name),
            setup.observed_survival["survival"],
            setup.observed_survival["n_users"],
            oracle.name,
            rd.path / name,
        )
        plots[oracle.name] = name
    report["meta"]["retention_observed"] = {k: setup.observed[k] for k in ("d1", "d7", "d30", "n_users")}
    for name in scores:
        report["arms"].setdefault(name, {})["retention"] = summary["mean"][name]
    reference_policies = {GREEDY: summary["mean"][GREEDY]}
    if POPULARITY not in scores:
        reference_policies[POPULARITY] = summary["mean"][POPULARITY]
    report["retention"] = {
        "label": "simulated",
        "seeds": list(seeds),
        "training_seeds": [t[0] for t in training],
        "cells": [
            {"training_seed": t[0], "simulator_seed": s + TRAINING_SEED_STRIDE * i}
            for i, t in enumerate(training)
            for s in seeds
        ],
        "slate_size": K,
        "satisfaction": "expected number of liked picks in a slate: sum over its items of P(pick | shown) P(like | picked)",
        "reference_arm": reference,
        "s_ref": s_ref,
        "user_model": setup.model.to_dict(),
        "observed": {
            **setup.observed,
            "survival_cohort": {k: v for k, v in setup.observed_survival.items() if k != "survival"},
        },
        "oracles": {o.name: o.describe(setup.seen) for o in setup.oracles},
        "user_model_parts": _parts_report(setup),
        "first_slate": first[0],
        "reference_policies": reference_policies,
        **{k: v for k, v in summary.items() if k != "mean"},
        "headline": headline(report["arms"], list(scores), summary, reference),
        "plots": plots,
        "wall_s": time.perf_counter() - t0,
    }
    rd.write_report(report, render(report))
    return report
