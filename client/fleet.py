"""A node's devices: one (a phone running a SuperNode) or many (a gateway, or a simulated fleet).

A node serving several devices trains each of them exactly as a one-device node would and replies with
their example-weighted mean and the summed example count. FedAvg over such replies equals FedAvg over
the devices themselves, so grouping devices per node changes dispatch cost, not the aggregate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedrec.client.device import store_key
from fedrec.client.device_round import DeviceRef, Personalization, device_seed, evaluate_device, train_device
from fedrec.client.local_training import LocalConfig
from fedrec.common.errors import FedrecError
from fedrec.common.metrics import hit_ndcg
from fedrec.common.keys import derive_device_key, load_key_file
from fedrec.common.model import ModelConfig


def node_devices(node_config: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[DeviceRef]:
    """Deployment: node config names one store and its key. Simulation: the node's share of a fleet."""
    if "store" in node_config:
        path = Path(str(node_config["store"]))
        return [DeviceRef(path.stem, path, store_key(path, Path(str(node_config["key-file"]))))]
    source = node_config if "stores-dir" in node_config else cfg  # a gateway's node config names its own group
    stores_dir = Path(str(source["stores-dir"]))
    if not source["stores-dir"] or not (stores_dir / "manifest.json").exists():
        raise FedrecError(f"node has no 'store' in its node config and {stores_dir}/manifest.json does not exist")
    manifest = json.loads((stores_dir / "manifest.json").read_text())
    master = load_key_file(str(source["master-key-file"]))
    part, parts = int(node_config.get("partition-id", 0)), int(node_config.get("num-partitions", 1))
    return [
        DeviceRef(d["device_id"], stores_dir / "stores" / f"{d['device_id']}.db", derive_device_key(master, d["device_id"]),
                  durable=False)
        for d in manifest["devices"][part::parts]
    ]


def local_config(cfg: Mapping[str, Any]) -> LocalConfig:
    return LocalConfig(
        local_epochs=int(cfg["local-epochs"]),
        steps_per_epoch=int(cfg["steps-per-epoch"]),
        lr=float(cfg["lr"]),
        negatives=int(cfg["negatives"]),
        noise_multiplier=float(cfg["noise-multiplier"]),
        max_grad_norm=float(cfg["max-grad-norm"]),
        delta=float(cfg["delta"]),
        epsilon_budget=float(cfg["epsilon-budget"]),
        optimizer=str(cfg["local-optimizer"]),
    )


def personalization(cfg: Mapping[str, Any]) -> Personalization:
    return Personalization(steps=int(cfg["personalize-steps"]), lr=float(cfg["personalize-lr"]),
                           negatives=int(cfg["negatives"]))


def participates(device_id: str, server_round: int, fraction: float, seed: int) -> bool:
    """Poisson device sampling inside a node: each device flips its own seeded coin."""
    if fraction >= 1.0:
        return True
    return np.random.default_rng(device_seed(seed, server_round, "sample:" + device_id)).random() < fraction


def train_fleet(devices: list[DeviceRef], global_params: dict[str, torch.Tensor], model_cfg: ModelConfig,
                cfg: Mapping[str, Any], server_round: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train every participating device; return the example-weighted mean of their global params."""
    local = local_config(cfg)
    seed, prefix = int(cfg["seed"]), str(cfg["state-prefix"])
    n_items = int(cfg["n-items"])
    total: dict[str, torch.Tensor] = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_params.items()}
    weight, loss_sum, epsilons, refused, steps = 0, 0.0, [], 0, 0
    for ref in devices:
        if not participates(ref.device_id, server_round, float(cfg["device-fraction"]), seed):
            continue
        result = train_device(ref, global_params, model_cfg, n_items, local, prefix, server_round, seed)
        epsilons.append(result.outcome.epsilon)
        if result.outcome.refused:
            refused += 1
            continue
        n = result.num_examples
        for k, v in result.state.items():
            total[k] += v.double() * n
        weight += n
        loss_sum += result.outcome.loss * n
        steps = max(steps, result.outcome.steps)
    if weight:
        mean = {k: (v / weight).to(global_params[k].dtype) for k, v in total.items()}
    else:
        mean = {k: v.clone() for k, v in global_params.items()}
    metrics = {
        "num-examples": weight,
        "train-loss": loss_sum / weight if weight else 0.0,
        "devices": len(epsilons) - refused,
        "refused": refused,
        "steps-max": steps,
        "epsilon-max": max(epsilons, default=0.0),
        "epsilons": [float(e) for e in epsilons],
    }
    return mean, metrics


def evaluate_fleet(devices: list[DeviceRef], global_params: dict[str, torch.Tensor], model_cfg: ModelConfig,
                   cfg: Mapping[str, Any]) -> dict[str, Any]:
    ranks = []
    for ref in devices:
        rank = evaluate_device(ref, global_params, model_cfg, int(cfg["n-items"]), str(cfg["state-prefix"]),
                               str(cfg["eval-stage"]), int(cfg["seed"]), personalization(cfg),
                               keep_serving=bool(int(cfg["keep-serving"])))
        if rank is not None:
            ranks.append(rank)
    hr, ndcg = hit_ndcg(np.asarray(ranks, dtype=np.int64))
    return {"num-examples": len(ranks), "hr@10": hr, "ndcg@10": ndcg}
