"""What an arm hands to the evaluator, the retention simulator and the report, and what it is handed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.config import FederationConfig, FedrecConfig, PrivacyConfig
from fedrec.common.datasets import Interactions
from fedrec.common.split import Split
from fedrec.simulations.arms.table import Arm


@dataclass
class ArmResult:
    name: str
    scores: np.ndarray  # [n_users, n_items], higher is better
    info: dict = field(default_factory=dict)  # hyper-parameters, training curve, privacy, timings


Fitter = Callable[[Split, int], ArmResult]


@dataclass(frozen=True)
class ArmBinding:
    """What an arm's binder (its table entry's ``fitter``) turns into a fitter: the arm, the name it runs
    under (a sweep arm's is ``<arm>_eps<epsilon>``), the settings at the budget it runs at, and for a
    federated arm the run it writes into."""

    arm: Arm
    name: str
    config: FedrecConfig
    show: bool = True
    data: Interactions | None = None
    out: Path | None = None
    primary_seed: int = 0

    @property
    def settings(self) -> Any:
        """The arm's branch of the settings tree."""
        return getattr(self.config, self.arm.settings)

    @property
    def budget(self) -> PrivacyConfig:
        return budget_of(self.arm, self.config)


def budget_of(arm: Arm, config: FedrecConfig) -> PrivacyConfig:
    """The privacy settings whose epsilon and delta a private arm runs at (its table entry's ``budget``)."""
    node: Any = config
    for part in arm.budget.split("."):
        node = getattr(node, part)
    return node


def federation_of(arm: Arm, config: FedrecConfig) -> FederationConfig:
    """A federated arm's settings: its branch of the tree under the arm's own mechanism."""
    settings: FederationConfig = getattr(config, arm.settings)
    return replace(settings, privacy=replace(settings.privacy, mechanism=arm.mechanism))
