"""A node's devices: one (a phone running a SuperNode) or many (a gateway, or a simulated fleet).

A node serving several devices trains each of them exactly as a one-device node would and replies with
their example-weighted mean and the summed example count. FedAvg over such replies equals FedAvg over
the devices themselves, so grouping devices per node changes dispatch cost, not the aggregate.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.client.batched_plain import supports_plain_batched, train_plain_batched
from fedrec.client.batched_serving import evaluate_batched, serve_batched
from fedrec.client.batched_training import train_private_batched
from fedrec.client.device_round import (
    EMBEDDING,
    STORES_OPEN,
    Device,
    DeviceRef,
    RoundResult,
    Trained,
    device_rounds,
    device_seed,
    evaluate_device,
    local_model,
    serve_private,
)
from fedrec.client.local_training import train_local
from fedrec.client.stacked import DeviceWork
from fedrec.client.store_key import store_key
from fedrec.common.config import Fleet
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.item_rows import COUNTS, ITEM_TABLE, RowMean, example_counts
from fedrec.common.keys import derive_device_key, load_key_file
from fedrec.common.manifest import load_manifest
from fedrec.common.metrics import hit_ndcg
from fedrec.common.model import global_state
from fedrec.common.policy import DevicePolicy
from fedrec.common.replies import device_weight, train_metrics


def node_devices(node_config: Mapping[str, Any], fleet: Fleet) -> list[DeviceRef]:
    """Deployment: node config names one store and its key (or a gateway's group). Simulation: the node's
    share of the fleet the server named."""
    if "store" in node_config:
        path = Path(str(node_config["store"]))
        return [DeviceRef(path.stem, path, store_key(path, Path(str(node_config["key-file"]))))]
    gateway = "stores-dir" in node_config  # a deployed gateway's node config names its own group
    if gateway:
        fleet = Fleet(str(node_config["stores-dir"]), str(node_config["master-key-file"]))
    if not fleet.stores_dir:
        raise FedrecError(
            "node has no 'store' in its node config and the server named no fleet (device.fleet.stores_dir)"
        )
    manifest = load_manifest(fleet.stores_dir)
    master = load_key_file(fleet.master_key_file)
    part, parts = int(node_config.get("partition-id", 0)), int(node_config.get("num-partitions", 1))
    return [
        DeviceRef(
            d.device_id,
            manifest.store_path(d),
            derive_device_key(master, d.device_id),
            durable=False,
            seeded=not gateway,  # only a simulated node's randomness repeats from the run config
        )
        for d in manifest.devices[part::parts]
    ]


def participates(device_id: str, server_round: int, fraction: float, seed: int) -> bool:
    """Poisson device sampling inside a node: each device flips its own seeded coin."""
    if fraction >= 1.0:
        return True
    return np.random.default_rng(device_seed(seed, server_round, "sample:" + device_id)).random() < fraction


def reachable(devices: Sequence[Device], task: DeviceInstructions) -> list[Device]:
    """The devices that reach the server this round: all of them, except in a simulated fleet with
    ``fleet.dropout``, where that share of the node's devices (rounded down) misses it, chosen afresh each
    round from a seeded stream (a deployed device never reads the setting)."""
    share = task.device.fleet.dropout
    if share <= 0 or not devices or not all(ref.seeded for ref in devices):
        return list(devices)
    seed = device_seed(task.device.seed, task.round.number, "dropout:" + devices[0].device_id)
    missing = set(np.random.default_rng(seed).choice(len(devices), int(share * len(devices)), replace=False).tolist())
    return [ref for i, ref in enumerate(devices) if i not in missing]


def takes_part(ref: Device, task: DeviceInstructions) -> bool:
    """This device's coin for the round: seeded in a simulation, from the operating system otherwise."""
    fraction = task.device.participation
    if ref.seeded or fraction >= 1.0:
        return participates(ref.device_id, task.round.number, fraction, task.device.seed)
    return secrets.randbelow(2**53) < fraction * 2**53


@dataclass(frozen=True)
class LocalStep:
    """The reference step: each device on its own, Opacus DP-SGD (or plain training without DP)."""

    global_params: Mapping[str, torch.Tensor]
    task: DeviceInstructions
    block: int = 1  # one store open at a time
    rows: tuple[str, ...] = ()

    def train(self, works: Sequence[DeviceWork]) -> list[Trained]:
        device, private = self.task.device, self.task.privacy.private
        out = []
        for work in works:
            model = local_model(self.global_params, work.user_row, device)
            stats = train_local(model, work.items, work.labels, device.training, self.task.privacy, work.randomness)
            counts = None if private else example_counts(work.items, device.n_items)
            arrays, rows = global_state(model), {EMBEDDING: model.user_emb.weight}
            out.append(Trained(arrays, rows, len(work.items), stats.loss, stats.steps, counts))
        return out


@dataclass(frozen=True)
class StackedStep:
    """The same rounds for a block of devices at once (``batched_training`` under DP, else ``batched_plain``),
    tested equal to ``LocalStep``."""

    global_params: Mapping[str, torch.Tensor]
    task: DeviceInstructions
    block: int = STORES_OPEN
    rows: tuple[str, ...] = ()

    def train(self, works: Sequence[DeviceWork]) -> list[Trained]:
        device, privacy = self.task.device, self.task.privacy
        if not all(work.randomness.reproducible for work in works):  # a deployed gateway: Opacus on streams
            return LocalStep(self.global_params, self.task).train(works)
        if privacy.private:
            done = train_private_batched(
                self.global_params, device.model, device.n_items, works, device.training, privacy
            )
        else:
            done = train_plain_batched(self.global_params, device.model, device.n_items, works, device.training)
        return [
            Trained(
                r.state,
                {EMBEDDING: r.user_row},
                r.num_examples,
                r.loss,
                r.steps,
                None if privacy.private else example_counts(work.items, device.n_items),
            )
            for work, r in zip(works, done)
        ]


def local_step(global_params: Mapping[str, torch.Tensor], task: DeviceInstructions) -> LocalStep | StackedStep:
    """The node's executor: stacked when asked for and the settings stack (plain training needs no dropout
    and no L2), else device by device."""
    device = task.device
    plain_stacks = supports_plain_batched(device.model, device.training)
    if device.stacked and (task.privacy.private or plain_stacks):
        return StackedStep(global_params, task)
    return LocalStep(global_params, task)


def train_fleet(
    devices: Sequence[Device],
    global_params: dict[str, torch.Tensor],
    task: DeviceInstructions,
    policy: DevicePolicy,
    tap: Callable[[Device, RoundResult], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train every participating device; return the weighted mean of their global params: by example
    count without DP (FedAvg), one weight per device under DP (the count would reveal history lengths).
    Without DP and with ``device.item_row_average`` the item table is the mean over the examples that
    used each row, sent with those counts (fedrec.common.item_rows). ``tap`` sees each device's own update
    before it is averaged: what a server facing one-device nodes receives (the canary audit's view)."""
    device, private = task.device, task.privacy.private
    total: dict[str, torch.Tensor] = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_params.items()}
    rows = RowMean(global_params[ITEM_TABLE]) if device.item_row_average and not private else None
    weight, loss_sum, epsilons, refused, steps = 0, 0.0, [], 0, 0
    sampled = [ref for ref in reachable(devices, task) if takes_part(ref, task)]
    results = device_rounds(sampled, task, local_step(global_params, task), policy)  # one block in memory at a time
    for ref, result in zip(sampled, results):
        if tap is not None:
            tap(ref, result)
        epsilons.append(result.outcome.epsilon)
        if result.outcome.refused:
            refused += 1
            continue
        n = device_weight(private, result.num_examples)
        for k, v in result.arrays.items():
            total[k] += v.double() * n
        if rows is not None and result.item_counts is not None:
            rows.add(result.arrays[ITEM_TABLE], result.item_counts)
        weight += n
        loss_sum += result.outcome.loss * n
        steps = max(steps, result.outcome.steps)
    trained = len(epsilons) - refused
    if weight:
        mean = {k: (v / weight).to(global_params[k].dtype) for k, v in total.items()}
    else:
        mean = {k: v.clone() for k, v in global_params.items()}
    if rows is not None:
        mean[ITEM_TABLE], mean[COUNTS] = rows.mean(), rows.counts
    loss = loss_sum / weight if weight else 0.0
    return mean, train_metrics(weight, trained, refused, steps, epsilons, private, loss)


def evaluate_fleet(
    devices: list[DeviceRef], global_params: dict[str, torch.Tensor], task: DeviceInstructions
) -> dict[str, Any]:
    device, final = task.device, task.round.final
    if task.privacy.private:
        metrics: dict[str, Any] = {"num-examples": _serve_private(devices, global_params, task)}
        return {k: metrics[k] for k in task.mechanism.reply_keys("evaluate", private=True)}
    if device.stacked:  # the same refits stacked (client/batched_serving.py), a block at a time
        found = [
            rank
            for start in range(0, len(devices), STORES_OPEN)
            for rank in evaluate_batched(devices[start : start + STORES_OPEN], global_params, device, final)
        ]
    else:
        found = [evaluate_device(ref, global_params, device, keep_serving=final) for ref in devices]
    ranks = [rank for rank in found if rank is not None]
    hr, ndcg = hit_ndcg(np.asarray(ranks, dtype=np.int64))
    metrics = {"num-examples": len(ranks), "hr@10": hr, "ndcg@10": ndcg}
    return {k: metrics[k] for k in task.mechanism.reply_keys("evaluate", private=False)}


def _serve_private(devices: list[DeviceRef], global_params: dict[str, torch.Tensor], task: DeviceInstructions) -> int:
    """A private evaluation reply is the number of devices the node serves, a public fact: no device ranks its
    held-out item, and none says whether it holds one (which depends on its history). At the final round
    each stores its serving row, as a plain arm's evaluation does."""
    device = task.device
    if task.round.final:
        if device.stacked:
            for start in range(0, len(devices), STORES_OPEN):
                serve_batched(devices[start : start + STORES_OPEN], global_params, device)
        else:
            for ref in devices:
                serve_private(ref, global_params, device)
    return len(devices)
