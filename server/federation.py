"""One federated training run on whatever grid Flower hands us (simulation or deployment)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedrec.common.errors import FedrecError
from fedrec.common.model import NeuMF, global_state
from fedrec.common.privacy import noise_for_budget
from fedrec.common.run_config import model_config
from fedrec.server.checkpoint import load_checkpoint, save_checkpoint, save_final_model
from fedrec.server.strategies import build_strategy

log = logging.getLogger("fedrec.server")
RoundCallback = Callable[[int, dict], None]

# Keys the devices need each round; everything else stays on the server.
DEVICE_KEYS = ("local-epochs", "steps-per-epoch", "lr", "local-optimizer", "personalize-steps", "personalize-lr", "negatives", "noise-multiplier", "max-grad-norm",
               "epsilon-budget", "delta", "model-kind", "gmf-dim", "mlp-dim", "layers", "item-bias", "init-std", "n-items", "stores-dir",
               "master-key-file", "state-prefix", "eval-stage", "seed", "device-fraction", "round-offset", "keep-serving")


def resolve_privacy(cfg: dict[str, Any]) -> dict[str, Any]:
    """``epsilon`` > 0 sets the noise so a device in every planned round ends at most at epsilon."""
    cfg = dict(cfg)
    if float(cfg["epsilon"]) > 0:
        steps = int(cfg["local-epochs"]) * int(cfg["steps-per-epoch"]) * int(cfg["num-server-rounds"])
        cfg["noise-multiplier"] = noise_for_budget(float(cfg["epsilon"]), float(cfg["delta"]),
                                                   1.0 / int(cfg["steps-per-epoch"]), steps)
        if float(cfg["epsilon-budget"]) <= 0:
            cfg["epsilon-budget"] = float(cfg["epsilon"])
    return cfg


def resolve_items(cfg: dict[str, Any]) -> int:
    n_items = int(cfg["n-items"])
    manifest = Path(str(cfg["stores-dir"])) / "manifest.json"
    if n_items <= 0 and cfg["stores-dir"] and manifest.exists():
        n_items = int(json.loads(manifest.read_text())["n_items"])
    if n_items <= 0:
        raise FedrecError("run config: set n-items (catalogue size) or stores-dir with a manifest")
    return n_items


def initial_state(cfg: dict[str, Any], n_items: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(int(cfg["seed"]))
    return global_state(NeuMF(1, n_items, model_config(cfg)))


def _scalars(record: MetricRecord | None) -> dict:
    return {k: v for k, v in (record or {}).items() if not isinstance(v, list)}


def run_federation(grid: Grid, cfg: dict[str, Any], on_round: RoundCallback | None = None) -> dict:
    """Train for the configured rounds, checkpointing each; resume from ``out-dir`` if a checkpoint is there."""
    cfg = resolve_privacy(cfg)
    cfg["n-items"] = n_items = resolve_items(cfg)
    out_dir = Path(str(cfg["out-dir"]) or "fedrec-server")
    out_dir.mkdir(parents=True, exist_ok=True)
    total_rounds = int(cfg["num-server-rounds"])
    checkpoint = load_checkpoint(out_dir)
    start_round = int(checkpoint["round"]) if checkpoint else 0
    state = checkpoint["state"] if checkpoint else initial_state(cfg, n_items)
    if checkpoint:
        log.info("resuming from %s at round %d of %d", out_dir / "checkpoint.pt", start_round, total_rounds)
    cfg["round-offset"] = start_round
    strategy = build_strategy(cfg, out_dir / "wire.jsonl")
    strategy.last_round = total_rounds - start_round
    rounds_log = out_dir / "rounds.jsonl"
    t_last = [time.perf_counter()]

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        absolute = start_round + server_round
        save_checkpoint(out_dir, absolute, arrays.to_torch_state_dict(), {"config": cfg})
        entry = {
            "round": absolute,
            "wall_s": time.perf_counter() - t_last[0],
            "train": _scalars(strategy.last_train_metrics),
            "evaluate": _scalars(strategy.last_evaluate_metrics),
            "epsilons": list((strategy.last_train_metrics or {}).get("epsilons", [])),
        }
        t_last[0] = time.perf_counter()
        with rounds_log.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        log.info("round %d/%d %s", absolute, total_rounds, {**entry["train"], **entry["evaluate"]})
        if on_round:
            on_round(absolute, entry)
        return None

    remaining = total_rounds - start_round
    final = state
    if remaining > 0:
        train_config = ConfigRecord({k: cfg[k] for k in DEVICE_KEYS})
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(state), num_rounds=remaining,
                                train_config=train_config, evaluate_config=ConfigRecord(dict(train_config)),
                                evaluate_fn=after_round)
        final = result.arrays.to_torch_state_dict()
    model_info = {"model": model_config(cfg).to_dict(), "n_items": n_items, "rounds": total_rounds,
                  "noise_multiplier": float(cfg["noise-multiplier"]), "config": cfg}
    path = save_final_model(out_dir, final, model_info)
    log.info("final global model written to %s (checkpoints in %s)", path, out_dir)
    return {"model": path, "config": cfg}
