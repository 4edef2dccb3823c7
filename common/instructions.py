"""What a server sends a device each round, and what a device may do with it.

The device section of the run config travels whole (``fedrec.common.config.DeviceConfig``), beside the
privacy mechanism the server resolved for this run and the facts of this round. A device reads
nothing else: no run-config defaults on the device side, so a setting cannot silently fall back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binom

from fedrec.common.config import SHARED_MECHANISMS, DeviceConfig, PrivacyConfig
from fedrec.common.dp_recipe import composed_noise
from fedrec.common.errors import FedrecError
from fedrec.common.item_rows import ITEM_TABLE
from fedrec.common.privacy import noise_for_budget
from fedrec.common.replies import SHARED_COUNTS
from fedrec.common.settings import flatten, from_flat, require

FLOWER_KEYS = ("server-round",)  # added by Flower's strategies to every ConfigRecord they send


@dataclass(frozen=True)
class DevicePrivacy:
    """The mechanism a device runs. ``noise_multiplier`` 0 = no DP; otherwise the device refuses any round
    that would take its composed epsilon past ``budget``. Under ``distributed`` the noise multiplier is that
    of the sum over all devices (each device adds its 1/sqrt(min_devices) share) and ``expected_batch`` is
    the public expected number of records sampled per round, which divides the sum; under ``user`` it is
    the expected number of sampled devices (every device's whole update is one unit)."""

    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    budget: float = 0.0
    mechanism: str = "local"
    expected_batch: float = 0.0

    def __post_init__(self) -> None:
        require(self.noise_multiplier >= 0, "noise_multiplier", f"must be >= 0, got {self.noise_multiplier}")
        require(self.max_grad_norm > 0, "max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        require(0.0 < self.delta < 1.0, "delta", f"must be in (0, 1), got {self.delta}")
        require(not self.private or self.budget > 0, "budget", "a private device needs a budget > 0")

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    @property
    def shared(self) -> bool:
        """The noise is split across devices and only the sum is used (distributed, user)."""
        return self.private and self.mechanism in SHARED_MECHANISMS


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

    @property
    def histogram_round(self) -> bool:
        """Round 1 of ``distributed`` releases the item histogram instead of a gradient step."""
        return (
            self.privacy.mechanism == "distributed"
            and self.round.number == 1
            and self.device.shared_noise.count_sigma > 0
        )

    def share_names(self, parameters: Sequence[str]) -> tuple[str, ...]:
        """The arrays, in order, of a node's share under a shared mechanism: what it adds to the round's sum
        (``parameters``: the global model's names as the server sends them)."""
        if self.privacy.mechanism == "user":
            return tuple(parameters)  # the clipped, noised change of every shared parameter
        return (SHARED_COUNTS,) if self.histogram_round else (ITEM_TABLE,)


def planned_rounds(rounds: int, participation: float, quantile: float) -> int:
    """Rounds a device takes at ``quantile`` of Binomial(rounds, participation): each device flips its own
    coin per round, so the noise is planned for the device at that quantile, not for one in every round."""
    if participation >= 1.0 or quantile >= 1.0:
        return rounds
    return max(1, int(binom.ppf(quantile, rounds, participation)))


def resolve_privacy(
    privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
) -> DevicePrivacy:
    """The noise that keeps a device of the planned schedule within epsilon; the budget is the hard stop.
    ``records`` / ``devices`` (the fleet's train records and devices, public as the dataset size in Opacus)
    are needed by ``distributed`` / ``user``."""
    if not privacy.private:
        return DevicePrivacy(0.0, privacy.max_grad_norm, privacy.delta, 0.0)
    if privacy.mechanism == "distributed":
        return _resolve_shared(privacy, device, rounds, records)
    if privacy.mechanism == "user":
        return _resolve_user(privacy, device, rounds, devices)
    planned = planned_rounds(rounds, device.participation, privacy.calibration_quantile)
    sigma = noise_for_budget(
        privacy.epsilon, privacy.delta, device.training.sample_rate, device.training.steps * planned
    )
    return DevicePrivacy(sigma, privacy.max_grad_norm, privacy.delta, privacy.epsilon)


def shared_steps(device: DeviceConfig, rounds: int) -> int:
    """DP-SGD steps of a ``distributed`` run: every round but the first when round 1 releases the histogram."""
    return rounds - int(device.shared_noise.count_sigma > 0)


def _need(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise FedrecError(f"run config: federation.{key}: {message} under this privacy.mechanism")


def _resolve_shared(privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int) -> DevicePrivacy:
    shared = device.shared_noise
    _need(device.participation == 1.0, "device.participation", "must be 1 (every device reports every round)")
    _need(device.model.kind == "gmf", "device.model.kind", "must be gmf (the recipe trains only the rows)")
    _need(records > 0, "device.fleet", "needs a manifest (the number of train records fixes the batch)")
    steps = shared_steps(device, rounds)
    _need(steps >= 1, "server.rounds", f"needs a round after the histogram round, got {rounds}")
    sigma = composed_noise(
        privacy.epsilon, privacy.delta, shared.count_sigma, shared.record_rate, steps, "federation.privacy"
    )
    batch = shared.record_rate * records
    return DevicePrivacy(sigma, privacy.max_grad_norm, privacy.delta, privacy.epsilon, "distributed", batch)


def _resolve_user(privacy: PrivacyConfig, device: DeviceConfig, rounds: int, devices: int) -> DevicePrivacy:
    """DP-FedAvg: every round is one Poisson-subsampled Gaussian step per user, sampled or not."""
    _need(devices > 0, "device.fleet", "needs a manifest (the number of devices fixes the expected sum)")
    q = device.participation
    sigma = noise_for_budget(privacy.epsilon, privacy.delta, q, rounds)
    return DevicePrivacy(sigma, privacy.max_update_norm, privacy.delta, privacy.epsilon, "user", q * devices)
