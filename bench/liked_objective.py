"""A first probe of a retention-aware objective for the centralized NeuMF: does training toward *liked*
picks rank liked held-out items higher, and at what cost in next-item accuracy?

    python -m bench.liked_objective [--seeds 0] [--users N] [--retention]

Three versions of the centralized arm (its recipe as it is, early stopping on validation NDCG@10), each
from the train split alone (ratings of train interactions; no held-out rating is trained on):

- ``next_item``: every train interaction is a positive (the arm as it is);
- ``liked_only``: only train interactions rated 4 or more are positives; a disliked pick may then be drawn
  as a negative;
- ``pick_x_liked_only``: log P(pick) + log P(liked pick), the two models' log-sigmoid scores added;
- ``like_head``: a second NeuMF learns P(like | pick) from the train interactions alone (label: rated 4 or
  more; no sampled negatives, BCE, Adam, the epoch with the best validation liked-NDCG@10 of the ranking),
  and the ranking is by P(pick) x P(like | pick) = P(liked pick): ``next_item`` as the pick model.

Prints validation and test NDCG@10 and liked-NDCG@10 (docs/protocol.md) per version and seed, with the
commit and wall time. The choice is made on validation; test is printed beside it for the record.
``--retention`` also runs the retention simulator (docs/retention.md: four user models, 5 simulator seeds)
on each seed's versions, ``next_item`` standing as the reference arm ``centralized``, and prints each
version's paired difference from it in satisfaction and d30 at beta 2, and in d30 at beta 0 (the placebo).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.common.config import CentralConfig
from fedrec.common.datasets import Interactions, rating_lookup
from fedrec.common.metrics import LIKED_RATING, evaluate_scores
from fedrec.common.model import build_model
from fedrec.common.split import Split, temporal_split
from fedrec.simulations.api import baseline, interactions
from fedrec.simulations.arms.centralized import _recipe, model_scores
from fedrec.simulations.progress import progress
from fedrec.simulations.retention.engine import beta_key
from fedrec.simulations.retention.run import run_retention


def train_ratings(split: Split, data: Interactions) -> np.ndarray:
    """The rating of each train interaction (train only)."""
    return rating_lookup(data)(split.train_users, split.train_items)


def fit_on(split: Split, seed: int, keep: np.ndarray) -> np.ndarray:
    """The centralized recipe on the train interactions ``keep`` selects; early stopping and evaluation
    see the whole split (every train item stays masked at validation)."""
    data = (split.train_users[keep], split.train_items[keep], split.train_timestamps[keep])
    with progress(False) as bar:
        model, _ = _recipe(split, seed, CentralConfig(), data, bar)
    return model_scores(model)


def like_head(split: Split, seed: int, ratings: np.ndarray, pick: np.ndarray, epochs: int = 20) -> np.ndarray:
    """log P(like | pick) for every (user, item), trained on the train interactions' own ratings only; the
    epoch kept is the one whose combined ranking has the best validation liked-NDCG@10."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(split.n_users, split.n_items, CentralConfig().model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    users, items = torch.from_numpy(split.train_users), torch.from_numpy(split.train_items)
    labels = torch.from_numpy((ratings >= LIKED_RATING).astype(np.float32))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best, best_scores, pick_log = -1.0, None, log_sigmoid(pick)
    for _ in range(epochs):
        model.train()
        for batch in torch.from_numpy(rng.permutation(len(users))).split(256):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(users[batch], items[batch]), labels[batch]).backward()
            optimizer.step()
        like = log_sigmoid(model_scores(model))
        found = evaluate_scores(pick_log + like, split, "validation", seed)["liked_ndcg@10"]
        if found > best:
            best, best_scores = found, like
    assert best_scores is not None
    return best_scores


def log_sigmoid(scores: np.ndarray) -> np.ndarray:
    return F.logsigmoid(torch.from_numpy(np.asarray(scores, dtype=np.float64))).numpy()


