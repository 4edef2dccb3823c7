"""Can the distributed recipe train NeuMF with its MLP tower? A pooled replay of the shared-noise rounds,
judged on validation (docs/dp-search.md, "The MLP tower under shared noise").

    python -m bench.ddp_tower --try '{"kind": "neumf", "dense_clip": 0.01}' [--results FILE] [--table]

One step = one round of the ``distributed`` mechanism on the whole fleet, pooled: every train record
Poisson-sampled at rate q, each record's gradient (its group of 1 + k items) clipped, Gaussian noise of
std sigma * C on the sum, SGD with momentum on sum / expected batch. What this adds to the GMF recipe is the
tower and *per-group clipping*: the rows (the user row and the looked-up item rows) clipped to ``row_clip``,
the dense part (tower, and the output layer when it trains) to ``dense_clip`` apart, so the tower cannot
take the rows' clipping budget (flat clipping did: docs/dp-search.md rows 19-20). The sensitivity of the
whole vector is then sqrt(row_clip^2 + dense_clip^2), the C of the noise (Opacus' per-layer clipping).
Per-record gradients come from torch.func here (the speed of a search); the device code takes them from
Opacus. One JSON line per configuration goes to the results file; a configuration already there is skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedrec.common.datasets import load_dataset
from fedrec.common.dp_recipe import composed_noise, feature_rows, log_odds_prior
from fedrec.common.item_features import ml100k_item_features
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.model import PRIOR, ModelConfig, NeuMF
from fedrec.common.split import Split, temporal_split
from fedrec.simulations.arms.centralized import model_scores
from fedrec.simulations.arms.centralized_dp import serving_refit
from fedrec.simulations.arms.simple import fit_popularity

USER, ITEM = "user_emb.weight", "item_emb.weight"
CHUNK = 4096


@dataclass(frozen=True)
class Recipe:
    kind: str = "gmf"  # gmf = the landed recipe (dot product); neumf = with the MLP tower
    gmf_dim: int = 32
    mlp_dim: int = 32
    layers: tuple[int, ...] = (64, 32, 16)
    init_std: float = 0.1
    epsilon: float = 8.0  # 0 = no noise (clipping only)
    delta: float = 1e-5
    q: float = 0.5
    steps: int = 20
    count_sigma: float = 10.0
    negatives: int = 8
    row_clip: float = 0.05
    dense_clip: float = 0.0  # 0 = flat clipping: one norm over rows and dense parameters together at row_clip
    table_lr: float = 3000.0
    dense_lr: float = 1.0
    momentum: float = 0.9
    train_output: bool = False  # the output layer trains (else it stays at its init, as in the GMF recipe)
    gmf_output: float = 0.0  # > 0: the output weights on the GMF product start at this value (a plain dot product)
    tower_output: float = -1.0  # >= 0: the output weights on the tower start at this value
    feature_init: bool = True
    tolerance: float = 0.0  # shared_noise.dropout_tolerance: the noise of the sum of all shares is 1/sqrt(1 - it) x
    dropout: float = 0.0  # the share of users whose records miss each step (chosen afresh each step)
    seed: int = 0


def build(recipe: Recipe, split: Split, features: np.ndarray) -> NeuMF:
    torch.manual_seed(recipe.seed)
    config = ModelConfig(
        kind=recipe.kind,
        gmf_dim=recipe.gmf_dim,
        mlp_dim=recipe.mlp_dim,
        layers=recipe.layers,
        item_bias=False,
        prior=True,
        init_std=recipe.init_std,
    )
    model = NeuMF(split.n_users, split.n_items, config)
    dim = config.embedding_dim
    with torch.no_grad():
        if recipe.feature_init:
            model.item_emb.weight[:, :dim] = feature_rows(features, dim, recipe.init_std, recipe.seed)
        head = model.output.weight
        tower_width = recipe.layers[-1] if config.uses_mlp else 0
        if recipe.tower_output >= 0 and tower_width:
            head[:, :tower_width] = recipe.tower_output
        if recipe.gmf_output > 0 and config.uses_gmf:
            head[:, tower_width:] = recipe.gmf_output
    return model


def dense_names(model: NeuMF, recipe: Recipe) -> list[str]:
    return [
        n
        for n, _ in model.named_parameters()
        if n.startswith("tower.") or (recipe.train_output and n.startswith("output."))
    ]


def clipped_sums(
    model: NeuMF, recipe: Recipe, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-record gradients of each group's summed BCE, clipped per group (or flat), summed."""
    dense = dense_names(model, recipe)
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in (USER, ITEM, *dense)}
    fixed.update({k: v.detach() for k, v in model.named_buffers() if k != PRIOR})
    params = {k: v.detach() for k, v in model.named_parameters() if k in dense}
    group = items.shape[1]
    slot_users, slots = torch.zeros(group, dtype=torch.long), torch.arange(group)

    def loss(d, user_row, rows, prior, y):
        logits = functional_call(model, {**fixed, **d, USER: user_row, ITEM: rows, PRIOR: prior}, (slot_users, slots))
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum")

    per = vmap(grad(loss, argnums=(0, 1, 2)), in_dims=(None, 0, 0, 0, 0))
    width = model.item_emb.weight.shape[1]
    out = {USER: torch.zeros_like(model.user_emb.weight), ITEM: torch.zeros_like(model.item_emb.weight)}
    out.update({k: torch.zeros_like(v) for k, v in params.items()})
    for start in range(0, len(users), CHUNK):
        u, it, y = users[start : start + CHUNK], items[start : start + CHUNK], labels[start : start + CHUNK]
        user_rows = model.user_emb.weight.detach()[u][:, None, :]
        rows = model.item_emb.weight.detach()[it]
        g_d, g_u, g_r = per(params, user_rows, rows, model.item_prior[it], y)
        g_u = g_u.reshape(len(u), -1)
        same = (it[:, :, None] == it[:, None, :]).to(g_r.dtype)
        row_sq = g_u.square().sum(1) + (same * (g_r @ g_r.transpose(1, 2))).sum(dim=(1, 2))
        dense_sq = sum((g.reshape(len(u), -1).square().sum(1) for g in g_d.values()), torch.zeros(len(u)))
        if recipe.dense_clip > 0:
            s_row = (recipe.row_clip / (row_sq.sqrt() + 1e-6)).clamp(max=1.0)
            s_dense = (recipe.dense_clip / (dense_sq.sqrt() + 1e-6)).clamp(max=1.0)
        else:
            s_row = s_dense = (recipe.row_clip / ((row_sq + dense_sq).sqrt() + 1e-6)).clamp(max=1.0)
        out[USER].index_add_(0, u, s_row[:, None] * g_u)
        out[ITEM].index_add_(0, it.reshape(-1), (s_row[:, None, None] * g_r).reshape(-1, width))
        for k, g in g_d.items():
            out[k] += torch.einsum("b,b...->...", s_dense, g)
    return out


