"""What an arm hands to the evaluator, the retention simulator and the report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ArmResult:
    name: str
    scores: np.ndarray  # [n_users, n_items], higher is better
    info: dict = field(default_factory=dict)  # hyper-parameters, training curve, privacy, timings
