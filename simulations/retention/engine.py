"""Fit the return model and the two-part user models (oracles) once per dataset, then simulate every arm
under every user model in every (training seed, simulator seed) cell."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.simulations.retention.gaps import fit_gaps
from fedrec.simulations.retention.observed import active_days, observed_retention, observed_survival
from fedrec.simulations.retention.oracles import Oracle, Part, combine, fit_parts, interacted
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
    picks: list[Part]
    likes: list[Part]


def prepare(data: Interactions, parts: tuple[list[Part], list[Part]] | None = None) -> Setup:
    """``parts``: (pick parts, like parts) already fitted, or empty lists to time the return model alone."""
    days = active_days(data)
    gaps = fit_gaps(days)
    model = UserModel(prior=fit_beta(days, gaps), gaps=gaps)
    seen = interacted(data)
    picks, likes = parts if parts is not None else fit_parts(data, seen)
    return Setup(
        seen,
        combine(picks, likes),
        model,
        observed_retention(days),
        observed_survival(days, model.horizon),
        picks,
        likes,
    )


def popularity_scores(data: Interactions) -> np.ndarray:
    counts = np.bincount(data.items, minlength=data.n_items).astype(np.float32)
    return np.broadcast_to(counts, (data.n_users, data.n_items))


@dataclass(frozen=True)
class Policies:
    """Flattened (arm, oracle) pairs with their per-visit satisfaction, ready for the simulator."""

    pairs: list[tuple[str, str]]
    satisfaction: np.ndarray  # [pair, user, visit]: expected liked picks per served slate
    oracle_index: np.ndarray  # [pair]
    first_slate: dict  # arm -> oracle -> {"picks", "liked_picks"}: means over users of the first slate


def build_policies(setup: Setup, arms: dict[str, np.ndarray], popularity: np.ndarray) -> Policies:
    """Every arm under every oracle, plus each oracle's own greedy slates and the popularity reference."""
    n = setup.model.max_visits
    values = [o.value for o in setup.oracles]
    pick_index = {p.name: len(values) + j for j, p in enumerate(setup.picks)}
    values += [p.probability for p in setup.picks]  # the pick part alone, to tell picks from likes
    pairs: list[tuple[str, str]] = []
    blocks: list[np.ndarray] = []
    index: list[int] = []
    first: dict[str, dict[str, dict[str, float]]] = {}
    for name, scores in {**arms, POPULARITY: arms.get(POPULARITY, popularity)}.items():
        sat = slate_satisfaction(scores, setup.seen, values, n)
        for j, oracle in enumerate(setup.oracles):
            pairs.append((name, oracle.name))
            blocks.append(sat[j])
            index.append(j)
            first.setdefault(name, {})[oracle.name] = {
                "picks": float(sat[pick_index[oracle.pick.name], :, 0].mean()),
                "liked_picks": float(sat[j, :, 0].mean()),
            }
    for j, oracle in enumerate(setup.oracles):
        sat = slate_satisfaction(oracle.scores, setup.seen, [oracle.value, oracle.pick.probability], n)
        pairs.append((GREEDY, oracle.name))
        blocks.append(sat[0])
        index.append(j)
        first.setdefault(GREEDY, {})[oracle.name] = {
            "picks": float(sat[1, :, 0].mean()),
            "liked_picks": float(sat[0, :, 0].mean()),
        }
    return Policies(pairs, np.stack(blocks), np.asarray(index), first)


def run_seed(
    setup: Setup, policies: Policies, seed: int, betas: Sequence[float] = BETAS
) -> tuple[dict, dict, np.ndarray]:
    """One seed: ({arm: {oracle: {beta: metrics}}}, {arm: {oracle: {beta: survival}}}, S_ref per oracle)."""
    draws = draw(setup.model, setup.seen.shape[0], seed)
    pop = [i for i, (arm, _) in enumerate(policies.pairs) if arm == POPULARITY]
    at_zero = metrics(
        simulate(policies.satisfaction[pop], np.zeros(len(pop)), np.zeros(1), draws, setup.model), setup.model.horizon
    )
    s_ref = np.empty(len(setup.oracles))
    s_ref[policies.oracle_index[pop]] = at_zero["satisfaction"][:, 0]
    out = metrics(
        simulate(
            policies.satisfaction, s_ref[policies.oracle_index], np.asarray(betas, dtype=np.float64), draws, setup.model
        ),
        setup.model.horizon,
    )
    values: dict = {}
    curves: dict = {}
    for p, (arm, oracle) in enumerate(policies.pairs):
        for b, beta in enumerate(betas):
            values.setdefault(arm, {}).setdefault(oracle, {})[beta_key(beta)] = {
                k: float(v[p, b]) for k, v in out.items() if k != "survival"
            }
            curves.setdefault(arm, {}).setdefault(oracle, {})[beta_key(beta)] = out["survival"][p, b]
    return values, curves, s_ref


TRAINING_SEED_STRIDE = 1000  # simulator seed of cell (t, s) = s + 1000 t: independent draws per training seed


def run_seeds(
    setup: Setup, arms_by_training_seed: list[dict[str, np.ndarray]], popularity: np.ndarray, seeds: Iterable[int]
) -> tuple[list[dict], list[dict], np.ndarray, list[dict]]:
    """Every (training seed, simulator seed) cell: per-cell metrics, survival curves and S_ref, and each
    training seed's first-slate diagnostics. Within a cell every arm shares the same draws."""
    per_cell, curves, refs, first = [], [], [], []
    for t, arms in enumerate(arms_by_training_seed):
        policies = build_policies(setup, arms, popularity)
        first.append(policies.first_slate)
        for seed in seeds:
            values, curve, s_ref = run_seed(setup, policies, seed + TRAINING_SEED_STRIDE * t)
            per_cell.append(values)
            curves.append(curve)
            refs.append(s_ref)
    return per_cell, curves, np.asarray(refs), first
