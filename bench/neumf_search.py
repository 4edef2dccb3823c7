"""Reproducible hyper-parameter search for centralized NeuMF on ML-100K (validation selects, test is reported).

The search is coordinate descent over named axes, in a fixed order: each axis tries its values with every
other setting held at the best found so far (by mean validation NDCG@10 over the search seeds), keeps the
winner, and moves on. The axes below are the search that was actually run (docs/neumf-search.md); `--quick`
runs a two-axis grid on a user subset in about a minute.

    python -m bench.neumf_search --out runs/neumf-search            # the full search, seed 0
    python -m bench.neumf_search --out /tmp/q --quick               # smoke run
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedrec.common.config import CentralConfig
from fedrec.common.datasets import load_dataset
from fedrec.common.metrics import evaluate_scores
from fedrec.common.model import ModelConfig
from fedrec.common.settings import to_nested
from fedrec.common.split import temporal_split
from fedrec.common.training import TrainConfig
from fedrec.simulations.arms.centralized import fit_centralized

# The starting point: the old defaults, with a batch of 1024 (1.5-2x faster epochs) and a larger lr to match.
# Spelled out in full so the search does not drift when the defaults it found are adopted.
START: dict = {
    "kind": "neumf",
    "gmf_dim": 32,
    "mlp_dim": 32,
    "layers": (64, 32, 16),
    "dropout": 0.0,
    "item_bias": False,
    "init_std": 0.01,
    "batch_size": 1024,
    "lr": 3e-3,
    "epochs": 40,
    "patience": 5,
    "negatives": 4,
    "weight_decay": 0.0,
    "lr_decay": 1.0,
    "emb_l2": 0.0,
    "recent_last": 0,
    "recent_repeats": 0,
    "pretrain": False,
    "refit": False,
    "threads": 1,
}

# (axis name, values); a value is a dict of ModelConfig and/or TrainConfig fields. The refit on
# train+validation is not an axis: validation cannot judge it (it trains on the validation item), so the
# winner is refit once at the end and both test results are shown.
AXES: list[tuple[str, list[dict]]] = [
    ("item_bias", [{"item_bias": False}, {"item_bias": True}]),
    ("emb_l2", [{"emb_l2": 0.0}, {"emb_l2": 1e-3}, {"emb_l2": 1e-2}]),
    (
        "recency",
        [
            {"recent_last": 0, "recent_repeats": 0},
            {"recent_last": 5, "recent_repeats": 2},
            {"recent_last": 10, "recent_repeats": 1},
            {"recent_last": 3, "recent_repeats": 5},
        ],
    ),
    ("negatives", [{"negatives": 4}, {"negatives": 8}]),
    (
        "dims",
        [
            {"gmf_dim": 32, "mlp_dim": 32, "layers": (64, 32, 16)},
            {"gmf_dim": 64, "mlp_dim": 64, "layers": (128, 64, 32)},
        ],
    ),
    ("lr", [{"lr": 3e-3}, {"lr": 1e-3}]),
]

QUICK_AXES: list[tuple[str, list[dict]]] = [
    ("item_bias", [{"item_bias": False}, {"item_bias": True}]),
    ("negatives", [{"negatives": 4}, {"negatives": 8}]),
]

MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def build(settings: dict) -> CentralConfig:
    model = {k: v for k, v in settings.items() if k in MODEL_FIELDS}
    train = {k: v for k, v in settings.items() if k in TRAIN_FIELDS}
    unknown = set(settings) - MODEL_FIELDS - TRAIN_FIELDS
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    return CentralConfig(ModelConfig(**model), TrainConfig(**train))


def describe(settings: dict, base: dict) -> str:
    """Only what differs from the starting point, so the table stays readable."""
    diff = {k: v for k, v in settings.items() if base.get(k) != v}
    return " ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in sorted(diff.items())) or "start"


def canonical(settings: dict) -> str:
    """The full configuration as text, so that equal configurations spelled differently are fitted once."""
    cfg = build(settings)
    return json.dumps(to_nested(cfg), sort_keys=True)


def evaluate_config(settings: dict, splits: dict, seeds: list[int]) -> dict:
    """Fit once per seed; validation numbers come from the early-stopped model, test from the final one."""
    rows = []
    for seed in seeds:
        split = splits[seed]
        t0 = time.perf_counter()
        result = fit_centralized(split, seed, build(settings), show=False)
        fit_s = time.perf_counter() - t0
        test = evaluate_scores(result.scores, split, "test", seed)
        rows.append(
            {
                "val_ndcg@10": result.info["val_ndcg@10"],
                "val_hr@10": result.info["val_hr@10"],
                "val_hr@10_sampled": result.info["val_hr@10_sampled"],
                "test_ndcg@10": test["ndcg@10"],
                "test_hr@10": test["hr@10"],
                "test_hr@10_sampled": test["hr@10_sampled"],
                "best_epoch": result.info["best_epoch"],
                "epoch_s": result.info["epoch_s_mean"],
                "fit_s": fit_s,
            }
        )
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


COLUMNS = [
    "val_ndcg@10",
    "val_hr@10",
    "val_hr@10_sampled",
    "test_ndcg@10",
    "test_hr@10",
    "test_hr@10_sampled",
    "best_epoch",
    "epoch_s",
    "fit_s",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Dir for search.csv and winner.json.")
    parser.add_argument("--seeds", default="0", help="Comma-separated search seeds (metrics are averaged).")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--users", type=int, default=None, help="Keep the first N users.")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="A search.csv of an interrupted run: configurations found there are not refitted.",
    )
    parser.add_argument("--quick", action="store_true", help="Tiny grid on 200 users, 8 epochs.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(width=220)
    seeds = [int(s) for s in args.seeds.split(",")]
    axes, start = AXES, dict(START)
    users = args.users
    if args.quick:
        axes, users = QUICK_AXES, users or 200
        start.update(epochs=8, patience=3)
    data = load_dataset(args.dataset, args.data_dir)
    if users:
        data = data.subset_users(users)
    splits = {seed: temporal_split(data, seed) for seed in seeds}
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "search.csv"

    best, best_val = dict(start), -1.0
    seen: dict[str, dict] = {}
    if args.resume is not None:
        with args.resume.open(newline="") as fh:
            seen = {row["settings"]: {c: float(row[c]) for c in COLUMNS} for row in csv.DictReader(fh)}
    table_rows: list[tuple[str, str, dict]] = []
    logged: set[str] = set()
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["axis", "config", *COLUMNS, "settings"])
        for axis, values in axes:
            axis_best, axis_val = best, best_val
            for value in values:
                settings = {**best, **value}
                key = canonical(settings)
                if key not in logged:  # the current best recurs on every axis: fit and list it once
                    if key not in seen:  # not already in the --resume file
                        seen[key] = evaluate_config(settings, splits, seeds)
                    logged.add(key)
                    metrics = seen[key]
                    name = describe(settings, start)
                    writer.writerow([axis, name, *(f"{metrics[c]:.4f}" for c in COLUMNS), key])
                    fh.flush()
                    table_rows.append((axis, name, metrics))
                    console.print(
                        escape(f"[{axis}] {name}: ")
                        + "  ".join(f"{c} {metrics[c]:.4f}" for c in COLUMNS[:6])
                        + f"  epoch {metrics['best_epoch']:.0f}  {metrics['epoch_s']:.2f} s/epoch"
                    )
                metrics = seen[key]
                if metrics["val_ndcg@10"] > axis_val:
                    axis_best, axis_val = settings, metrics["val_ndcg@10"]
            best, best_val = axis_best, axis_val
        final = {**best, "refit": True}
        final_metrics = evaluate_config(final, splits, seeds)
        writer.writerow(
            ["final", describe(final, start), *(f"{final_metrics[c]:.4f}" for c in COLUMNS), canonical(final)]
        )
        table_rows.append(("final", describe(final, start), final_metrics))

    table = Table(
        title=f"NeuMF search on {data.name}, seeds {args.seeds} (selection: validation NDCG@10; "
        "final = winner refit on train+validation)"
    )
    for col in ["axis", "config", *COLUMNS]:
        table.add_column(col, justify="left" if col in ("axis", "config") else "right")
    for axis, name, metrics in table_rows:
        table.add_row(
            axis,
            name,
            *(f"{metrics[c]:.4f}" if c not in ("best_epoch", "fit_s") else f"{metrics[c]:.1f}" for c in COLUMNS),
        )
    console.print(table)
    winner = {"settings": final, "metrics": final_metrics}
    (args.out / "winner.json").write_text(json.dumps(winner, indent=2, default=list))
    console.print(f"winner: {describe(final, start)}  ->  {json.dumps(winner['metrics'])}")
    console.print(f"wrote {csv_path} and {args.out / 'winner.json'}")


if __name__ == "__main__":
    main()
