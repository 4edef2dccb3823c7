"""A device's round under the ``distributed`` mechanism (federated_ddp): one DP-SGD step of the pooled
recipe, with the noise of the shared part split across devices.

Round 1 releases the item histogram: each device sends its item counts plus N(0, count_sigma^2 / m_min)
per item. Every later round each device Poisson-samples its own records at rate q, clips each record's
gradient over both tables together (``fedrec.client.shared_gradients``) and
- sends the item-table part plus N(0, (sigma C)^2 / m_min) per coordinate: the sum over >= m_min devices
  carries at least the noise sigma C of one central step (the server divides by the public expected batch
  and applies SGD with momentum);
- steps its own user row with the user-row part plus the full noise N(0, (sigma C)^2), divided by the same
  expected batch, with its own momentum buffer: the row is never aggregated, so it carries the full noise.
Together that is the Gaussian mechanism of one central DP-SGD step on the whole parameter vector
(docs/privacy.md). A node serving several devices replies with their sum: the value SecAgg+ would reveal.

A simulated device draws its sampling and noise from streams seeded per device and round, so runs repeat;
a deployed one from streams keyed by the operating system (``fedrec.client.round_randomness``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from fedrec.client.device_round import (
    EMBEDDING,
    Device,
    DeviceStep,
    Trained,
    device_rounds,
    local_model,
    round_randomness,
)
from fedrec.client.fleet import takes_part
from fedrec.client.round_randomness import POISSON, Draws, RoundRandomness
from fedrec.client.shared_gradients import ITEM, clipped_sums
from fedrec.client.stacked import DeviceWork
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.model import NeuMF
from fedrec.common.policy import DevicePolicy
from fedrec.common.randomness import NOISE
from fedrec.common.replies import SHARED_COUNTS as COUNTS
from fedrec.common.replies import train_metrics

MOMENTUM = "user_momentum"  # the device's own SGD momentum buffer for its user row


def noise(shape: tuple[int, ...], std: float, draws: Draws) -> torch.Tensor:
    return draws.normal(shape, std) if std > 0 else torch.zeros(shape)


@dataclass(frozen=True)
class SharedGradientStep:
    """The device step of ``distributed``: the histogram round's noisy counts, then one DP-SGD step a round."""

    global_params: Mapping[str, torch.Tensor]
    task: DeviceInstructions
    block: int = 1
    rows: tuple[str, ...] = (MOMENTUM,)

    def train(self, works: Sequence[DeviceWork]) -> list[Trained]:
        shared = self.task.device.shared_noise
        if shared.min_devices < 1:
            raise FedrecError("server message: device.shared_noise.min_devices must be resolved (>= 1) by the server")
        return [self._histogram(w) if self.task.histogram_round else self._dp_step(w) for w in works]

    def _histogram(self, work: DeviceWork) -> Trained:
        """Each record counted once (under DP the examples hold every train record once, positive first)."""
        device, privacy = self.task.device, self.task.privacy
        step = self.task.mechanism.round_step(device, privacy, self.task.round.number)
        generator = work.randomness.draws(NOISE)
        counts = torch.bincount(work.items[:, 0], minlength=device.n_items).double()
        share_std = device.shared_noise.share_std(step.noise_multiplier)
        return Trained({COUNTS: counts + noise(tuple(counts.shape), share_std, generator).double()}, {}, 0, 0.0, 1)

    def _dp_step(self, work: DeviceWork) -> Trained:
        device, privacy, shared = self.task.device, self.task.privacy, self.task.device.shared_noise
        generator = work.randomness.draws(NOISE)
        model = local_model(self.global_params, work.user_row, device)
        assert isinstance(model, NeuMF)  # the mechanism refuses other models (Mechanism.any_model)
        picked = work.randomness.draws(POISSON).bernoulli(len(work.items), shared.record_rate)
        sums = clipped_sums(model, work.items[picked], work.labels[picked], privacy.max_grad_norm)
        std = privacy.noise_multiplier * privacy.max_grad_norm
        table = sums.items + noise(tuple(sums.items.shape), shared.share_std(std), generator)
        step = (sums.user + noise(tuple(sums.user.shape), std, generator)) / privacy.expected_batch
        momentum = shared.momentum * work.rows[MOMENTUM] + step  # torch.optim.SGD's momentum, on this row alone
        rows = {EMBEDDING: work.user_row - shared.table_lr * momentum, MOMENTUM: momentum}
        return Trained({ITEM: table}, rows, sums.examples, 0.0, 1)


@runtime_checkable
class NoiseOnly(Protocol):
    def noise_only(self, randomness: RoundRandomness) -> dict[str, torch.Tensor]:
        """The share of a device whose coin said no: its noise alone, drawn as a sampled device draws it."""


def train_fleet_shared(
    devices: Iterable[Device],
    global_params: dict[str, torch.Tensor],
    task: DeviceInstructions,
    policy: DevicePolicy,
    step: DeviceStep | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The shares of this node's devices, summed; ``num-examples`` is how many carry noise. A device whose
    coin said no sends its noise alone when the step can make it (``NoiseOnly``, under ``user``): then every
    share carries noise, any sum SecAgg+ reveals holds the noise of as many devices as it has shares, and the
    server cannot tell who was sampled."""
    refs = list(devices)
    coins = [takes_part(ref, task) for ref in refs]  # once each: a deployed device's coin is not repeatable
    step = step or SharedGradientStep(global_params, task)
    total: dict[str, torch.Tensor] = {}

    def add(arrays: Mapping[str, torch.Tensor]) -> None:
        for key, value in arrays.items():
            total[key] = total[key] + value.double() if key in total else value.double()

    epsilons, refused, steps = [], 0, 0
    for result in device_rounds([r for r, coin in zip(refs, coins) if coin], task, step, policy):
        epsilons.append(result.outcome.epsilon)
        if result.outcome.refused:
            refused += 1
            continue
        steps = max(steps, result.outcome.steps)
        add(result.arrays)
    reported = len(epsilons) - refused
    absent = [r for r, coin in zip(refs, coins) if not coin]
    if (
        absent
        and isinstance(step, NoiseOnly)
        and policy.refusal(task.privacy, task.device, task.mechanism.shared) is None
    ):
        for ref in absent:
            add(step.noise_only(round_randomness(ref, task)))
        reported += len(absent)
    if not total:  # nothing to add: an all-zero share keeps the round's layout (SecAgg+ needs every array)
        for name in task.share_names(list(global_params)):
            shape = (task.device.n_items,) if name == COUNTS else tuple(global_params[name].shape)
            total[name] = torch.zeros(shape, dtype=torch.float64)
    return total, train_metrics(reported, reported, refused, steps, epsilons, private=True)
