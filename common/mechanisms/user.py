"""User-level DP-FedAvg with the noise shared: the ``federated_user_dp`` arm. A sampled device (its own
Poisson coin, rate q) trains plainly, clips its whole update to norm C and adds its 1/sqrt(min_devices)
share of the noise; a device its coin left out sends that noise share alone, so every share carries noise
and the server, which sees only the sum (SecAgg+), cannot tell who was sampled. It applies the sum as
FedAvgM applies an update."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedrec.common.mechanisms.base import (
    AccountantStep,
    DevicePrivacy,
    History,
    Ignored,
    Mechanism,
    ServerStep,
    Trainer,
    need,
)
from fedrec.common.privacy import USER_UNIT, noise_for_budget

if TYPE_CHECKING:
    from fedrec.common.config import DeviceConfig, FederationConfig, PrivacyConfig


class UserDP(Mechanism):
    name = "user"
    unit = USER_UNIT
    trusted = (
        "the devices and secure aggregation, as under distributed (every device sends a noisy share each round, "
        "sampled or not, so the server does not learn who was sampled)"
    )
    trust = "trusting secure aggregation and the devices' noise shares"
    server_sees = "only the noisy sum per round of every device's share"
    shared = True
    user_level = True
    trainer = Trainer.USER_UPDATES
    reads = (
        "privacy.epsilon",
        "privacy.delta",
        "privacy.max_update_norm",
        "device.participation",
        "device.shared_noise.min_devices",
        "device.shared_noise.tolerated_collusion",
        "server.strategy.server_lr",
        "server.strategy.server_momentum",
        "device.fleet.devices",
    )
    ignores = (
        Ignored(
            "server.strategy.name",
            "the server applies the mean update as FedAvgM does, with server_lr and server_momentum",
            ("fedavg", "fedavgm"),
        ),
        Ignored("server.strategy.tau", "it is FedAdam's; the server applies the mean update as FedAvgM does"),
    )

    def plan(
        self, privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
    ) -> DevicePrivacy:
        """Every round is one Poisson-subsampled Gaussian step per user, sampled or not."""
        need(devices > 0, "device.fleet", "needs a manifest (the number of devices fixes the expected sum)", self.name)
        q = device.participation
        sigma = noise_for_budget(privacy.epsilon, privacy.delta, q, rounds)
        return DevicePrivacy(sigma, privacy.max_update_norm, privacy.delta, privacy.epsilon, self.name, q * devices)

    def share_names(self, device: DeviceConfig, round_number: int, parameters: Sequence[str]) -> tuple[str, ...]:
        """The clipped, noised change of every shared parameter."""
        return tuple(parameters)

    def server_step(self, federation: FederationConfig) -> ServerStep:
        """The mean clipped update, applied as FedAvgM applies it."""
        strategy = federation.server.strategy
        return ServerStep(strategy.server_lr, strategy.server_momentum, 1.0)

    def round_step(self, device: DeviceConfig, privacy: DevicePrivacy, round_number: int) -> AccountantStep:
        return AccountantStep(privacy.noise_multiplier, self.sample_rate(device), 1)

    def sample_rate(self, device: DeviceConfig) -> float:
        return device.participation

    def shared_history(self, device: DeviceConfig, privacy: DevicePrivacy, rounds: int) -> History:
        """Every round counts for every user, sampled or not (the sampling amplifies it)."""
        return ((privacy.noise_multiplier, self.sample_rate(device), rounds),) if rounds > 0 else ()
