"""One full-participation DP round over every ML-100K device, against one centralized NeuMF epoch.

    python -m bench.bench_round [--devices 943] [--nodes 2] [--stores DIR]

Measured side by side in one run:
1. one centralized NeuMF epoch (default centralized settings, 1 torch thread);
2. one federated DP round through Flower's simulation engine (Ray), all devices, evaluation off, taken
   from the server's own per-round wall time (engine start-up excluded);
3. the same round with every device sitting out (device-fraction 0): Flower dispatch + serialization of
   the global model to each node and back, no device work;
4. an in-process breakdown of the device work on a sample of devices: store open+decrypt, example
   building, DP-SGD steps, store write, state copy (the serialization of the reply) and aggregation.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedrec.client.device_round import device_model, embedding_bytes
from fedrec.client.fleet import node_devices
from fedrec.client.local_training import make_examples, train_local
from fedrec.client.round_randomness import SimulatedRandomness
from fedrec.common.config import DEFAULT_CENTRAL, FederationConfig, PrivacyConfig
from fedrec.common.datasets import load_dataset
from fedrec.common.instructions import resolve_privacy
from fedrec.common.keys import create_key_file
from fedrec.common.manifest import is_provisioned
from fedrec.common.model import ModelConfig, NeuMF, global_state
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.sampling import positive_keys
from fedrec.common.split import temporal_split
from fedrec.server.federation import initial_state
from fedrec.simulations.arms.centralized import central_optimizer, train_epoch
from fedrec.simulations.arms.federated import FederatedArm, _run_flower, arm_config
from fedrec.simulations.provision import provision


def centralized_epoch(split, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one epoch after a warm-up one; ``clock=time.process_time`` counts this process' CPU only."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = NeuMF(split.n_users, split.n_items, ModelConfig())
    optimizer, _ = central_optimizer(model, DEFAULT_CENTRAL.train)  # the arm's own
    keys = positive_keys(split.train_users, split.train_items, split.n_items)
    rng = np.random.default_rng(0)
    train_epoch(model, optimizer, split.train_users, split.train_items, keys, DEFAULT_CENTRAL.train, rng)  # warm-up
    t0 = clock()
    train_epoch(model, optimizer, split.train_users, split.train_items, keys, DEFAULT_CENTRAL.train, rng)
    return clock() - t0


def provisioned(devices: int | None, stores: Path | None):
    """ML-100K (its first ``devices`` users), its split, and a dir of device stores (provisioned if new)."""
    data = load_dataset("ml-100k")
    if devices:
        data = data.subset_users(devices)
    split = temporal_split(data, 0)
    stores = stores or Path(tempfile.mkdtemp(prefix="bench-stores-"))
    if not is_provisioned(stores):
        stores.mkdir(parents=True, exist_ok=True)
        provision(data, split, stores, create_key_file(stores / "master.key"))
    return data, split, stores


def flower_round(arm: FederatedArm, stores: Path, participation: float, tag: str) -> float:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-"))
    cfg = arm_config(arm, stores, stores / "master.key", out, 0)
    cfg = replace(
        cfg,
        server=replace(cfg.server, rounds=2, eval_every=10),
        device=replace(cfg.device, participation=participation),
    )
    _run_flower(arm, cfg)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    shutil.rmtree(out, ignore_errors=True)
    return rounds[-1]["wall_s"]  # the second round: workers already warm


def breakdown(cfg: FederationConfig, n: int) -> dict[str, float]:
    """Seconds per device for each part of a device's round (mean over ``n`` devices)."""
    torch.set_num_threads(1)
    device = cfg.device
    refs = node_devices({}, device.fleet)[:n]
    privacy = resolve_privacy(cfg.privacy, device, cfg.server.rounds)
    params = initial_state(device)
    parts = {
        "store open + decrypt": 0.0,
        "examples": 0.0,
        "DP-SGD steps": 0.0,
        "store write": 0.0,
        "reply state copy": 0.0,
        "aggregation (weighted sum)": 0.0,
    }
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    rng = np.random.default_rng(0)
    for i, ref in enumerate(refs):
        t = time.perf_counter()
        store = ref.open()
        train, seen = store.read_events("train").items, store.read_events(None).items
        model = device_model(store, ref.device_id, params, replace(device, state_prefix="bench/"))
        parts["store open + decrypt"] += time.perf_counter() - t
        t = time.perf_counter()
        items, labels = make_examples(
            train.astype(np.int64), seen.astype(np.int64), device.n_items, device.training.negatives, rng
        )
        parts["examples"] += time.perf_counter() - t
        t = time.perf_counter()
        ledger = PrivacyLedger()
        train_local(model, items, labels, device.training, replace(privacy, budget=math.inf), SimulatedRandomness(i))
        ledger.record(privacy.noise_multiplier, device.training.sample_rate, device.training.steps)
        parts["DP-SGD steps"] += time.perf_counter() - t
        t = time.perf_counter()
        store.put_states(
            {"bench/user_embedding": embedding_bytes(model.user_emb.weight), "bench/privacy_ledger": ledger.to_json()}
        )
        store.close()
        parts["store write"] += time.perf_counter() - t
        t = time.perf_counter()
        state = global_state(model)
        parts["reply state copy"] += time.perf_counter() - t
        t = time.perf_counter()
        for k, v in state.items():
            total[k] += v.double() * len(items)
        parts["aggregation (weighted sum)"] += time.perf_counter() - t
    return {k: v / len(refs) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=None, help="first N users (default: all)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--sample", type=int, default=100, help="devices timed in the in-process breakdown")
    parser.add_argument("--stores", type=Path, default=None, help="reuse provisioned stores (else a temp dir)")
    args = parser.parse_args()
    data, split, stores = provisioned(args.devices, args.stores)
    console = Console()
    epoch_s = centralized_epoch(split)
    fed = FederationConfig(privacy=PrivacyConfig(mechanism="local"))
    arm = FederatedArm("bench", data, stores.parent, fed, nodes=args.nodes, show=False)
    round_s = flower_round(arm, stores, 1.0, "dp")
    dispatch_s = flower_round(arm, stores, 1e-9, "idle")
    cfg = arm_config(arm, stores, stores / "master.key", stores.parent / "unused", 0)
    parts = breakdown(cfg, min(args.sample, data.n_users))

    table = Table(
        title=f"{data.n_users} devices, {args.nodes} simulated SuperNodes, DP-SGD (epsilon {fed.privacy.epsilon:g})"
    )
    table.add_column("what")
    table.add_column("seconds", justify="right")
    table.add_column("x centralized epoch", justify="right")
    table.add_row("centralized NeuMF epoch", f"{epoch_s:.2f}", "1.00")
    table.add_row("federated DP round, all devices (Flower simulation)", f"{round_s:.2f}", f"{round_s / epoch_s:.2f}")
    table.add_row(
        "  of which dispatch (same round, no device trains)", f"{dispatch_s:.2f}", f"{dispatch_s / epoch_s:.2f}"
    )
    serial = sum(parts.values()) * data.n_users
    for name, per_device in parts.items():
        table.add_row(
            f"  device work: {name} (x{data.n_users} devices, 1 core)",
            f"{per_device * data.n_users:.2f}",
            f"{per_device * data.n_users / epoch_s:.2f}",
        )
    table.add_row(
        f"  device work, all parts, 1 core (/{args.nodes} nodes in parallel)",
        f"{serial:.2f}",
        f"{serial / args.nodes / epoch_s:.2f}",
    )
    console.print(table)
    console.print(f"ratio round / centralized epoch = {round_s / epoch_s:.2f} (goal <= 3)")


if __name__ == "__main__":
    main()
