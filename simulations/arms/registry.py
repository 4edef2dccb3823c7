"""Arm names of design.md mapped to the code that fits them."""

from __future__ import annotations

from typing import Callable

from fedrec.common.errors import FedrecError
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult
from fedrec.simulations.arms.centralized import fit_centralized
from fedrec.simulations.arms.centralized_dp import fit_centralized_dp
from fedrec.simulations.arms.simple import fit_ease, fit_popularity, fit_random

CENTRAL_ARMS: dict[str, Callable[..., ArmResult]] = {
    "random": fit_random,
    "popularity": fit_popularity,
    "ease": fit_ease,
    "centralized": fit_centralized,
    "centralized_dp": fit_centralized_dp,
}


def central_fitters(names: list[str], config, show: bool = True) -> dict[str, Callable[[Split, int], ArmResult]]:
    """Bind each named arm to its settings so the experiment only passes (split, seed)."""
    from fedrec.simulations.arms.centralized import CentralConfig

    fitters = {}
    for name in names:
        if name not in CENTRAL_ARMS:
            raise FedrecError(f"unknown arm {name!r}: choose from {', '.join(CENTRAL_ARMS)}")
        if name == "centralized":
            central = CentralConfig(model=config.model, train=config.central)
            fitters[name] = lambda split, seed, c=central: fit_centralized(split, seed, c, show=show)
        elif name == "centralized_dp":
            recipe = centralized_dp_recipe(config)
            fitters[name] = lambda split, seed, r=recipe: fit_centralized_dp(split, seed, r, show=show)
        else:
            fitters[name] = CENTRAL_ARMS[name]
    return fitters


def centralized_dp_recipe(config):
    """The config's ``centralized_dp`` recipe if it has one, at the federated arms' epsilon and delta."""
    import dataclasses

    from fedrec.simulations.arms.centralized_dp import DPRecipe

    recipe = getattr(config, "centralized_dp", None) or DPRecipe()
    federated = getattr(config, "federated", None)
    if federated is None or federated.epsilon is None:
        return recipe
    return dataclasses.replace(recipe, epsilon=float(federated.epsilon), delta=float(federated.delta))
