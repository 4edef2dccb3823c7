"""A device's round under the ``user`` mechanism (federated_user_dp): DP-FedAvg with the noise shared.

The unit is everything one user contributes. A sampled device (its own Poisson coin, rate q) trains
locally without any per-record mechanism, the user row included (it never leaves the device and the
device's whole shared update is clipped: joint DP), then clips the change of every shared parameter to
norm C as one vector and adds N(0, (sigma C)^2 / m_min) per coordinate; a device its coin left out sends
that noise alone. The sum over >= m_min devices carries sigma C, the Gaussian mechanism on the sum of
per-user updates of L2 sensitivity C, and no share says whether its device was sampled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedrec.client.device_round import EMBEDDING, Device, Trained, local_model
from fedrec.client.local_training import train_plain
from fedrec.client.round_randomness import USER_NOISE, RoundRandomness
from fedrec.client.shared_noise import noise, train_fleet_shared
from fedrec.client.stacked import DeviceWork
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.model import global_state
from fedrec.common.policy import DevicePolicy


@dataclass(frozen=True)
class UserUpdateStep:
    """The device step of ``user``: plain local training, the whole shared update clipped, its noise share."""

    global_params: Mapping[str, torch.Tensor]
    task: DeviceInstructions
    block: int = 1
    rows: tuple[str, ...] = ()

    def train(self, works: Sequence[DeviceWork]) -> list[Trained]:
        return [self._update(work) for work in works]

    @property
    def share_std(self) -> float:
        privacy = self.task.privacy
        return self.task.device.shared_noise.share_std(privacy.noise_multiplier * privacy.max_grad_norm)

    def noise_only(self, randomness: RoundRandomness) -> dict[str, torch.Tensor]:
        """A device that was not sampled sends N(0, share_std^2) per coordinate, the noise a sampled one adds."""
        generator = randomness.draws(USER_NOISE)
        return {k: noise(tuple(v.shape), self.share_std, generator) for k, v in self.global_params.items()}

    def _update(self, work: DeviceWork) -> Trained:
        device, privacy = self.task.device, self.task.privacy
        model = local_model(self.global_params, work.user_row, device)
        stats = train_plain(model, work.items, work.labels, device.training, work.randomness.order_seed())
        update = {k: v - self.global_params[k] for k, v in global_state(model).items()}
        norm = math.sqrt(sum(float(v.double().square().sum()) for v in update.values()))
        scale = min(1.0, privacy.max_grad_norm / (norm + 1e-12))
        generator = work.randomness.draws(USER_NOISE)
        arrays = {k: scale * v + noise(tuple(v.shape), self.share_std, generator) for k, v in update.items()}
        # one release a round (the noisy clipped update): the local step count would follow the record count
        return Trained(arrays, {EMBEDDING: model.user_emb.weight}, len(work.items), stats.loss, 1)


def train_fleet_user(
    devices: Sequence[Device], global_params: dict[str, torch.Tensor], task: DeviceInstructions, policy: DevicePolicy
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The node's sampled devices (each its own coin), their shares summed."""
    return train_fleet_shared(devices, global_params, task, policy, UserUpdateStep(global_params, task))
