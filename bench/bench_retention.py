"""Retention simulator speed on ML-100K at the size docs/protocol.md asks for, measured in one run.

    FEDREC_DATA_DIR=... python -m bench.bench_retention [--seeds 5]

943 users x 60-day horizon x 6 arms x 4 betas x 4 user models (2 pick x 2 like models) x 5 seeds (plus
each user model's greedy slates and the popularity reference). Prints the time of each phase, the total
against the one-minute budget, and the vectorized simulator against the plain per-user loop on the
same draws (one seed).
The six arms are stand-ins with distinct scores (EASE at two lambdas, EASE plus noise at two levels),
named like the arms of docs/design.md only to make the size realistic: this measures speed, not quality.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from fedrec.common.datasets import load_dataset
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.simple import ease_weights, fit_popularity, fit_random
from fedrec.simulations.retention.engine import build_policies, popularity_scores, prepare, run_seed
from fedrec.simulations.retention.reference import simulate_loop
from fedrec.simulations.retention.simulator import BETAS, draw, simulate

BUDGET_S = 60.0


def stand_in_arms(data, seed: int = 0) -> dict[str, np.ndarray]:
    split = temporal_split(data, seed)
    x = split.train_matrix().toarray().astype(np.float64)
    rng = np.random.default_rng(seed)
    ease_300 = (x @ ease_weights(x, 300.0)).astype(np.float32)
    noise = rng.normal(0, ease_300.std(), ease_300.shape).astype(np.float32)
    return {
        "random": fit_random(split, seed).scores,
        "popularity": fit_popularity(split, seed).scores,
        "ease": ease_300,
        "centralized": (x @ ease_weights(x, 100.0)).astype(np.float32),
        "federated": ease_300 + 0.5 * noise,
        "federated_dp": ease_300 + 2.0 * noise,
    }


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dataset", default="ml-100k")
    args = parser.parse_args()
    seeds = tuple(range(args.seeds))
    data = load_dataset(args.dataset)
    arms = stand_in_arms(data)

    _, t_observed = timed(lambda: prepare(data, parts=([], [])))
    setup, t_prepare = timed(lambda: prepare(data))
    policies, t_slates = timed(lambda: build_policies(setup, arms, popularity_scores(data)))
    _, t_sim = timed(lambda: [run_seed(setup, policies, seed) for seed in seeds])

    betas = np.asarray(BETAS)
    s_ref = np.full(len(policies.pairs), 0.5)
    draws = draw(setup.model, data.n_users, 0)
    _, t_vec = timed(lambda: simulate(policies.satisfaction, s_ref, betas, draws, setup.model))
    _, t_loop = timed(lambda: simulate_loop(policies.satisfaction, s_ref, betas, draws, setup.model))

    total = t_prepare + t_slates + t_sim
    table = Table(
        title=f"retention simulator, {data.name}: {data.n_users} users x {setup.model.horizon} days x "
        f"{len(arms)} arms x {len(BETAS)} betas x {len(setup.oracles)} user models x {len(seeds)} seeds"
    )
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for name, secs in [
        ("fit and calibrate the user models (refit each on held-out data)", t_prepare - t_observed),
        ("return model (observed retention, gaps, Beta MLE)", t_observed),
        ("slates: rank unseen items, satisfaction per visit", t_slates),
        (f"simulate {len(seeds)} seeds (vectorized, with metrics and survival curves)", t_sim),
        ("total", total),
    ]:
        table.add_row(name, f"{secs:.2f}")
    console = Console()
    console.print(table)
    console.print(f"total / budget of {BUDGET_S:.0f} s: {total / BUDGET_S:.3f}")
    console.print(
        f"one seed, {len(policies.pairs)} policies x {len(BETAS)} betas x {data.n_users} users: "
        f"vectorized {t_vec:.3f} s, per-user loop {t_loop:.2f} s, loop / vectorized = {t_loop / t_vec:.0f}x"
    )


if __name__ == "__main__":
    main()
