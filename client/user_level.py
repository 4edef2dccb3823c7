"""A device's round under the ``user`` mechanism (federated_user_dp): DP-FedAvg with the noise shared.

The unit is everything one user contributes. A sampled device (its own Poisson coin, rate q) trains
locally without any per-record mechanism, the user row included (it never leaves the device and the
device's whole shared update is clipped: joint DP), then clips the change of every shared parameter to
norm C as one vector and adds N(0, (sigma C)^2 / m_min) per coordinate. The sum over >= m_min sampled devices
carries sigma C, the Gaussian mechanism on the sum of per-user updates of L2 sensitivity C.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedrec.client.device_round import (
    DeviceRef,
    device_model,
    round_examples,
    round_seed_of,
    stream_seed,
    write_round,
)
from fedrec.client.fleet import takes_part
from fedrec.client.local_training import train_plain
from fedrec.client.shared_noise import Share, noise, train_fleet_shared, user_history
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.model import global_state
from fedrec.common.privacy import PrivacyLedger, history_epsilon, over_budget


def user_share(ref: DeviceRef, global_params: dict[str, torch.Tensor], task: DeviceInstructions) -> Share:
    device, privacy = task.device, task.privacy
    history = user_history(task)
    epsilon = history_epsilon(history, privacy.delta)
    if over_budget(epsilon, privacy.budget):
        return Share(None, history_epsilon(user_history(task, task.round.number - 1), privacy.delta), 0)
    with ref.open() as store:
        model = device_model(store, ref.device_id, global_params, device)
        seed = round_seed_of(ref, task)
        items, labels = round_examples(store, task, seed)
        outcome = train_plain(model, items, labels, device.training, seed)
        write_round(store, device.state_prefix, model.user_emb.weight, PrivacyLedger(list(history)))
    update = {k: v - global_params[k] for k, v in global_state(model).items()}
    norm = math.sqrt(sum(float(v.double().square().sum()) for v in update.values()))
    scale = min(1.0, privacy.max_grad_norm / (norm + 1e-12))
    generator = torch.Generator().manual_seed(stream_seed("user-noise", seed))
    std = privacy.noise_multiplier * privacy.max_grad_norm / math.sqrt(device.shared_noise.min_devices)
    arrays = {k: scale * v + noise(tuple(v.shape), std, generator) for k, v in update.items()}
    return Share(arrays, epsilon, outcome.steps)


def train_fleet_user(
    devices: list[DeviceRef], global_params: dict[str, torch.Tensor], task: DeviceInstructions
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The node's sampled devices (each its own coin), their shares summed."""
    sampled = [ref for ref in devices if takes_part(ref, task)]
    return train_fleet_shared(sampled, global_params, task, user_share)
