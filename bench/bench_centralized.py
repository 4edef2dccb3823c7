"""Evaluation throughput and centralized NeuMF epoch time on ML-100K, measured in one run.

    python -m bench.bench_centralized [--threads 1] [--repeats 5] [--epochs 3]

Prints users ranked per second for the full-ranking metrics (every item scored, seen items masked), the
same for the sampled-99 metrics, the cost of scoring every (user, item) pair with NeuMF, and the mean
seconds per training epoch with the default centralized settings (common.config.DEFAULT_CENTRAL).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedrec.common.config import DEFAULT_CENTRAL
from fedrec.common.datasets import load_dataset
from fedrec.common.metrics import full_ranks, sampled_ranks
from fedrec.common.model import ModelConfig, NeuMF
from fedrec.common.sampling import positive_keys
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.centralized import central_optimizer, model_scores, train_epoch


def best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock timings: the least disturbed by other jobs on a shared machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    split = temporal_split(data, 0)
    n_eval = int((split.test_items >= 0).sum())
    scores = np.random.default_rng(0).random((split.n_users, split.n_items), dtype=np.float32)

    full_s = best_of(lambda: full_ranks(scores, split, "test", 0), args.repeats)
    sampled_s = best_of(lambda: sampled_ranks(scores, split, "test", 0), args.repeats)

    torch.manual_seed(0)
    cfg = DEFAULT_CENTRAL.train
    model = NeuMF(split.n_users, split.n_items, ModelConfig())
    optimizer, _ = central_optimizer(model, cfg)
    score_s = best_of(lambda: model_scores(model), args.repeats)
    keys = positive_keys(split.train_users, split.train_items, split.n_items)
    rng = np.random.default_rng(0)
    epoch_times = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        train_epoch(model, optimizer, split.train_users, split.train_items, keys, cfg, rng)
        epoch_times.append(time.perf_counter() - t0)
    examples = len(split.train_users) * (1 + cfg.negatives)

    table = Table(title=f"{data.name}: {split.n_users} users x {split.n_items} items, {args.threads} torch thread(s)")
    for col in ("what", "seconds", "throughput"):
        table.add_column(col, justify="left" if col == "what" else "right")
    table.add_row("full-ranking ranks (test, all users)", f"{full_s:.3f}", f"{n_eval / full_s:,.0f} users/s")
    table.add_row("sampled-99 ranks (test, all users)", f"{sampled_s:.3f}", f"{n_eval / sampled_s:,.0f} users/s")
    table.add_row(
        "NeuMF scores, every user x item",
        f"{score_s:.3f}",
        f"{split.n_users * split.n_items / score_s / 1e6:,.1f} M pairs/s",
    )
    table.add_row(
        f"NeuMF train epoch (batch {cfg.batch_size}, {cfg.negatives} negatives), mean of {args.epochs}",
        f"{np.mean(epoch_times):.3f}",
        f"{examples / np.mean(epoch_times):,.0f} examples/s",
    )
    Console().print(table)
    Console().print(
        f"one validation pass (scores + full ranks) = {(score_s + full_s) / np.mean(epoch_times):.2f} "
        f"x one training epoch"
    )


if __name__ == "__main__":
    main()
