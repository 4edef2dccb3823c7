"""The federated arms through Flower's simulation engine: provision stores, run, collect, score.

Each simulated SuperNode serves a share of the fleet (client/fleet.py): Flower's per-message dispatch
is paid per node, not per device, while the aggregate equals FedAvg over devices.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.client.device_round import ledger_of, serve_device, serving_row
from fedrec.client.fleet import node_devices
from fedrec.common.config import FederationConfig
from fedrec.common.datasets import Interactions
from fedrec.common.errors import FedrecError
from fedrec.common.keys import create_key_file, load_key_file
from fedrec.common.manifest import is_provisioned, load_manifest
from fedrec.common.mechanisms import mechanism_for
from fedrec.common.model import build_model
from fedrec.common.model_files import load_global_model
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.processes import interruptible, reaped_descendants
from fedrec.common.recommender import load_weights
from fedrec.common.settings import to_nested
from fedrec.common.split import Split
from fedrec.server.app import make_server_app
from fedrec.server.federation import FederationResult
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter, federation_of
from fedrec.simulations.progress import progress
from fedrec.simulations.ray_backend import backend_config, require_head


@dataclass
class FederatedArm:
    """Everything needed to run one federated arm in a run dir."""

    name: str
    data: Interactions
    run_dir: Path
    federation: FederationConfig  # this arm's settings (privacy.mechanism says whether it is private)
    nodes: int = 2
    ray_address: str = ""  # an existing Ray cluster (simulation.ray_address); empty = a private Ray
    primary_seed: int = 0
    show: bool = True


def stores_for(arm: FederatedArm, split: Split, seed: int, primary: bool) -> tuple[Path, Path]:
    """Provisioned stores for this seed's split (one set per seed; reused by every arm of the run)."""
    from fedrec.simulations.provision import provision

    stores = arm.run_dir / ("stores" if primary else f"stores-seed{seed}")
    key_file = stores / "master.key"
    if not is_provisioned(stores):
        stores.mkdir(parents=True, exist_ok=True)
        master = load_key_file(key_file) if key_file.exists() else create_key_file(key_file)
        provision(arm.data, split, stores, master, key_file=key_file, show=arm.show)
    return stores, key_file


def arm_config(arm: FederatedArm, stores: Path, key_file: Path, out_dir: Path, seed: int) -> FederationConfig:
    """The arm's settings with what this run decides: its fleet, its out dir, its seed, its state names."""
    f = arm.federation
    device = replace(
        f.device,
        # read by workers in another cwd; the rest of the fleet's settings (a simulated dropout) kept
        fleet=replace(f.device.fleet, stores_dir=str(stores.resolve()), master_key_file=str(key_file.resolve())),
        n_items=arm.data.n_items,
        seed=seed,
        state_prefix=f"{arm.name}/",
    )
    server = replace(f.server, out_dir=str(out_dir), strategy=replace(f.server.strategy, min_nodes=arm.nodes))
    return replace(f, server=server, device=device)


