"""A cheap federated trainer for canary audits: the devices' own training code, no Flower, no stores.

Each round every device that flips heads (the harness's participation coin) trains
``fedrec.client.local_training.train_local`` (Opacus DP-SGD, or plain training without DP) on its
interactions, starting from the global parameters and its own user row, and refuses a round past its
budget; the server takes the mean of the global parameters weighted as a node weighs its devices
(``fedrec.common.replies.device_weight``: each private device once). The noise is
resolved from the audited arm's settings exactly as the server resolves it. What it leaves out
(message passing, encrypted stores) does not change what the DP analysis covers, so it audits the same
mechanism at a fraction of the cost; ``fedrec audit`` uses the real harness by default.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from fedrec.client.fleet import participates
from fedrec.client.local_training import make_examples, train_local
from fedrec.common.config import FederationConfig
from fedrec.common.datasets import Interactions
from fedrec.common.instructions import resolve_privacy
from fedrec.common.mechanisms import mechanism_for
from fedrec.common.model import NeuMF, global_state
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.replies import device_weight
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult


def _train_items(split: Split) -> list[np.ndarray]:
    """Per user: the train items (the held-out ones never shape training)."""
    order = np.argsort(split.train_users, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(split.train_users, minlength=split.n_users))])
    items = split.train_items[order]
    return [items[bounds[u] : bounds[u + 1]] for u in range(split.n_users)]


def fit_inprocess(data: Interactions, split: Split, seed: int, federation: FederationConfig) -> ArmResult:
    torch.manual_seed(seed)
    device = replace(federation.device, n_items=split.n_items, seed=seed)
    training, rounds = device.training, federation.server.rounds
    privacy = resolve_privacy(federation.privacy, device, rounds)
    model = NeuMF(split.n_users, split.n_items, device.model)
    global_params = global_state(model)
    user_rows = model.user_emb.weight.detach().clone()
    ledgers = [PrivacyLedger() for _ in range(split.n_users)]
    train = _train_items(split)
    for rnd in range(1, rounds + 1):
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_params.items()}
        weight = 0
        for u in range(split.n_users):
            if len(train[u]) == 0 or not participates(str(u), rnd, device.participation, seed):
                continue
            local = NeuMF(1, split.n_items, device.model)
            local.load_state_dict({**global_params, "user_emb.weight": user_rows[u : u + 1]})
            rng = np.random.default_rng([seed, rnd, u])
            items, labels = make_examples(
                train[u], None if privacy.private else train[u], split.n_items, training.negatives, rng
            )
            outcome = train_local(
                local, items, labels, training, privacy, ledgers[u], seed * 1_000_003 + rnd * 10_007 + u
            )
            if outcome.refused:
                continue
            user_rows[u] = local.user_emb.weight.detach()[0]
            n = device_weight(privacy.private, len(items))
            for k, v in global_state(local).items():
                total[k] += v.double() * n
            weight += n
        if weight:
            global_params = {k: (v / weight).to(global_params[k].dtype) for k, v in total.items()}
    model.load_state_dict({**global_params, "user_emb.weight": user_rows})
    scores = model.score_users(torch.arange(split.n_users)).numpy()
    info: dict = {
        "trainer": "in-process FedAvg over fedrec.client.local_training",
        "rounds": rounds,
        "noise_multiplier": privacy.noise_multiplier,
    }
    if privacy.private:
        eps = np.array([led.epsilon(privacy.delta) for led in ledgers if led.history])
        info["privacy"] = {
            "epsilon_max": float(eps.max()),
            "epsilon_median": float(np.median(eps)),
            "delta": privacy.delta,
            "noise_multiplier": privacy.noise_multiplier,
            "sample_rate": training.sample_rate,
            "steps": max(led.steps for led in ledgers),
            "unit": mechanism_for(privacy).unit,
        }
    return ArmResult("federated_dp" if privacy.private else "federated", scores, info)
