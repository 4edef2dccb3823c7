"""The centralized arm with fused Adam (the default) against torch's per-parameter Adam, per seed.

    python -m bench.centralized_adam [--seeds 0,1,2] [--threads 1]

Both are Adam with the same settings; they differ in rounding only, which over a fit of ~20 epochs is
enough to move the early-stopped epoch. Prints, per seed and variant, the whole arm's wall time, the
early-stopped epoch, seconds per training epoch, and validation / test NDCG@10 (the choice is made on
validation only). Epoch times compare only within one run of this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from rich.console import Console
from rich.table import Table

import fedrec.simulations.arms.centralized as centralized
from fedrec.common.config import DEFAULT_CENTRAL
from fedrec.common.datasets import load_dataset
from fedrec.common.metrics import evaluate_scores
from fedrec.common.split import temporal_split

FUSED = centralized.central_optimizer


def per_parameter(model, cfg):
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    data = load_dataset("ml-100k")
    config = dataclasses.replace(
        DEFAULT_CENTRAL, train=dataclasses.replace(DEFAULT_CENTRAL.train, threads=args.threads)
    )
    table = Table(title=f"centralized NeuMF, {args.threads} torch thread(s)")
    for col in ("seed", "adam", "fit s", "best epoch", "epoch s", "val NDCG@10", "test NDCG@10"):
        table.add_column(col, justify="right")
    for seed in (int(s) for s in args.seeds.split(",")):
        split = temporal_split(data, seed)
        for name, optimizer in (("per-parameter", per_parameter), ("fused", FUSED)):
            centralized.central_optimizer = optimizer
            t0 = time.perf_counter()
            result = centralized.fit_centralized(split, seed, config, show=False)
            fit_s = time.perf_counter() - t0
            test = evaluate_scores(result.scores, split, "test", seed)["ndcg@10"]
            info = result.info
            table.add_row(
                str(seed),
                name,
                f"{fit_s:.1f}",
                str(info["best_epoch"]),
                f"{info['epoch_s_mean']:.2f}",
                f"{info['val_ndcg@10']:.4f}",
                f"{test:.4f}",
            )
    centralized.central_optimizer = FUSED
    Console().print(table)


if __name__ == "__main__":
    main()
