"""One federated training run on whatever grid Flower hands us (simulation or deployment)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedrec.common.config import DeviceConfig, FederationConfig
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy
from fedrec.common.manifest import is_provisioned, load_manifest
from fedrec.common.mechanisms import mechanism_for
from fedrec.common.record_values import float_list
from fedrec.common.secure_sum import check_shared_noise
from fedrec.common.settings import to_nested
from fedrec.server.checkpoint import load_checkpoint, save_checkpoint, save_final_model
from fedrec.server.shared_noise import build_shared_strategy
from fedrec.server.strategies import build_strategy

log = logging.getLogger("fedrec.server")
RoundCallback = Callable[[int, dict], None]


@dataclass(frozen=True)
class FederationResult:
    model: Path  # global_model.pt (model.json beside it)
    config: FederationConfig  # resolved: n_items read from the manifest
    privacy: DevicePrivacy  # the mechanism every device ran


def resolve_items(device: DeviceConfig) -> DeviceConfig:
    """The catalogue size: given, or from the fleet's manifest (public)."""
    if device.n_items > 0:
        return device
    if device.fleet.stores_dir and is_provisioned(device.fleet.stores_dir):
        return replace(device, n_items=load_manifest(device.fleet.stores_dir).n_items)
    raise FedrecError("run config: set device.n_items (catalogue size) or device.fleet.stores_dir with a manifest")


def fleet_size(device: DeviceConfig) -> int:
    """Devices in the fleet (public: the run config's total, else the manifest's; 0 without either)."""
    if device.fleet.devices:
        return device.fleet.devices
    if device.fleet.stores_dir and is_provisioned(device.fleet.stores_dir):
        return len(load_manifest(device.fleet.stores_dir).devices)
    return 0


def resolve_min_devices(device: DeviceConfig) -> DeviceConfig:
    """``shared_noise.min_devices`` 0 = the fleet of the manifest less ``dropout_tolerance`` of it (rounded
    up): every reporting device sends a noisy share each round (under ``user`` also those their coin left
    out), and a round that misses up to that share of the fleet still carries the whole noise."""
    if device.shared_noise.min_devices > 0:
        return device
    fleet = fleet_size(device)
    if not fleet:
        raise FedrecError("run config: set device.shared_noise.min_devices or device.fleet.stores_dir with a manifest")
    minimum = max(1, math.ceil(round((1.0 - device.shared_noise.dropout_tolerance) * fleet, 9)))
    return replace(device, shared_noise=replace(device.shared_noise, min_devices=minimum))


def train_records(device: DeviceConfig) -> int:
    """The fleet's number of train records (public: the run config's total, else the manifest's)."""
    if device.fleet.train_records:
        return device.fleet.train_records
    if device.fleet.stores_dir and is_provisioned(device.fleet.stores_dir):
        return sum(d.counts.get("train", 0) for d in load_manifest(device.fleet.stores_dir).devices)
    return 0


def initial_state(device: DeviceConfig, privacy: DevicePrivacy | None = None) -> dict[str, torch.Tensor]:
    """The global model the first round starts from: the mechanism's (a seeded random NeuMF by default)."""
    return mechanism_for(privacy or DevicePrivacy()).initial_state(device)


def _scalars(record: MetricRecord | None) -> dict:
    return {k: v for k, v in (record or {}).items() if not isinstance(v, list)}


def run_federation(grid: Grid, cfg: FederationConfig, on_round: RoundCallback | None = None) -> FederationResult:
    """Train for the configured rounds, checkpointing each; resume from ``out_dir`` if a checkpoint is there."""
    cfg = replace(cfg, device=resolve_items(cfg.device))
    mechanism = mechanism_for(cfg.privacy)
    privacy = mechanism.plan(
        cfg.privacy, cfg.device, cfg.server.rounds, train_records(cfg.device), fleet_size(cfg.device)
    )
    if mechanism.shared:
        cfg = replace(cfg, device=resolve_min_devices(cfg.device))
        if cfg.server.secure_aggregation.enabled:
            check_shared_noise(cfg.server.secure_aggregation, cfg.device.shared_noise.min_devices)
    out_dir = Path(cfg.server.out_dir or "fedrec-server")
    out_dir.mkdir(parents=True, exist_ok=True)
    total_rounds = cfg.server.rounds
    checkpoint = load_checkpoint(out_dir, cfg)
    start_round = int(checkpoint["round"]) if checkpoint else 0
    state = checkpoint["state"] if checkpoint else initial_state(cfg.device, privacy)
    if checkpoint:
        log.info("resuming from %s at round %d of %d", out_dir / "checkpoint.pt", start_round, total_rounds)
    instructions = DeviceInstructions(cfg.device, privacy)
    schedule: dict[str, Any] = dict(
        round_offset=start_round,
        last_round=total_rounds - start_round,
        eval_every=cfg.server.eval_every,
        wire_log=out_dir / "wire.jsonl",
    )
    step = mechanism.server_step(cfg)
    strategy = (
        build_shared_strategy(cfg, instructions, step, **schedule)
        if step is not None
        else build_strategy(cfg.server.strategy, cfg.device.training.lr, instructions, **schedule)
    )
    resolved = {"federation": to_nested(cfg), "privacy": to_nested(privacy)}
    rounds_log = out_dir / "rounds.jsonl"
    t_last = [time.perf_counter()]

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        absolute = start_round + server_round
        save_checkpoint(out_dir, absolute, arrays.to_torch_state_dict(), resolved)
        train, evaluate = _scalars(strategy.last_train_metrics), _scalars(strategy.last_evaluate_metrics)
        trained = strategy.last_train_metrics
        entry = {
            "round": absolute,
            "wall_s": time.perf_counter() - t_last[0],
            "train": train,
            "evaluate": evaluate,
            "epsilons": float_list(trained, "epsilons", default=[]) if trained is not None else [],
        }
        t_last[0] = time.perf_counter()
        with rounds_log.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        log.info("round %d/%d %s", absolute, total_rounds, {**train, **evaluate})
        if on_round:
            on_round(absolute, entry)
        return None

    remaining = total_rounds - start_round
    final = state
    if remaining > 0:  # the mixin writes each round's config from the instructions
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(state), num_rounds=remaining, evaluate_fn=after_round
        )
        final = result.arrays.to_torch_state_dict() or state  # empty when no round produced an update
    path = save_final_model(out_dir, final, resolved)
    log.info("final global model written to %s (checkpoints in %s)", path, out_dir)
    return FederationResult(path, cfg, privacy)
