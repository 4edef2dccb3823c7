"""A cheap federated trainer for canary audits: the devices' own training code, no Flower, no stores.

Each round every device with train data trains ``client.local_training.train_local`` (Opacus DP-SGD,
or plain SGD without DP) on its interactions starting from the global parameters and its own user row;
the server takes the example-weighted mean of the global parameters (FedAvg). The noise is calibrated
to the epsilon budget over the planned rounds exactly as the server does. What it leaves out (message
passing, encrypted stores, device sampling) does not change what the DP analysis covers, so it audits
the same mechanism at a fraction of the cost; ``fedrec audit`` uses the real harness by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from fedrec.client.local_training import LocalConfig, make_examples, train_local
from fedrec.common.datasets import Interactions
from fedrec.common.model import ModelConfig, NeuMF, global_state
from fedrec.common.privacy import UNIT, PrivacyLedger, noise_for_budget
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult


@dataclass(frozen=True)
class InProcessConfig:
    rounds: int = 5
    local: LocalConfig = field(default_factory=LocalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    epsilon: float | None = None  # budget that sets the noise; None = use local.noise_multiplier


def _noise(cfg: InProcessConfig, private: bool) -> float:
    if not private:
        return 0.0
    if cfg.epsilon:
        steps = cfg.local.steps * cfg.rounds
        return noise_for_budget(cfg.epsilon, cfg.local.delta, cfg.local.sample_rate, steps)
    return cfg.local.noise_multiplier


def _device_items(split: Split) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per user: train items, and every item the device holds (negatives avoid them all)."""
    order = np.argsort(split.train_users, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(split.train_users, minlength=split.n_users))])
    items = split.train_items[order]
    train, seen = [], []
    for u in range(split.n_users):
        own = items[bounds[u]:bounds[u + 1]]
        held = [x for x in (split.val_items[u], split.test_items[u]) if x >= 0]
        train.append(own)
        seen.append(np.concatenate([own, np.asarray(held, dtype=own.dtype)]))
    return train, seen


def fit_inprocess(data: Interactions, split: Split, seed: int, cfg: InProcessConfig, private: bool) -> ArmResult:
    torch.manual_seed(seed)
    local = replace(cfg.local, noise_multiplier=_noise(cfg, private), epsilon_budget=0.0)
    model = NeuMF(split.n_users, split.n_items, cfg.model)
    global_params = global_state(model)
    user_rows = model.user_emb.weight.detach().clone()
    ledgers = [PrivacyLedger() for _ in range(split.n_users)]
    train, seen = _device_items(split)
    for rnd in range(1, cfg.rounds + 1):
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_params.items()}
        weight = 0
        for u in range(split.n_users):
            if len(train[u]) == 0:
                continue
            device = NeuMF(1, split.n_items, cfg.model)
            device.load_state_dict({**global_params, "user_emb.weight": user_rows[u:u + 1]})
            rng = np.random.default_rng([seed, rnd, u])
            items, labels = make_examples(train[u], seen[u], split.n_items, local.negatives, rng)
            train_local(device, items, labels, local, ledgers[u], seed * 1_000_003 + rnd * 10_007 + u)
            user_rows[u] = device.user_emb.weight.detach()[0]
            for k, v in global_state(device).items():
                total[k] += v.double() * len(items)
            weight += len(items)
        global_params = {k: (v / weight).to(global_params[k].dtype) for k, v in total.items()}
    model.load_state_dict({**global_params, "user_emb.weight": user_rows})
    scores = model.score_users(torch.arange(split.n_users)).numpy()
    info: dict = {"trainer": "in-process FedAvg over client.local_training", "rounds": cfg.rounds,
                  "noise_multiplier": local.noise_multiplier}
    if private:
        eps = np.array([led.epsilon(local.delta) for led in ledgers if led.history])
        info["privacy"] = {"epsilon_max": float(eps.max()), "epsilon_median": float(np.median(eps)),
                           "delta": local.delta, "noise_multiplier": local.noise_multiplier,
                           "sample_rate": local.sample_rate, "steps": max(led.steps for led in ledgers), "unit": UNIT}
    return ArmResult("federated_dp" if private else "federated", scores, info)
