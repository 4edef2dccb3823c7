"""A fast tuning proxy for the federated arms: the real device training code, no Flower, no stores.

    python -m bench.federated_proxy '{"rounds": 30, "strategy": "fedavg", "optimizer": "adam", "lr": 0.01}' [TAG]

Each round samples devices (each flips a coin with probability ``fraction``), runs
``client.local_training.train_local`` for each on its own interactions, and aggregates the example-weighted
mean of their global parameters with FedAvg (``server_lr`` scales the step, as FedAvgM without momentum)
or FedAdam (``eta``, ``tau``). Validation NDCG@10 (full ranking) is printed every ``every`` rounds, with
the users' last trained rows and with rows refitted to the current global model (``refit`` epochs, items
frozen: what on-device personalization does before serving). Settings found here are then run for real
with `fedrec simulate`; this script only makes the search cheap (one process, in memory).
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.client.local_training import make_examples, train_local
from fedrec.client.round_randomness import SimulatedRandomness
from fedrec.common.config import LocalTraining
from fedrec.common.datasets import load_dataset
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.model import ModelConfig, NeuMF, global_state
from fedrec.common.sampling import positive_keys
from fedrec.common.split import temporal_split
from fedrec.common.training import recency_oversample, with_negatives

DEFAULTS = {
    "rounds": 30,
    "fraction": 0.25,
    "strategy": "fedavg",
    "server_lr": 1.0,
    "eta": 0.01,
    "tau": 1e-3,
    "optimizer": "adam",
    "lr": 0.01,
    "steps_per_epoch": 8,
    "local_epochs": 1,
    "negatives": 4,
    "noise": 0.0,
    "clip": 1.0,
    "every": 10,
    "refit": 10,
    "model": {},
    "row_avg": False,
    "emb_l2": 0.0,
    "recent_last": 0,
    "recent_repeats": 0,  # average each item row over the devices whose examples touched it (by count)
    "seed": 0,
}


def validation(model: NeuMF, split, refit: int, keys: np.ndarray) -> tuple[float, float]:
    if refit:
        for p in model.parameters():
            p.requires_grad_(False)
        model.user_emb.weight.requires_grad_(True)
        opt = torch.optim.Adam([model.user_emb.weight], lr=0.01)
        rng = np.random.default_rng(1)
        for _ in range(refit):
            u, i, y = with_negatives(split.train_users, split.train_items, keys, split.n_items, 4, rng)
            perm = rng.permutation(len(u))
            u, i, y = (torch.from_numpy(x[perm]) for x in (u, i, y))
            for start in range(0, len(u), 1024):
                opt.zero_grad()
                sl = slice(start, start + 1024)
                F.binary_cross_entropy_with_logits(model(u[sl], i[sl]), y[sl]).backward()
                opt.step()
    scores = model.score_users(torch.arange(split.n_users)).numpy()
    return hit_ndcg(full_ranks(scores, split, "validation"))


def main() -> None:
    args = {**DEFAULTS, **json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")}
    tag = sys.argv[2] if len(sys.argv) > 2 else "proxy"
    torch.set_num_threads(1)
    torch.manual_seed(args["seed"])
    model_cfg = ModelConfig(**args["model"])
    split = temporal_split(load_dataset("ml-100k"), args["seed"])
    n_users, n_items = split.n_users, split.n_items
    positives = []
    for u in range(n_users):
        mine = split.train_users == u
        times = split.train_timestamps[mine]
        order = recency_oversample(np.zeros(len(times), np.int64), times, args["recent_last"], args["recent_repeats"])
        positives.append(split.train_items[mine][order])
    seen = [np.concatenate([positives[u], [split.val_items[u], split.test_items[u]]]) for u in range(n_users)]
    keys = positive_keys(split.train_users, split.train_items, n_items)
    glob = global_state(NeuMF(1, n_items, model_cfg))
    users = torch.randn(n_users, model_cfg.embedding_dim) * 0.01
    m = {k: torch.zeros_like(v) for k, v in glob.items()}
    v = {k: torch.zeros_like(x) for k, x in glob.items()}
    local = LocalTraining(
        lr=args["lr"],
        steps_per_epoch=args["steps_per_epoch"],
        epochs=args["local_epochs"],
        negatives=args["negatives"],
        optimizer=args["optimizer"],
        emb_l2=args["emb_l2"],
    )
    privacy = DevicePrivacy(args["noise"], args["clip"], budget=math.inf)  # the proxy accounts nothing
    rng = np.random.default_rng(args["seed"])
    t0 = time.time()
    for rnd in range(1, args["rounds"] + 1):
        total = {k: torch.zeros_like(x, dtype=torch.float64) for k, x in glob.items()}
        row_weight = torch.zeros(n_items, 1, dtype=torch.float64)
        weight, loss = 0, 0.0
        for u in np.flatnonzero(rng.random(n_users) < args["fraction"]):
            model = NeuMF(1, n_items, model_cfg)
            model.load_state_dict({**glob, "user_emb.weight": users[u : u + 1]})
            items, labels = make_examples(positives[u], seen[u], n_items, local.negatives, rng)
            out = train_local(model, items, labels, local, privacy, SimulatedRandomness(int(rnd * 100_000 + u)))
            users[u] = model.user_emb.weight.detach()[0]
            counts = torch.bincount(items.flatten(), minlength=n_items).double()[:, None]
            for k, x in global_state(model).items():
                if args["row_avg"] and k == "item_emb.weight":
                    total[k] += x.double() * counts
                else:
                    total[k] += x.double() * len(items)
            row_weight += counts
            weight += len(items)
            loss += out.loss * len(items)
        for k in glob:
            if args["row_avg"] and k == "item_emb.weight":
                touched = row_weight > 0
                mean = torch.where(touched, total[k] / row_weight.clamp(min=1e-12), glob[k].double())
                delta = mean.float() - glob[k]
            else:
                delta = (total[k] / weight).float() - glob[k]
            if args["strategy"] == "fedadam":
                m[k] = 0.9 * m[k] + 0.1 * delta
                v[k] = 0.99 * v[k] + 0.01 * delta * delta
                glob[k] = glob[k] + args["eta"] * m[k] / (v[k].sqrt() + args["tau"])
            else:
                glob[k] = glob[k] + args["server_lr"] * delta
        if rnd % args["every"] == 0 or rnd == args["rounds"]:
            model = NeuMF(n_users, n_items, model_cfg)
            model.load_state_dict({**glob, "user_emb.weight": users.clone()})
            hr, ndcg = validation(model, split, 0, keys)
            hr_p, ndcg_p = validation(model, split, args["refit"], keys)
            print(
                f"[{tag}] round {rnd} {time.time() - t0:.0f}s loss {loss / weight:.3f} val HR@10 {hr:.4f} "
                f"NDCG@10 {ndcg:.4f} | personalized HR@10 {hr_p:.4f} NDCG@10 {ndcg_p:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