def val_ndcg(model: NeuMF, split: Split) -> float:
    scores = model_scores(model)
    return float(hit_ndcg(full_ranks(scores, split, "validation", 0))[1]) if np.isfinite(scores).all() else math.nan


def run(recipe: Recipe, split: Split, features: np.ndarray, refit: int) -> dict:
    t0 = time.perf_counter()
    model = build(recipe, split, features)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    noise = torch.Generator().manual_seed(recipe.seed + 2)
    counts = torch.from_numpy(np.bincount(split.train_items, minlength=split.n_items)).double()
    private = recipe.epsilon > 0
    released = counts + (
        torch.normal(0.0, recipe.count_sigma, counts.shape, generator=noise, dtype=torch.float64) if private else 0
    )
    model.set_prior(log_odds_prior(released, recipe.negatives))
    sigma = (
        composed_noise(recipe.epsilon, recipe.delta, recipe.count_sigma, recipe.q, recipe.steps, "bench")
        if private
        else 0.0
    )
    clip = math.hypot(recipe.row_clip, recipe.dense_clip)
    users = torch.from_numpy(split.train_users.astype(np.int64))
    items = torch.from_numpy(split.train_items.astype(np.int64))
    batch = recipe.q * len(users)
    dense = dense_names(model, recipe)
    named = dict(model.named_parameters())
    buffers = {k: torch.zeros_like(named[k]) for k in (USER, ITEM, *dense)}
    curve = []
    for step in range(1, recipe.steps + 1):
        picked = torch.rand(len(users), generator=gen) < recipe.q
        if recipe.dropout > 0:
            gone = torch.randperm(split.n_users, generator=gen)[: int(recipe.dropout * split.n_users)]
            present = torch.ones(split.n_users, dtype=torch.bool)
            present[gone] = False
            picked &= present[users]
        u, i = users[picked], items[picked]
        neg = torch.randint(0, split.n_items, (len(i), recipe.negatives), generator=gen)
        group = torch.cat([i[:, None], neg], 1)
        labels = torch.zeros(group.shape)
        labels[:, 0] = 1
        sums = clipped_sums(model, recipe, u, group, labels)
        with torch.no_grad():
            for k, s in sums.items():
                std = sigma * clip / math.sqrt(1.0 - recipe.tolerance)
                noisy = s + torch.normal(0.0, std, s.shape, generator=noise) if sigma else s
                buffers[k].mul_(recipe.momentum).add_(noisy / batch)
                lr = recipe.dense_lr if k in dense else recipe.table_lr
                named[k].sub_(lr * buffers[k])
        if step in (recipe.steps // 2, recipe.steps):
            curve.append((step, round(val_ndcg(model, split), 4)))
            print(f"  step {step} val NDCG@10 {curve[-1][1]:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    row = {"recipe": asdict(recipe), "sigma": sigma, "curve": curve, "val": curve[-1][1]}
    if refit:
        served = copy.deepcopy(model)
        serving_refit(served, split.train_users, split.train_items, refit, 0.01, recipe.seed)
        row["val_refit"] = round(val_ndcg(served, split), 4)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def differences(recipe: dict) -> str:
    base = asdict(Recipe())
    return (
        " ".join(
            f"{k}={v}"
            for k, v in recipe.items()
            if base.get(k) != v and not (isinstance(v, list) and tuple(v) == base.get(k))
        )
        or "base"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--try", dest="tries", action="append", default=[])
    ap.add_argument("--results", default="runs/ddp_tower.jsonl")
    ap.add_argument("--refit", type=int, default=3)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    path = Path(args.results)
    if args.table:
        print(
            "| configuration (differences from the GMF recipe) | sigma | val NDCG@10 at step 10 / 20 | after serving refit | wall s |"
        )
        print("|---|---|---|---|---|")
        for line in path.read_text().splitlines():
            r = json.loads(line)
            curve = " / ".join(f"{v:.4f}" for _, v in r["curve"])
            print(
                f"| {differences(r['recipe'])} | {r['sigma']:.3f} | {curve} | {r.get('val_refit', float('nan')):.4f} | {r['wall_s']:.0f} |"
            )
        return
    torch.set_num_threads(2)
    data = load_dataset("ml-100k")
    split, features = temporal_split(data, 0), ml100k_item_features(data.item_ids)
    pop = float(hit_ndcg(full_ranks(fit_popularity(split, 0).scores, split, "validation", 0))[1])
    print(f"popularity validation NDCG@10 {pop:.4f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = (
        {json.dumps(json.loads(line)["recipe"], sort_keys=True) for line in path.read_text().splitlines()}
        if path.exists()
        else set()
    )
    for text in args.tries:
        over = json.loads(text)
        if "layers" in over:
            over["layers"] = tuple(over["layers"])
        recipe = replace(Recipe(), **over)
        key = json.dumps(json.loads(json.dumps(asdict(recipe))), sort_keys=True)
        if key in done:
            print(f"[{text}] already in {path}")
            continue
        print(f"[{text}]", flush=True)
        row = run(recipe, split, features, args.refit)
        row["popularity"] = pop
        print(
            f"[{text}] sigma {row['sigma']:.3f} val {row['val']:.4f} refit {row.get('val_refit', math.nan):.4f} {row['wall_s']:.0f}s",
            flush=True,
        )
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
