"""Arm names (docs/design.md, "Arms") mapped to the code that fits them."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from fedrec.common.config import FedrecConfig
from fedrec.common.errors import FedrecError
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult
from fedrec.simulations.arms.centralized import fit_centralized
from fedrec.simulations.arms.centralized_dp import DPRecipe, fit_centralized_dp
from fedrec.simulations.arms.simple import fit_ease, fit_popularity, fit_random

CENTRAL_ARMS: dict[str, Callable[..., ArmResult]] = {
    "random": fit_random,
    "popularity": fit_popularity,
    "ease": fit_ease,
    "centralized": fit_centralized,
    "centralized_dp": fit_centralized_dp,
}


def central_fitters(
    names: list[str], config: FedrecConfig, show: bool = True
) -> dict[str, Callable[[Split, int], ArmResult]]:
    """Bind each named arm to its settings so the experiment only passes (split, seed)."""
    fitters = {}
    for name in names:
        if name not in CENTRAL_ARMS:
            raise FedrecError(f"unknown arm {name!r}: choose from {', '.join(CENTRAL_ARMS)}")
        # partials of module-level functions, so that a fitter pickles into a background process
        if name == "centralized":
            fitters[name] = partial(fit_centralized, config=config.central, show=show)
        elif name == "centralized_dp":
            recipe = DPRecipe.at(config.centralized_dp, config.federation.privacy)
            fitters[name] = partial(fit_centralized_dp, recipe=recipe, show=show)
        else:
            fitters[name] = CENTRAL_ARMS[name]
    return fitters
