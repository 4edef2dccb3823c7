"""The arms of the table (``table.py``) bound to their settings, so that an experiment only passes
(split, seed): each arm's ``fitter`` names its binder, imported when the arm is bound (a run without a
federated arm does not import Flower)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from fedrec.common.config import FedrecConfig
from fedrec.common.datasets import Interactions
from fedrec.common.settings import from_flat
from fedrec.simulations.arms.base import ArmBinding, Fitter
from fedrec.simulations.arms.table import CENTRAL_ARMS, Arm, arms_named


def binder(arm: Arm) -> Callable[[ArmBinding], Fitter]:
    module, name = arm.fitter.split(":")
    return getattr(importlib.import_module(f"fedrec.simulations.arms.{module}"), name)


def bind(
    arm: Arm,
    config: FedrecConfig,
    name: str | None = None,
    show: bool = True,
    data: Interactions | None = None,
    out: Path | None = None,
    primary_seed: int = 0,
) -> Fitter:
    """The arm's fitter under ``config``; ``name`` is the name it runs under (default: the arm's)."""
    return binder(arm)(ArmBinding(arm, name or arm.name, config, show, data, out, primary_seed))


def at_budget(config: FedrecConfig, arm: Arm, epsilon: float) -> FedrecConfig:
    """``config`` with the private arm's budget at ``epsilon`` (its delta and every other setting kept)."""
    return from_flat(FedrecConfig, {f"{arm.budget}.epsilon": epsilon}, "--sweep", complete=False, base=config)


def central_fitters(names: list[str], config: FedrecConfig, show: bool = True) -> dict[str, Fitter]:
    """The centralized arms of ``names`` bound to their settings (fedrec baseline)."""
    return {arm.name: bind(arm, config, show=show) for arm in arms_named(names, CENTRAL_ARMS, "fedrec baseline")}