def _run_flower(arm: FederatedArm, cfg: FederationConfig) -> FederationResult:
    """Flower's simulation engine (Ray), nodes = worker processes, each serving a share of devices."""
    from flwr.simulation import run_simulation

    from fedrec.client.app import app as client_app

    require_head(arm.ray_address)
    results: list[FederationResult] = []
    with progress(arm.show) as bar:
        # the first round's line replaces this one; until then Ray and the simulated devices start
        task = bar.add_task(f"{arm.name}  (starting Ray and {arm.nodes} simulated SuperNodes)", total=cfg.server.rounds)

        def on_round(server_round: int, entry: dict) -> None:
            ev, tr = entry["evaluate"], entry["train"]
            shown = [arm.name]  # a DP reply carries no loss and no accuracy (fedrec.common.replies)
            if "train-loss" in tr:
                shown.append(f"loss {tr['train-loss']:.3f}")
            if "ndcg@10" in ev:
                shown.append(f"val NDCG@10 {ev['ndcg@10']:.4f}")
            if entry["epsilons"]:
                shown.append(f"eps max {max(entry['epsilons']):.2f}")
            bar.update(task, completed=server_round, description="  ".join(shown))

        server_app = make_server_app(cfg, on_round=on_round, results=results)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
        logging.getLogger("flwr").setLevel(logging.ERROR)  # run_simulation's deprecation notice, per-round logs
        # run_simulation, deprecated in flwr 1.42 and pinned with it (pyproject), because the supported
        # path cannot serve the harness: `flwr run` makes a SuperLink start `flwr-simulation`, which
        # loads the ServerApp by import path in its own process (no on_round, no results here), and
        # its federation config gives ray.init no cluster address (docs/simulate.md).
        with reaped_descendants():  # Ray's processes end with the harness, even after a SIGKILL
            try:
                interruptible(
                    lambda: run_simulation(
                        server_app=server_app,
                        client_app=client_app,
                        num_supernodes=arm.nodes,
                        backend_config=backend_config(arm.nodes, arm.ray_address),
                    ),
                    f"flower-simulation-{arm.name}",
                )
            except RuntimeError as exc:  # what run_simulation raises when its runtime (Ray) fails
                raise FedrecError(f"{arm.name}: Flower's simulation runtime failed: {root_cause(exc)}") from exc
    if not results:
        raise FedrecError(f"{arm.name}: the federated run ended without a final model (see the Flower log above)")
    return results[0]


def root_cause(exc: BaseException) -> str:
    """The first line of the innermost exception a chain of re-raises wraps (Flower wraps Ray's twice)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def score_matrix(cfg: FederationConfig, model_path: Path, n_users: int) -> np.ndarray:
    """Scores for every user from the final global model and each device's own serving row.

    In a real deployment this happens on each device (``fedrec recommend``); the harness holds the
    simulation's keys, so it runs the same device code for every device and ranks all arms alike."""
    device = cfg.device
    manifest = load_manifest(device.fleet.stores_dir)
    refs = node_devices({}, device.fleet)
    state, _ = load_global_model(model_path)
    rows = torch.zeros(n_users, device.model.embedding_dim)
    index = {d.device_id: d.user_index for d in manifest.devices}
    for ref in refs:  # rows stored by the devices at the final evaluation; refit here only where missing
        row = serving_row(ref, device.state_prefix)
        if row is None:
            row = serve_device(ref, state, device)
        rows[index[ref.device_id]] = torch.from_numpy(row)
    model = build_model(n_users, device.n_items, device.model)
    load_weights(model, {**state, "user_emb.weight": rows})
    return model.score_users(torch.arange(n_users)).numpy()


def export_ledgers(result: FederationResult, path: Path) -> dict:
    """privacy/<arm>_ledger.csv: one row per accountant history entry, the device's epsilon on each, against
    an observer of the released model; privacy/<arm>_server_ledger.csv: the same against the server
    (``Mechanism.server_history``)."""
    device, privacy, mechanism = result.config.device, result.privacy, mechanism_for(result.privacy)
    released: dict[str, PrivacyLedger] = {}
    against_server: dict[str, PrivacyLedger] = {}
    for ref in node_devices({}, device.fleet):
        ledger = _user_ledger(result) if mechanism.user_level else ledger_of(ref, device.state_prefix)
        released[ref.device_id] = ledger
        against_server[ref.device_id] = PrivacyLedger(list(mechanism.server_history(tuple(ledger.history))))
    server_path = path.with_name(path.name.replace("_ledger.csv", "_server_ledger.csv"))
    epsilons = _write_ledger(released, privacy.delta, path)
    server_epsilons = _write_ledger(against_server, privacy.delta, server_path)
    return {
        "epsilon_max": float(np.max(epsilons)),
        "epsilon_median": float(np.median(epsilons)),
        "epsilon_server_max": float(np.max(server_epsilons)),
        "epsilon_server_median": float(np.median(server_epsilons)),
        "delta": privacy.delta,
        "noise_multiplier": privacy.noise_multiplier,
        "sample_rate": _sample_rate(result),
        "steps": int(max(ledger.steps for ledger in released.values())),
        "unit": mechanism.unit,
        "epsilon_budget": privacy.budget,
        "accountant": "rdp (opacus)",
        "ledger": str(path.name),
        "server_ledger": str(server_path.name),
        # a record lies inside one user: a user-level epsilon bounds the record-level one
        **({"epsilon_record_level_max": float(np.max(epsilons))} if mechanism.user_level else {}),
    }


