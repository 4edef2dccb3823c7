"""Record-level DP-SGD on each device (Opacus): the ``federated_dp`` arm. Every device keeps its own ledger
and refuses a round that would take it past epsilon; nothing else need be trusted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedrec.common.mechanisms.base import DevicePrivacy, Mechanism, planned_rounds
from fedrec.common.privacy import UNIT, noise_for_budget

if TYPE_CHECKING:
    from fedrec.common.config import DeviceConfig, PrivacyConfig


class LocalDP(Mechanism):
    name = "local"
    unit = UNIT
    trusted = "only the device itself (its code, its random numbers)"
    trust = "trusting only the device"
    server_sees = "each node's mean of DP updates"
    reads = (
        "privacy.epsilon",
        "privacy.delta",
        "privacy.max_grad_norm",
        "privacy.calibration_quantile",
        "device.participation",
        "device.training.steps_per_epoch",
        "device.training.epochs",
    )
    # Nothing is refused: a harness configuration names this mechanism (local is the default) while it
    # also sets up the arms of the others, and every setting this one does not read, another one does.
    ignores = ()

    def plan(
        self, privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
    ) -> DevicePrivacy:
        """Noise for the device at ``calibration_quantile`` of the rounds it takes."""
        planned = planned_rounds(rounds, device.participation, privacy.calibration_quantile)
        training = device.training
        sigma = noise_for_budget(privacy.epsilon, privacy.delta, training.sample_rate, training.steps * planned)
        return DevicePrivacy(sigma, privacy.max_grad_norm, privacy.delta, privacy.epsilon, self.name)
