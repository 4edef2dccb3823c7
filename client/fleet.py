"""A node's devices: one (a phone running a SuperNode) or many (a gateway, or a simulated fleet).

A node serving several devices trains each of them exactly as a one-device node would and replies with
their example-weighted mean and the summed example count. FedAvg over such replies equals FedAvg over
the devices themselves, so grouping devices per node changes dispatch cost, not the aggregate.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.client.batched_plain import supports_plain_batched, train_plain_batched
from fedrec.client.batched_serving import evaluate_batched, serve_batched
from fedrec.client.batched_training import train_private_batched
from fedrec.client.device_round import (
    DeviceRef,
    TrainResult,
    device_seed,
    evaluate_device,
    holds_heldout,
    read_ledger,
    round_examples,
    round_seed_of,
    serve_private,
    train_device,
    training_row,
    write_round,
)
from fedrec.client.stacked import DeviceWork
from fedrec.client.store_key import store_key
from fedrec.common.config import Fleet
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.item_rows import COUNTS, ITEM_TABLE, RowMean, example_counts
from fedrec.common.keys import derive_device_key, load_key_file
from fedrec.common.manifest import load_manifest
from fedrec.common.metrics import hit_ndcg
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


def takes_part(ref: DeviceRef, task: DeviceInstructions) -> bool:
    """This device's coin for the round: seeded in a simulation, from the operating system otherwise."""
    fraction = task.device.participation
    if ref.seeded or fraction >= 1.0:
        return participates(ref.device_id, task.round.number, fraction, task.device.seed)
    return secrets.randbelow(2**53) < fraction * 2**53


STORES_OPEN = 256  # stores a batched node holds open at once (file handles, one block's results in memory)


def train_batched(
    refs: list[DeviceRef], global_params: dict[str, torch.Tensor], task: DeviceInstructions
) -> Iterator[TrainResult]:
    """``train_device`` for many devices at once: the same reads, examples, seeds and write-backs, with the
    training of a block of devices stacked (``client/batched_training.py``, without DP ``batched_plain.py``)."""
    device, prefix, private = task.device, task.device.state_prefix, task.privacy.private
    for start in range(0, len(refs), STORES_OPEN):
        block = refs[start : start + STORES_OPEN]
        with ExitStack() as open_stores:
            stores = [open_stores.enter_context(ref.open()) for ref in block]
            works = []
            for ref, store in zip(block, stores):
                round_seed = round_seed_of(ref, task)
                items, labels = round_examples(store, task, round_seed)
                row = training_row(store, ref.device_id, device)
                works.append(DeviceWork(items, labels, row, read_ledger(store, prefix), round_seed))
            if private:
                results = train_private_batched(
                    global_params, device.model, device.n_items, works, device.training, task.privacy
                )
            else:
                results = train_plain_batched(global_params, device.model, device.n_items, works, device.training)
            for store, work, result in zip(stores, works, results):
                if not result.outcome.refused:
                    write_round(store, prefix, result.user_row, work.ledger)
        for work, r in zip(works, results):
            counts = None if private else example_counts(work.items, device.n_items)
            yield TrainResult(r.state, r.num_examples, r.outcome, counts)


def _trained(
    refs: list[DeviceRef], global_params: dict[str, torch.Tensor], task: DeviceInstructions
) -> Iterator[TrainResult]:
    device = task.device
    plain_stacks = supports_plain_batched(device.model, device.training)
    if device.executor == "batched" and (task.privacy.private or plain_stacks):
        return train_batched(refs, global_params, task)
    return (train_device(ref, global_params, task) for ref in refs)


def train_fleet(
    devices: list[DeviceRef], global_params: dict[str, torch.Tensor], task: DeviceInstructions
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train every participating device; return the weighted mean of their global params: by example
    count without DP (FedAvg), one weight per device under DP (the count would reveal history lengths).
    Without DP and with ``device.item_row_average`` the item table is the mean over the examples that
    used each row, sent with those counts (fedrec.common.item_rows)."""
    device, private = task.device, task.privacy.private
    total: dict[str, torch.Tensor] = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_params.items()}
    rows = RowMean(global_params[ITEM_TABLE]) if device.item_row_average and not private else None
    weight, loss_sum, epsilons, refused, steps = 0, 0.0, [], 0, 0
    sampled = [ref for ref in devices if takes_part(ref, task)]
    for result in _trained(sampled, global_params, task):  # a generator: one state in memory at a time
        epsilons.append(result.outcome.epsilon)
        if result.outcome.refused:
            refused += 1
            continue
        n = device_weight(private, result.num_examples)
        for k, v in result.state.items():
            total[k] += v.double() * n
        if rows is not None and result.item_counts is not None:
            rows.add(result.state[ITEM_TABLE], result.item_counts)
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
    if device.executor == "batched":  # the same refits stacked (client/batched_serving.py), a block at a time
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
    """A private evaluation reply is a count of devices (``allowed_keys``), so no device ranks its held-out
    item; at the final round each stores its serving row, as a plain arm's evaluation does."""
    device = task.device
    if not task.round.final:
        return sum(holds_heldout(ref, device.eval_stage) for ref in devices)
    if device.executor == "batched":
        blocks = (devices[start : start + STORES_OPEN] for start in range(0, len(devices), STORES_OPEN))
        return sum(serve_batched(block, global_params, device) for block in blocks)
    return sum(serve_private(ref, global_params, device) for ref in devices)
