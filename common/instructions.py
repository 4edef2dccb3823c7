"""What a server sends a device each round, and what a device may do with it.

The device section of the run config travels whole (``fedrec.common.config.DeviceConfig``), beside the
privacy mechanism the server resolved for this run and the facts of this round. A device reads
nothing else: no run-config defaults on the device side, so a setting cannot silently fall back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binom

from fedrec.common.config import DeviceConfig, PrivacyConfig
from fedrec.common.privacy import noise_for_budget
from fedrec.common.settings import flatten, from_flat, require

FLOWER_KEYS = ("server-round",)  # added by Flower's strategies to every ConfigRecord they send


@dataclass(frozen=True)
class DevicePrivacy:
    """The mechanism a device runs. ``noise_multiplier`` 0 = no DP; otherwise the device refuses any round
    that would take its composed epsilon past ``budget``."""

    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    budget: float = 0.0

    def __post_init__(self) -> None:
        require(self.noise_multiplier >= 0, "noise_multiplier", f"must be >= 0, got {self.noise_multiplier}")
        require(self.max_grad_norm > 0, "max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        require(0.0 < self.delta < 1.0, "delta", f"must be in (0, 1), got {self.delta}")
        require(not self.private or self.budget > 0, "budget", "a private device needs a budget > 0")

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0


@dataclass(frozen=True)
class RoundInfo:
    number: int = 0  # the absolute round (a resumed run continues the count)
    final: bool = False  # the final evaluation: devices keep their serving row for `fedrec recommend`


@dataclass(frozen=True)
class DeviceInstructions:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    privacy: DevicePrivacy = field(default_factory=DevicePrivacy)
    round: RoundInfo = field(default_factory=RoundInfo)

    def to_config(self) -> dict[str, Any]:
        return flatten(self)

    @classmethod
    def from_config(cls, record: Mapping[str, Any], source: str = "server message") -> DeviceInstructions:
        return from_flat(cls, {k: v for k, v in record.items() if k not in FLOWER_KEYS}, source)


def planned_rounds(rounds: int, participation: float, quantile: float) -> int:
    """Rounds a device takes at ``quantile`` of Binomial(rounds, participation): each device flips its own
    coin per round, so the noise is planned for the device at that quantile, not for one in every round."""
    if participation >= 1.0 or quantile >= 1.0:
        return rounds
    return max(1, int(binom.ppf(quantile, rounds, participation)))


def resolve_privacy(privacy: PrivacyConfig, device: DeviceConfig, rounds: int) -> DevicePrivacy:
    """The noise that keeps a device of the planned schedule within epsilon; the budget is the hard stop."""
    if not privacy.private:
        return DevicePrivacy(0.0, privacy.max_grad_norm, privacy.delta, 0.0)
    planned = planned_rounds(rounds, device.participation, privacy.calibration_quantile)
    sigma = noise_for_budget(
        privacy.epsilon, privacy.delta, device.training.sample_rate, device.training.steps * planned
    )
    return DevicePrivacy(sigma, privacy.max_grad_norm, privacy.delta, privacy.epsilon)