def _write_ledger(ledgers: dict[str, PrivacyLedger], delta: float, path: Path) -> list[float]:
    """One row per history entry (``LEDGER_COLUMNS`` of the audit); each device's epsilon, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    epsilons = []
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["device_id", "noise_multiplier", "sample_rate", "steps", "epsilon"])
        for device_id, ledger in ledgers.items():
            epsilons.append(ledger.epsilon(delta))  # cached per history (history_epsilon)
            for sigma, q, n in ledger.history:
                writer.writerow([device_id, sigma, q, n, epsilons[-1]])
    return epsilons


def _user_ledger(result: FederationResult) -> PrivacyLedger:
    """Under ``user`` every round counts for every user, sampled or not (the sampling amplifies it)."""
    privacy, cfg = result.privacy, result.config
    return PrivacyLedger(list(mechanism_for(privacy).shared_history(cfg.device, privacy, cfg.server.rounds) or ()))


def _sample_rate(result: FederationResult) -> float:
    device = result.config.device
    return mechanism_for(result.privacy).sample_rate(device)


def _round_summary(entry: dict) -> dict:
    """A round for report.json: the per-device epsilon list (in rounds.jsonl) shrinks to its max and median."""
    eps = entry.pop("epsilons", [])
    entry["epsilon_max"] = float(np.max(eps)) if eps else 0.0
    entry["epsilon_median"] = float(np.median(eps)) if eps else 0.0
    return entry


def fit_federated(arm: FederatedArm, split: Split, seed: int) -> ArmResult:
    primary = seed == arm.primary_seed
    stores, key_file = stores_for(arm, split, seed, primary)
    out_dir = arm.run_dir / "models" / (arm.name if primary else f"{arm.name}-seed{seed}")
    for stale in ("checkpoint.pt", "rounds.jsonl", "wire.jsonl"):
        (out_dir / stale).unlink(missing_ok=True)  # a fresh arm, not a resume
    result = _run_flower(arm, arm_config(arm, stores, key_file, out_dir, seed))
    scores = score_matrix(result.config, result.model, arm.data.n_users)
    rounds = [_round_summary(json.loads(line)) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]
    info: dict[str, Any] = {
        "federation": to_nested(result.config),
        "device_privacy": to_nested(result.privacy),
        "rounds": rounds,
        "model_dir": str(out_dir.relative_to(arm.run_dir)),
    }
    if result.privacy.private:
        name = arm.name if primary else f"{arm.name}-seed{seed}"
        info["privacy"] = export_ledgers(result, arm.run_dir / "privacy" / f"{name}_ledger.csv")
    return ArmResult(arm.name, scores, info)


def bind(binding: ArmBinding) -> Fitter:
    """The arm run through Flower's simulation engine in the run dir, under its settings branch."""
    if binding.data is None or binding.out is None:
        raise FedrecError(f"{binding.name}: a federated arm needs the run's data and run dir (fedrec simulate)")
    config = binding.config
    arm = FederatedArm(
        name=binding.name,
        data=binding.data,
        run_dir=Path(binding.out),
        federation=federation_of(binding.arm, config),
        nodes=config.simulation.nodes,
        ray_address=config.simulation.ray_address,
        primary_seed=binding.primary_seed,
        show=binding.show,
    )
    return partial(fit_federated, arm)
