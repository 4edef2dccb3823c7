"""Search for a DP-SGD recipe for pooled NeuMF on ML-100K, judged on validation (docs/dp-search.md).

    python -m bench.dp_recipe [--quick] [--stage NAME ...] [--try '{"lr": 2.0}' ...] [--results FILE]

Every configuration trains on the train split of seed 0 with Opacus (``simulations.arms.centralized_dp``)
and is scored on each user's validation item (full ranking, NDCG@10), at a few epochs of its schedule and,
at the end, also after the joint-DP serving refit of the user rows. Popularity's validation NDCG@10 is
printed beside every row. One JSON line per configuration goes to the results file (default
``runs/dp_recipe.jsonl``); a configuration already there is not run again, so an interrupted search resumes.
``--snr`` adds the measured signal-to-noise ratio of the noised gradient per item row to each run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedrec.common.datasets import load_dataset
from fedrec.common.item_features import ml100k_item_features
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.model import NeuMF
from fedrec.common.settings import to_nested
from fedrec.common.split import Split, temporal_split
from fedrec.common.training import GroupBCE
from fedrec.simulations.arms.centralized import model_scores
from fedrec.simulations.arms.centralized_dp import (
    DPRecipe,
    _groups,
    fit_centralized_dp,
    planned_privacy,
    serving_refit,
    train_dp,
)
from fedrec.simulations.arms.simple import fit_popularity

BASE = dataclasses.replace(DPRecipe(), include_validation=False)

# Each stage is a list of (name, overrides of BASE); names are the keys of the results file.
STAGES: dict[str, list[tuple[str, dict]]] = {
    "quick": [("quick", {"epochs": 2})],
}


def val_ndcg(model: NeuMF, split: Split) -> float:
    """Validation NDCG@10; NaN when training diverged (non-finite scores would all tie at rank 0)."""
    scores = model_scores(model)
    return float(hit_ndcg(full_ranks(scores, split, "validation", 0))[1]) if np.isfinite(scores).all() else math.nan


def recipe_from(overrides: dict) -> DPRecipe:
    model = overrides.pop("model", {})
    if "frozen" in overrides:
        overrides["frozen"] = tuple(overrides["frozen"])
    if "layers" in model:
        model["layers"] = tuple(model["layers"])
    return dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, **model), **overrides)


def item_row_snr(model: NeuMF, split: Split, recipe: DPRecipe, sigma: float, counts: np.ndarray) -> dict:
    """Per item row: norm of the clipped mean gradient of one Poisson batch over the norm of the noise
    Opacus adds to that row (sigma * C * sqrt(row width) / expected batch), by item-frequency bucket."""
    probe = copy.deepcopy(model)
    for pname, p in probe.named_parameters():
        p.requires_grad_(not pname.startswith(recipe.frozen))
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    users, items = torch.from_numpy(split.train_users), torch.from_numpy(split.train_items)
    plan = planned_privacy(len(users), recipe)
    batches = round(1 / plan.sample_rate)
    loader = DataLoader(TensorDataset(users, items), batch_size=math.ceil(len(users) / batches))
    torch.manual_seed(123)
    module, opt, crit, loader = PrivacyEngine(accountant="rdp").make_private(
        module=probe,
        optimizer=opt,
        data_loader=loader,
        criterion=GroupBCE(),
        noise_multiplier=0.0,
        max_grad_norm=recipe.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="ghost",
    )
    bu, bi = next(iter(loader))
    u, i, y = _groups(bu, bi, split.n_items, recipe.negatives, torch.Generator().manual_seed(7))
    opt.zero_grad(set_to_none=True)
    crit(module(u, i), y).backward()
    opt.step()  # lr 0: only clips, sums and scales, so .grad is the clipped mean gradient without noise
    rows = probe.item_emb.weight.grad
    if rows is None:  # the item table is frozen: nothing of it is noised
        module._close()
        return {}
    signal = rows.norm(dim=1).numpy()
    noise = sigma * recipe.max_grad_norm * math.sqrt(rows.shape[1]) / opt.expected_batch_size
    module._close()
    snr = signal / noise if noise > 0 else np.full_like(signal, np.inf)
    out = {"steps": plan.steps}
    for lo, hi in ((0, 10), (10, 50), (50, 200), (200, 10**9)):
        sel = (counts >= lo) & (counts < hi)
        if sel.any():
            out[f"items_{lo}-{hi}"] = {
                "n": int(sel.sum()),
                "median_snr_step": float(np.median(snr[sel])),
                "median_snr_run": float(np.median(snr[sel]) * math.sqrt(plan.steps)),
            }
    return out


def run(
    name: str, recipe: DPRecipe, split: Split, pop: float, snr: bool, refit_epochs: int, features: np.ndarray
) -> dict:
    t0 = time.perf_counter()
    curve: list[tuple[int, float, float]] = []
    marks = {max(1, recipe.epochs // 4), max(1, recipe.epochs // 2), recipe.epochs}

    def on_epoch(epoch: int, model: NeuMF, loss: float) -> None:
        if epoch in marks:
            curve.append((epoch, round(loss, 4), round(val_ndcg(model, split), 4)))
            print(f"  [{name}] epoch {epoch} loss {loss:.4f} val NDCG@10 {curve[-1][2]:.4f}", flush=True)

    model, spent = train_dp(
        split.n_users,
        split.n_items,
        split.train_users,
        split.train_items,
        recipe,
        0,
        on_epoch=on_epoch,
        features=features,
    )
    train_s = time.perf_counter() - t0
    row = {
        "name": name,
        "recipe": to_nested(recipe),
        "epsilon": spent.epsilon,
        "sigma": spent.noise_multiplier,
        "q": spent.sample_rate,
        "steps": spent.steps,
        "val_ndcg@10": curve[-1][2],
        "curve": curve,
        "popularity_val_ndcg@10": pop,
        "train_s": round(train_s, 1),
    }
    if refit_epochs:
        refit = copy.deepcopy(model)
        serving_refit(refit, split.train_users, split.train_items, refit_epochs, recipe.serving_refit_lr, 0)
        row["val_ndcg@10_refit"] = round(val_ndcg(refit, split), 4)
    if snr and spent.noise_multiplier > 0:
        counts = np.bincount(split.train_items, minlength=split.n_items)
        row["snr"] = item_row_snr(model, split, recipe, spent.noise_multiplier, counts)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


# Rows written before a knob existed lack it: they ran at its neutral value (freeze_output_bias=True was
# the older spelling of frozen=["output.bias"]).
NEUTRAL = {
    "popularity_prior": False,
    "embedding_lr": 0.0,
    "item_lr_scale": 1.0,
    "feature_init": False,
    "frozen": ["output.bias"],
    "count_sigma": 10.0,
    "item_features": "ml-100k",
}


def _differences(recipe: dict) -> str:
    base = json.loads(json.dumps(to_nested(BASE)))  # tuples as lists, as in the results file
    recipe = {**NEUTRAL, **recipe}
    ignored = ("model", "epsilon", "serving_refit_epochs", "include_validation", "threads")  # not used by the search
    diff = [f"{k}={v}" for k, v in recipe.items() if k in base and k not in ignored and v != base[k]]
    if recipe["epsilon"] == 0:  # plain training clips nothing
        diff = [d for d in diff if not d.startswith("max_grad_norm=")]
    unused = ("mlp_dim", "layers", "dropout") if recipe["model"]["kind"] == "gmf" else ()
    diff += [f"{k}={v}" for k, v in recipe["model"].items() if v != base["model"][k] and k not in unused]
    return " ".join(diff) or "base"


def print_table(path: Path) -> None:
    """One row per configuration, differences from BASE; SNR = median per-step ratio for items with 50-200."""
    print(
        "| # | configuration (differences from BASE) | epsilon | sigma | steps | val NDCG@10 | after serving refit "
        "| popularity | SNR/step, items with 50-200 | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        r = json.loads(line)
        eps = (
            "no DP"
            if r["recipe"]["epsilon"] == 0
            else ("clip only" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.3g}")
        )
        snr = r.get("snr", {}).get("items_50-200", {}).get("median_snr_step")
        print(
            f"| {n} | {_differences(r['recipe'])} | {eps} | {r['sigma']:.3f} | {r['steps']} | {r['val_ndcg@10']:.4f} "
            f"| {r.get('val_ndcg@10_refit', float('nan')):.4f} | {r['popularity_val_ndcg@10']:.4f} "
            f"| {'' if snr is None else f'{snr:.3f}'} | {r['wall_s']:.0f} |"
        )


def grad_norms() -> None:
    """Median per-example gradient norm per parameter at init (torch.func), for the clipping budget."""
    from torch.func import functional_call, grad, vmap

    torch.set_num_threads(1)
    split = temporal_split(load_dataset("ml-100k"), 0)
    idx = torch.randint(0, len(split.train_users), (256,), generator=torch.Generator().manual_seed(0))
    u, i, y = _groups(
        torch.from_numpy(split.train_users)[idx],
        torch.from_numpy(split.train_items)[idx],
        split.n_items,
        4,
        torch.Generator().manual_seed(0),
    )
    configs = {
        "neumf 16/16, tower 32-16, item bias": dataclasses.replace(
            BASE.model, kind="neumf", gmf_dim=16, mlp_dim=16, layers=(32, 16), item_bias=True
        ),
        "gmf 16, item bias": dataclasses.replace(BASE.model, gmf_dim=16, item_bias=True),
        "gmf 16, no bias": dataclasses.replace(BASE.model, gmf_dim=16),
    }
    for label, cfg in configs.items():
        torch.manual_seed(0)
        model = NeuMF(split.n_users, split.n_items, cfg)
        params = {k: v.detach() for k, v in model.named_parameters() if k != "output.bias"}

        def loss(p, uu, ii, yy):
            out = functional_call(model, {**p, "output.bias": model.output.bias}, (uu[None], ii[None]))
            return torch.nn.functional.binary_cross_entropy_with_logits(out, yy[None], reduction="sum")

        per = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, u, i, y)
        norms = {k: v.flatten(1).norm(dim=1) for k, v in per.items()}
        total = torch.stack([n**2 for n in norms.values()]).sum(0).sqrt()
        parts = " ".join(f"{k} {n.median():.3f}" for k, n in norms.items())
        print(f"{label}: total {total.median():.3f} | {parts}", flush=True)


def arm_on_test(seeds: list[int]) -> None:
    """The finished arm (train+validation, defaults) scored on test: a reference, not a search axis."""
    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    for seed in seeds:
        split = temporal_split(data, seed)
        pop = hit_ndcg(full_ranks(fit_popularity(split, seed).scores, split, "test", seed))[1]
        result = fit_centralized_dp(split, seed, show=False)
        ndcg = hit_ndcg(full_ranks(result.scores, split, "test", seed))[1]
        print(
            f"seed {seed} centralized_dp test NDCG@10 {ndcg:.4f} (popularity {pop:.4f}, ratio {ndcg / pop:.2f}) "
            f"privacy {json.dumps(result.info['privacy'])} {result.info['train_s']:.0f}s",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one 2-epoch configuration: checks the plumbing")
    ap.add_argument("--stage", action="append", default=[], help=f"one of {', '.join(STAGES)}")
    ap.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        help='JSON overrides of the base recipe, e.g. {"lr": 2, "model": {"gmf_dim": 8}}',
    )
    ap.add_argument("--results", default="runs/dp_recipe.jsonl")
    ap.add_argument("--refit-epochs", type=int, default=3, help="serving refit epochs scored at the end (0 = none)")
    ap.add_argument("--snr", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the results file as a markdown table and exit")
    ap.add_argument(
        "--arm",
        default="",
        metavar="SEEDS",
        help="e.g. 0,1,2: run the centralized_dp arm with its defaults and print TEST NDCG@10 beside popularity's",
    )
    ap.add_argument("--grad-norms", action="store_true", help="per-parameter per-example gradient norms at init")
    args = ap.parse_args()
    if args.grad_norms:
        grad_norms()
        return
    if args.table:
        print_table(Path(args.results))
        return
    if args.arm:
        arm_on_test([int(x) for x in args.arm.split(",")])
        return
    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    split, features = temporal_split(data, 0), ml100k_item_features(data.item_ids)
    pop = round(float(hit_ndcg(full_ranks(fit_popularity(split, 0).scores, split, "validation", 0))[1]), 4)
    print(f"popularity validation NDCG@10 {pop:.4f}", flush=True)
    todo = [cfg for stage in (["quick"] if args.quick else args.stage) for cfg in STAGES[stage]]
    todo += [(json.dumps(json.loads(t), sort_keys=True), json.loads(t)) for t in args.tries]
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["name"] for line in path.read_text().splitlines()} if path.exists() else set()
    for name, overrides in todo:
        if name in done:
            print(f"[{name}] already in {path}", flush=True)
            continue
        row = run(
            name, recipe_from(dict(overrides)), split, pop, args.snr, 0 if args.quick else args.refit_epochs, features
        )
        print(
            f"[{name}] eps {row['epsilon']:.3g} sigma {row['sigma']:.3f} steps {row['steps']} val NDCG@10 "
            f"{row['val_ndcg@10']:.4f} refit {row.get('val_ndcg@10_refit', float('nan')):.4f} (popularity {pop:.4f}) "
            f"{row['wall_s']:.0f}s" + (f" snr {json.dumps(row['snr'])}" if "snr" in row else ""),
            flush=True,
        )
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done.add(name)


if __name__ == "__main__":
    main()
