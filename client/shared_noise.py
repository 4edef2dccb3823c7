"""A device's round under the ``distributed`` mechanism (federated_ddp): one DP-SGD step of the pooled
recipe, with the noise of the shared part split across devices.

Round 1 releases the item histogram: each device sends its item counts plus N(0, count_sigma^2 / m_min)
per item. Every later round each device Poisson-samples its own records at rate q, clips each record's
gradient per group (the rows to C_rows, the tower and output to C_dense; C = sqrt(C_rows^2 + C_dense^2) is
the sensitivity of the whole vector) and
- sends the shared part (item table, tower, output) plus N(0, (sigma C)^2 / m_min) per coordinate: the sum
  over >= m_min devices carries at least the noise sigma C of one central step (the server divides by the
  public expected batch and applies SGD with momentum);
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
    STORES_OPEN,
    Device,
    DeviceStep,
    Trained,
    device_rounds,
    local_model,
    round_randomness,
)
from fedrec.client.fleet import reachable, takes_part
from fedrec.client.round_randomness import POISSON, Draws, RoundRandomness
from fedrec.client.shared_gradients import USER, GroupClips, noise_stds, noisy, stacked_clipped_sums, trained_names
from fedrec.client.shared_opacus import opacus_noisy_sums
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
    """The device step of ``distributed``: the histogram round's noisy counts, then one DP-SGD step a round.
    Each device runs it through Opacus (``shared_opacus``); a node stacking its devices (a simulated fleet)
    computes the same sums for a block of devices at once (``shared_gradients``) and draws each device's
    noise from that device's own stream, in the same order."""

    global_params: Mapping[str, torch.Tensor]
    task: DeviceInstructions
    rows: tuple[str, ...] = (MOMENTUM,)

    @property
    def block(self) -> int:
        return STORES_OPEN if self.task.device.stacked and not self.task.histogram_round else 1

    def train(self, works: Sequence[DeviceWork]) -> list[Trained]:
        shared = self.task.device.shared_noise
        if shared.min_devices < 1:
            raise FedrecError("server message: device.shared_noise.min_devices must be resolved (>= 1) by the server")
        if self.task.histogram_round:
            return [self._histogram(w) for w in works]
        if self.block > 1:
            return self._stacked(works)
        return [self._dp_step(w) for w in works]

    def _histogram(self, work: DeviceWork) -> Trained:
        """Each record counted once (under DP the examples hold every train record once, positive first)."""
        device, privacy = self.task.device, self.task.privacy
        step = self.task.mechanism.round_step(device, privacy, self.task.round.number)
        generator = work.randomness.draws(NOISE)
        counts = torch.bincount(work.items[:, 0], minlength=device.n_items).double()
        share_std = device.shared_noise.share_std(step.noise_multiplier)
        return Trained({COUNTS: counts + noise(tuple(counts.shape), share_std, generator).double()}, {}, 0, 0.0, 1)

    @property
    def clips(self) -> GroupClips:
        return GroupClips(self.task.privacy.max_grad_norm, self.task.device.shared_noise.dense_clip)

    def stds(self, model: NeuMF) -> dict[str, float]:
        """The noise std of each trained parameter: the whole sigma C on the device's own row, its share on
        each shared coordinate."""
        std = self.task.privacy.noise_multiplier * self.clips.total
        return noise_stds(trained_names(model, self.clips), std, self.task.device.shared_noise.share_std(std))

    def _picked(self, work: DeviceWork) -> torch.Tensor:
        return work.randomness.draws(POISSON).bernoulli(len(work.items), self.task.device.shared_noise.record_rate)

    def _model(self, user_row: torch.Tensor) -> NeuMF:
        model = local_model(self.global_params, user_row, self.task.device)
        assert isinstance(model, NeuMF)  # the mechanism refuses other models (Mechanism.any_model)
        return model

    def _dp_step(self, work: DeviceWork) -> Trained:
        generator = work.randomness.draws(NOISE)
        picked = self._picked(work)
        model = self._model(work.user_row)
        sums = opacus_noisy_sums(
            model, work.items[picked], work.labels[picked], self.clips, self.stds(model), generator
        )
        return self._trained(work, sums.sums, sums.examples)

    def _stacked(self, works: Sequence[DeviceWork]) -> list[Trained]:
        """The per-device step for a block of devices: one pass of per-record gradients over all of them."""
        if not works:
            return []
        picked = [self._picked(w) for w in works]
        rows = torch.cat([w.user_row for w in works])
        model = self._model(torch.zeros(1, self.task.device.model.embedding_dim))
        items = [w.items[p] for w, p in zip(works, picked)]
        labels = [w.labels[p] for w, p in zip(works, picked)]
        stds = self.stds(model)
        return [
            self._trained(work, noisy(sums, stds, work.randomness.draws(NOISE)), sums.examples)
            for work, sums in zip(works, stacked_clipped_sums(model, rows, items, labels, self.clips))
        ]

    def _trained(self, work: DeviceWork, sums: Mapping[str, torch.Tensor], examples: int) -> Trained:
        """The shared parameters' noisy sums are the reply; the user row steps here with its own momentum."""
        shared = self.task.device.shared_noise
        step = sums[USER] / self.task.privacy.expected_batch
        momentum = shared.momentum * work.rows[MOMENTUM] + step  # torch.optim.SGD's momentum, on this row alone
        rows = {EMBEDDING: work.user_row - shared.table_lr * momentum, MOMENTUM: momentum}
        return Trained({n: s for n, s in sums.items() if n != USER}, rows, examples, 0.0, 1)


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
    refs = reachable(list(devices), task)
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
