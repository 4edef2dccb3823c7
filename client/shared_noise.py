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

The simulation's noise is seeded per device and round so runs repeat; any other device draws its seeds
from the operating system (``DeviceRef.seeded``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedrec.client.device_round import (
    EMBEDDING,
    LEDGER,
    ROUNDS,
    DeviceRef,
    device_seed,
    embedding_bytes,
    read_ledger,
    round_examples,
    round_seed_of,
    stream_seed,
)
from fedrec.client.shared_gradients import ITEM, clipped_sums
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.model import NeuMF
from fedrec.common.privacy import PrivacyLedger, over_budget
from fedrec.common.replies import SHARED_COUNTS as COUNTS
from fedrec.common.replies import train_metrics
from fedrec.common.store import DeviceStore

MOMENTUM = "user_momentum"  # the device's own SGD momentum buffer for its user row


@dataclass(frozen=True)
class Share:
    """What one device adds to the round's sum (None when it refused: its budget is spent)."""

    arrays: dict[str, torch.Tensor] | None
    epsilon: float
    steps: int


def noise(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.normal(0.0, std, shape, generator=generator) if std > 0 else torch.zeros(shape)


def _row(store: DeviceStore, name: str, shape: tuple[int, int], init_std: float, seed: int) -> torch.Tensor:
    raw = store.get_state(name)
    if raw is None:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * init_std
    row = np.load(io.BytesIO(raw))
    if row.size != shape[0] * shape[1]:
        raise FedrecError(f"{store.path}: state {name!r} has {row.size} values, the model needs {shape[1]}")
    return torch.from_numpy(row).reshape(shape)


def _commit(store: DeviceStore, prefix: str, ledger: PrivacyLedger, rows: dict[str, torch.Tensor]) -> None:
    """One transaction: ledger, round counter and any rows move together."""
    rounds = int(store.get_state(prefix + ROUNDS) or b"0") + 1
    states = {prefix + LEDGER: ledger.to_json(), prefix + ROUNDS: str(rounds).encode()}
    states.update({prefix + name: embedding_bytes(row) for name, row in rows.items()})
    store.put_states(states)


def device_share(ref: DeviceRef, global_params: dict[str, torch.Tensor], task: DeviceInstructions) -> Share:
    device, privacy, shared = task.device, task.privacy, task.device.shared_noise
    if shared.min_devices < 1:
        raise FedrecError("server message: device.shared_noise.min_devices must be resolved (>= 1) by the server")
    prefix, share_std = device.state_prefix, 1.0 / math.sqrt(shared.min_devices)
    seed = round_seed_of(ref, task)
    generator = torch.Generator().manual_seed(stream_seed("noise", seed))
    with ref.open() as store:
        ledger = read_ledger(store, prefix)
        step = task.mechanism.round_step(device, privacy, task.round.number)
        sigma, rate = step.noise_multiplier, step.sample_rate
        if over_budget(ledger.epsilon_if(sigma, rate, step.steps, privacy.delta), privacy.budget):
            return Share(None, ledger.epsilon(privacy.delta), ledger.steps)
        if task.histogram_round:
            train = np.asarray(store.read_events("train").items, dtype=np.int64)
            counts = torch.from_numpy(np.bincount(train, minlength=device.n_items)).double()
            arrays = {COUNTS: counts + noise(counts.shape, sigma * share_std, generator).double()}
            ledger.record(sigma, rate, step.steps)
            _commit(store, prefix, ledger, {})
            return Share(arrays, ledger.epsilon(privacy.delta), ledger.steps)
        arrays, user_row, momentum = _dp_step(store, ref.device_id, global_params, task, seed, generator)
        ledger.record(sigma, rate, step.steps)
        _commit(store, prefix, ledger, {EMBEDDING: user_row, MOMENTUM: momentum})
    return Share(arrays, ledger.epsilon(privacy.delta), ledger.steps)


def _dp_step(
    store: DeviceStore,
    device_id: str,
    global_params: dict[str, torch.Tensor],
    task: DeviceInstructions,
    seed: int,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    device, privacy, shared = task.device, task.privacy, task.device.shared_noise
    dim = device.model.embedding_dim
    user_row = _row(
        store, device.state_prefix + EMBEDDING, (1, dim), device.model.init_std, device_seed(device.seed, 0, device_id)
    )
    momentum = _row(store, device.state_prefix + MOMENTUM, (1, dim), 0.0, 0)
    model = NeuMF(1, device.n_items, device.model)
    model.load_state_dict({**global_params, "user_emb.weight": user_row})
    items, labels = round_examples(store, task, seed)
    sampler = torch.Generator().manual_seed(stream_seed("poisson", seed))
    picked = torch.rand(len(items), generator=sampler) < shared.record_rate
    sums = clipped_sums(model, items[picked], labels[picked], privacy.max_grad_norm)
    std = privacy.noise_multiplier * privacy.max_grad_norm
    table = sums.items + noise(tuple(sums.items.shape), std / math.sqrt(shared.min_devices), generator)
    step = (sums.user + noise(tuple(sums.user.shape), std, generator)) / privacy.expected_batch
    momentum = shared.momentum * momentum + step  # torch.optim.SGD's momentum, on this row alone
    return {ITEM: table}, user_row - shared.table_lr * momentum, momentum


def user_history(task: DeviceInstructions, rounds: int | None = None) -> tuple[tuple[float, float, int], ...]:
    """A user's accountant history after ``rounds`` (default: this one) of the ``user`` mechanism: every
    round counts, sampled or not (the sampling amplifies it)."""
    done = task.round.number if rounds is None else rounds
    return task.mechanism.shared_history(task.device, task.privacy, done) or ()


ShareFn = Callable[[DeviceRef, dict[str, torch.Tensor], DeviceInstructions], Share]


def train_fleet_shared(
    devices: Iterable[DeviceRef],
    global_params: dict[str, torch.Tensor],
    task: DeviceInstructions,
    share_of: ShareFn = device_share,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every device's share, summed over this node's devices; ``num-examples`` is how many reported."""
    total: dict[str, torch.Tensor] = {}
    epsilons, refused, steps = [], 0, 0
    for ref in devices:
        share = share_of(ref, global_params, task)
        epsilons.append(share.epsilon)
        steps = max(steps, share.steps)
        if share.arrays is None:
            refused += 1
            continue
        for key, value in share.arrays.items():
            total[key] = total[key] + value.double() if key in total else value.double()
    reported = len(epsilons) - refused
    if not total:  # nothing to add: an all-zero share keeps the round's layout (SecAgg+ needs every array)
        for name in task.share_names(list(global_params)):
            shape = (task.device.n_items,) if name == COUNTS else tuple(global_params[name].shape)
            total[name] = torch.zeros(shape, dtype=torch.float64)
    return total, train_metrics(reported, reported, refused, steps, epsilons, private=True)