def retention_cells(seed: int, data, scores: dict[str, np.ndarray]) -> list[dict]:  # noqa: ANN001
    """The retention simulator on these versions (a run dir of their own), paired against next_item: one
    row per version and user model with (mean, low, high) of each difference."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        baseline(out, data, arms=["popularity"], seeds=[seed], retention=False, show=False)
        given = {"centralized" if name == "next_item" else name: matrix for name, matrix in scores.items()}
        report = run_retention(out, data, given, show=False)
    paired = report["retention"]["paired_vs_reference"]

    def cell(arm: str, oracle: str, beta: float, metric: str) -> tuple[float, float, float]:
        found = paired[arm][oracle][beta_key(beta)][metric]
        return (found["mean"], *found["ci95"])

    return [
        {
            "seed": seed,
            "version": arm,
            "oracle": oracle,
            "satisfaction": cell(arm, oracle, 2.0, "satisfaction"),
            "d30": cell(arm, oracle, 2.0, "d30"),
            "placebo": cell(arm, oracle, 0.0, "d30"),
        }
        for arm in paired
        if arm in given and arm != "centralized"
        for oracle in paired[arm]
    ]


def shown(cell: tuple[float, float, float]) -> str:
    return f"{cell[0]:+.4f} ({cell[1]:+.4f}, {cell[2]:+.4f})"


def summary(rows: list[dict], accuracy: dict[str, list[tuple[float, float]]]) -> None:
    """Per version and user model: the mean difference over the training seeds and in how many of them its
    interval lies above zero; the versions' test NDCG@10 and liked-NDCG@10 means against next_item's."""
    base = np.mean(accuracy["next_item"], axis=0)
    n = len(accuracy["next_item"])
    print(f"\nnext_item: test NDCG@10 {base[0]:.4f}, liked-NDCG@10 {base[1]:.4f} (means over {n} seeds)")
    print(
        f"\n| version | test NDCG@10 (vs next_item) | test liked-NDCG@10 (vs next_item) | user model | satisfaction, beta 2: mean difference, seeds above 0 of {n} | d30, beta 2: same | largest placebo difference |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for version in dict.fromkeys(r["version"] for r in rows):
        ndcg, liked = np.mean(accuracy[version], axis=0)
        for oracle in dict.fromkeys(r["oracle"] for r in rows):
            cells = [r for r in rows if r["version"] == version and r["oracle"] == oracle]
            sat = [r["satisfaction"] for r in cells]
            d30 = [r["d30"] for r in cells]
            placebo = max(abs(v) for r in cells for v in r["placebo"])
            print(
                f"| {version} | {ndcg:.4f} ({ndcg / base[0] - 1:+.1%}) | {liked:.4f} ({liked / base[1] - 1:+.1%}) | "
                f"{oracle} | {np.mean([c[0] for c in sat]):+.4f}, {sum(c[1] > 0 for c in sat)} | "
                f"{np.mean([c[0] for c in d30]):+.4f}, {sum(c[1] > 0 for c in d30)} | {placebo:.4f} |"
            )


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--retention", action="store_true")
    args = parser.parse_args()
    rows: list[dict] = []
    accuracy: dict[str, list[tuple[float, float]]] = {}
    data = interactions("ml-100k", None, args.users)
    print("| seed | version | val NDCG@10 | val liked-NDCG@10 | test NDCG@10 | test liked-NDCG@10 | fit |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for seed in (int(s) for s in args.seeds.split(",")):
        split = temporal_split(data, seed)
        ratings = train_ratings(split, data)
        scores = {}
        for name, keep in (("next_item", np.ones_like(ratings, dtype=bool)), ("liked_only", ratings >= LIKED_RATING)):
            t0 = time.perf_counter()
            scores[name] = fit_on(split, seed, keep)
            scores[name + "_s"] = time.perf_counter() - t0
        scores["pick_x_liked_only"] = log_sigmoid(scores["next_item"]) + log_sigmoid(scores["liked_only"])
        t0 = time.perf_counter()
        scores["like_head"] = log_sigmoid(scores["next_item"]) + like_head(split, seed, ratings, scores["next_item"])
        scores["like_head_s"] = time.perf_counter() - t0
        for name in ("next_item", "liked_only", "pick_x_liked_only", "like_head"):
            val = evaluate_scores(scores[name], split, "validation", seed)
            test = evaluate_scores(scores[name], split, "test", seed)
            fit = f"{scores[name + '_s']:.0f} s" if name + "_s" in scores else "-"
            accuracy.setdefault(name, []).append((test["ndcg@10"], test["liked_ndcg@10"]))
            print(
                f"| {seed} | {name} | {val['ndcg@10']:.4f} | {val['liked_ndcg@10']:.4f} | {test['ndcg@10']:.4f} | "
                f"{test['liked_ndcg@10']:.4f} | {fit} |",
                flush=True,
            )
        if args.retention:
            versions = ("next_item", "liked_only", "pick_x_liked_only", "like_head")
            rows += retention_cells(seed, data, {name: scores[name] for name in versions})
    if rows:
        print("\n| seed | version | user model | satisfaction, beta 2 | d30, beta 2 | d30, beta 0 (placebo) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(
                f"| {r['seed']} | {r['version']} | {r['oracle']} | {shown(r['satisfaction'])} | {shown(r['d30'])} | "
                f"{shown(r['placebo'])} |"
            )
        print("(each: the version minus next_item, paired over 5 simulator seeds, 95% interval)")
        summary(rows, accuracy)
    print(f"ML-100K, users {args.users or 'all'}, commit {commit()}")


if __name__ == "__main__":
    main()
