"""Fit the user model and oracles once per dataset, then simulate every arm under every oracle and seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.simulations.retention.gaps import fit_gaps
from fedrec.simulations.retention.observed import active_days, observed_retention, observed_survival
from fedrec.simulations.retention.oracles import Oracle, ease_oracle, has_ratings, interacted, mf_oracle
from fedrec.simulations.retention.propensity import fit_beta
from fedrec.simulations.retention.simulator import BETAS, UserModel, draw, metrics, simulate
from fedrec.simulations.retention.slates import slate_satisfaction

GREEDY = "oracle_greedy"
POPULARITY = "popularity"


def beta_key(beta: float) -> str:
    return f"{beta:g}"


@dataclass(frozen=True)
class Setup:
    """Everything that depends on the dataset only, shared by every arm and seed."""

    seen: np.ndarray
    oracles: list[Oracle]
    model: UserModel
    observed: dict  # d1, d7, d30, n_users of the cohort
    observed_survival: dict


def prepare(data: Interactions, oracles: list[Oracle] | None = None) -> Setup:
    days = active_days(data)
    gaps = fit_gaps(days)
    model = UserModel(prior=fit_beta(days, gaps), gaps=gaps)
    seen = interacted(data)
    if oracles is None:
        oracles = ([mf_oracle(data, seen)] if has_ratings(data) else []) + [ease_oracle(data, seen)]
    return Setup(seen, oracles, model, observed_retention(days), observed_survival(days, model.horizon))


def popularity_scores(data: Interactions) -> np.ndarray:
    counts = np.bincount(data.items, minlength=data.n_items).astype(np.float32)
    return np.broadcast_to(counts, (data.n_users, data.n_items))


@dataclass(frozen=True)
class Policies:
    """Flattened (arm, oracle) pairs with their per-visit satisfaction, ready for the simulator."""

    pairs: list[tuple[str, str]]
    satisfaction: np.ndarray  # [pair, user, visit]
    oracle_index: np.ndarray  # [pair]


def build_policies(setup: Setup, arms: dict[str, np.ndarray], popularity: np.ndarray) -> Policies:
    """Every arm under every oracle, plus each oracle's own greedy slates and the popularity reference."""
    n = setup.model.max_visits
    relevant = [o.relevant for o in setup.oracles]
    pairs, blocks, index = [], [], []
    for name, scores in {**arms, POPULARITY: arms.get(POPULARITY, popularity)}.items():
        sat = slate_satisfaction(scores, setup.seen, relevant, n)
        for j, oracle in enumerate(setup.oracles):
            pairs.append((name, oracle.name))
            blocks.append(sat[j])
            index.append(j)
    for j, oracle in enumerate(setup.oracles):
        pairs.append((GREEDY, oracle.name))
        blocks.append(slate_satisfaction(oracle.scores, setup.seen, [oracle.relevant], n)[0])
        index.append(j)
    return Policies(pairs, np.stack(blocks), np.asarray(index))


def run_seed(setup: Setup, policies: Policies, seed: int, betas=BETAS) -> tuple[dict, dict, np.ndarray]:
    """One seed: ({arm: {oracle: {beta: metrics}}}, {arm: {oracle: {beta: survival}}}, S_ref per oracle)."""
    draws = draw(setup.model, setup.seen.shape[0], seed)
    pop = [i for i, (arm, _) in enumerate(policies.pairs) if arm == POPULARITY]
    at_zero = metrics(simulate(policies.satisfaction[pop], np.zeros(len(pop)), np.zeros(1), draws, setup.model),
                      setup.model.horizon)
    s_ref = np.empty(len(setup.oracles))
    s_ref[policies.oracle_index[pop]] = at_zero["satisfaction"][:, 0]
    out = metrics(simulate(policies.satisfaction, s_ref[policies.oracle_index], np.asarray(betas, dtype=np.float64),
                           draws, setup.model), setup.model.horizon)
    values: dict = {}
    curves: dict = {}
    for p, (arm, oracle) in enumerate(policies.pairs):
        for b, beta in enumerate(betas):
            values.setdefault(arm, {}).setdefault(oracle, {})[beta_key(beta)] = {
                k: float(v[p, b]) for k, v in out.items() if k != "survival"}
            curves.setdefault(arm, {}).setdefault(oracle, {})[beta_key(beta)] = out["survival"][p, b]
    return values, curves, s_ref


def run_seeds(setup: Setup, arms: dict[str, np.ndarray], popularity: np.ndarray, seeds):
    """Per-seed metrics and survival curves, and the S_ref of each seed (a fraction of a second per seed)."""
    policies = build_policies(setup, arms, popularity)
    per_seed, curves, refs = zip(*(run_seed(setup, policies, seed) for seed in seeds))
    return list(per_seed), list(curves), np.asarray(refs)
