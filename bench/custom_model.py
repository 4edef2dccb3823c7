"""docs/models.md's two-tower example in the arms that take a model of one's own, as printed there.

    python -m bench.custom_model search [--users 300]          # its federated learning rate, on validation
    python -m bench.custom_model table [--lr 0.03] [--seeds 0]  # every arm on all of ML-100K, test split

``search`` runs the federated arm (no DP, Flower's simulation engine) at each learning rate and prints
validation NDCG@10 (the final round's on-device evaluation) beside popularity's on the same split: the
choice. ``table`` runs popularity, the centralized, federated and federated_dp arms with the example and
with NeuMF (the built-in default) at that rate for the example, and prints test NDCG@10 per arm with the
seed, commit and wall time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

from fedrec.common.metrics import evaluate_scores
from fedrec.common.split import temporal_split
from fedrec.simulations.api import interactions, simulate
from fedrec.simulations.arms.simple import fit_popularity

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
ARMS = ["popularity", "centralized", "federated", "federated_dp"]


def example(work: Path) -> str:
    block = re.search(r"<!-- two-tower-example -->\n```python\n(.*?)```", DOCS.read_text(), re.S)
    assert block, f"{DOCS}: no two-tower example"
    path = work / "two_tower.py"
    path.write_text(block.group(1))
    return f"{path}:TwoTower"


def commit() -> str:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=DOCS.parent)
    return found.stdout.strip() or "unknown"


def search(users: int, rates: list[float], seed: int) -> None:
    split = temporal_split(interactions("ml-100k", None, users), seed)
    popularity = fit_popularity(split, seed).scores
    print(f"popularity: validation NDCG@10 {evaluate_scores(popularity, split, 'validation')['ndcg@10']:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        kind = example(Path(tmp))
        for lr in rates:
            t0 = time.perf_counter()
            results = simulate(
                Path(tmp) / f"lr{lr:g}",
                arms=["federated"],
                users=users,
                seeds=[seed],
                model=kind,
                settings={"federation.device.training.lr": lr},
                retention=False,
                show=False,
            )
            val = results.arms["federated"].info["rounds"][-1]["evaluate"]["ndcg@10"]
            print(f"two-tower federated, lr {lr:g}: validation NDCG@10 {val:.4f} ({time.perf_counter() - t0:.0f} s)")
    print(f"users {users}, seed {seed}, commit {commit()}")


def table(lr: float, seeds: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        kind = example(Path(tmp))
        runs = {
            "two-tower": dict(model=kind, settings={"federation.device.training.lr": lr}),
            "NeuMF": dict(model=None, settings={}),
        }
        print("| model | " + " | ".join(ARMS) + " | wall |")
        print("| --- | " + " | ".join("---" for _ in ARMS) + " | --- |")
        for name, run in runs.items():
            t0 = time.perf_counter()
            results = simulate(Path(tmp) / name, arms=ARMS, seeds=seeds, retention=False, show=False, **run)  # type: ignore[arg-type]
            cells = []
            for arm in ARMS:
                ndcg = results.arms[arm].metrics["ndcg@10"]
                cells.append(
                    f"{ndcg.mean:.4f} ({ndcg.low:.4f}-{ndcg.high:.4f})" if len(seeds) > 1 else f"{ndcg.mean:.4f}"
                )
            print(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - t0:.0f} s |", flush=True)
    print(f"ML-100K, all users, test NDCG@10, seeds {seeds}, two-tower federated lr {lr:g}, commit {commit()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("search")
    s.add_argument("--users", type=int, default=300)
    s.add_argument("--rates", default="0.01,0.03,0.05")
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("table")
    t.add_argument("--lr", type=float, default=0.03)
    t.add_argument("--seeds", default="0")
    args = parser.parse_args()
    if args.what == "search":
        search(args.users, [float(r) for r in args.rates.split(",")], args.seed)
    else:
        table(args.lr, [int(s) for s in args.seeds.split(",")])


if __name__ == "__main__":
    main()
