"""The centralized_dp recipe under on-device (per-device, record-level) DP: a fast in-process proxy.

    python -m bench.dp_federated_proxy '{"rounds": 30, "server_lr": 30}' [TAG]

Each device trains its own records with Opacus DP-SGD (ghost clipping, Poisson sampling at rate
1/steps_per_round, fresh uniform catalogue negatives per record) starting from the global item table and
its own user row, which never leaves it. Devices join a round with probability ``fraction``; the noise is
calibrated for the expected schedule (fraction x rounds x steps_per_round steps), composed with the
device's own noisy count vector (the popularity prior: each device adds N(0, count_sigma^2) to its item
counts, the server sums them), so the median device ends near its budget; a device past its budget
refuses. The server averages the item-table deltas of the round's devices, applies them with server
momentum, and serves the average of the last ``average_last`` rounds' tables; each user row is then
refitted on the device (serving only, joint DP). Prints validation NDCG@10 beside popularity's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedrec.common.datasets import load_dataset
from fedrec.common.item_features import ml100k_item_features
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.model import PRIOR, NeuMF
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.split import temporal_split
from fedrec.common.training import GroupBCE
from fedrec.simulations.arms.centralized import model_scores
from fedrec.simulations.arms.centralized_dp import (
    DPRecipe,
    _groups,
    composed_noise,
    feature_rows,
    log_odds_prior,
    serving_refit,
)
from fedrec.simulations.arms.simple import fit_popularity

DEFAULTS = {
    "rounds": 30,
    "fraction": 0.25,
    "steps_per_round": 8,
    "local_lr": 1.0,
    "server_lr": 30.0,
    "server_momentum": 0.9,
    "average_last": 5,
    "epsilon": 8.0,
    "count_sigma": 10.0,
    "clip": 0.05,
    "refit": 3,
    "every": 10,
    "seed": 0,
}


def main() -> None:
    args = {**DEFAULTS, **json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")}
    tag = sys.argv[2] if len(sys.argv) > 2 else "dp-proxy"
    torch.set_num_threads(1)
    recipe = dataclasses.replace(
        DPRecipe(),
        epsilon=args["epsilon"],
        count_sigma=args["count_sigma"],
        max_grad_norm=args["clip"],
        lr=args["local_lr"],
        embedding_lr=args["local_lr"],
    )
    data = load_dataset("ml-100k")
    split = temporal_split(data, args["seed"])
    pop = hit_ndcg(full_ranks(fit_popularity(split, 0).scores, split, "validation", 0))[1]
    n_users, n_items, dim = split.n_users, split.n_items, recipe.model.embedding_dim
    rng = np.random.default_rng(args["seed"])
    gen = torch.Generator().manual_seed(args["seed"])
    positives = [split.train_items[split.train_users == u] for u in range(n_users)]

    q = 1.0 / args["steps_per_round"]
    planned = int(round(args["fraction"] * args["rounds"] * args["steps_per_round"]))
    sigma = composed_noise(dataclasses.replace(recipe, popularity_prior=True), q, planned)
    counts = torch.zeros(n_items, dtype=torch.float64)
    for u in range(n_users):  # each device releases its own noisy count vector (sensitivity 1 per record)
        own = torch.from_numpy(np.bincount(positives[u], minlength=n_items)).double()
        counts += own + torch.normal(0.0, args["count_sigma"], (n_items,), generator=gen, dtype=torch.float64)
    prior = log_odds_prior(counts, recipe.negatives)
    model_cfg = dataclasses.replace(recipe.model, prior=True)

    torch.manual_seed(args["seed"])
    table = NeuMF(1, n_items, model_cfg).item_emb.weight.detach().clone()
    table[:, :dim] = feature_rows(ml100k_item_features(data.item_ids), dim, recipe.model.init_std, args["seed"])
    users = torch.randn(n_users, dim) * recipe.model.init_std
    frozen_output = NeuMF(1, n_items, model_cfg).output.state_dict()
    velocity, recent = torch.zeros_like(table), []
    ledgers = [PrivacyLedger([(args["count_sigma"], 1.0, 1)]) for _ in range(n_users)]
    t0 = time.time()
    print(
        f"[{tag}] sigma {sigma:.3f} for {planned} expected steps per device at q {q:.3f}; popularity val "
        f"NDCG@10 {pop:.4f}",
        flush=True,
    )
    for rnd in range(1, args["rounds"] + 1):
        deltas, refused = [], 0
        for u in np.flatnonzero(rng.random(n_users) < args["fraction"]):
            if ledgers[u].epsilon_if(sigma, q, args["steps_per_round"], recipe.delta) > recipe.epsilon:
                refused += 1
                continue
            model = NeuMF(1, n_items, model_cfg)
            model.load_state_dict(
                {
                    "user_emb.weight": users[u : u + 1],
                    "item_emb.weight": table,
                    PRIOR: prior,
                    **{f"output.{k}": v for k, v in frozen_output.items()},
                }
            )
            model.output.requires_grad_(False)
            items = torch.from_numpy(positives[u].astype(np.int64))
            loader = DataLoader(
                TensorDataset(torch.zeros_like(items), items),
                batch_size=max(1, math.ceil(len(items) / args["steps_per_round"])),
            )
            torch.manual_seed(int(rnd * 100_000 + u))
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args["local_lr"])
            module, opt, crit, loader = PrivacyEngine(accountant="rdp").make_private(
                module=model,
                optimizer=opt,
                data_loader=loader,
                criterion=GroupBCE(),
                noise_multiplier=sigma,
                max_grad_norm=recipe.max_grad_norm,
                poisson_sampling=True,
                grad_sample_mode="ghost",
                noise_generator=gen,
            )
            opt.expected_batch_size = max(1, opt.expected_batch_size)
            steps = 0
            for bu, bi in loader:
                steps += 1
                if len(bu) == 0:  # an empty Poisson batch: the step releases pure noise
                    for p in opt.params:
                        p.grad = torch.normal(
                            0.0, sigma * recipe.max_grad_norm / opt.expected_batch_size, p.shape, generator=gen
                        )
                    opt.original_optimizer.step()
                    continue
                uu, ii, yy = _groups(bu, bi, n_items, recipe.negatives, gen)
                opt.zero_grad(set_to_none=True)
                crit(module(uu, ii), yy).backward()
                opt.step()
            module._close()
            ledgers[u].record(sigma, q, steps)
            users[u] = model.user_emb.weight.detach()[0]
            deltas.append(model.item_emb.weight.detach() - table)
        if deltas:
            velocity = args["server_momentum"] * velocity + torch.stack(deltas).mean(0)
            table = table + args["server_lr"] * velocity
        recent = (recent + [table.clone()])[-args["average_last"] :]
        if rnd % args["every"] == 0 or rnd == args["rounds"]:
            model = NeuMF(n_users, n_items, model_cfg)
            model.load_state_dict(
                {
                    "user_emb.weight": users.clone(),
                    "item_emb.weight": torch.stack(recent).mean(0),
                    PRIOR: prior,
                    **{f"output.{k}": v for k, v in frozen_output.items()},
                }
            )
            plain = hit_ndcg(full_ranks(model_scores(model), split, "validation", 0))[1]
            serving_refit(model, split.train_users, split.train_items, args["refit"], 0.01, 0)
            refit = hit_ndcg(full_ranks(model_scores(model), split, "validation", 0))[1]
            eps = sorted(ledger.epsilon(recipe.delta) for ledger in ledgers)
            print(
                f"[{tag}] round {rnd} {time.time() - t0:.0f}s devices {len(deltas)} refused {refused} "
                f"val NDCG@10 {plain:.4f} refit {refit:.4f} (popularity {pop:.4f}) epsilon median "
                f"{eps[len(eps) // 2]:.2f} max {eps[-1]:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
