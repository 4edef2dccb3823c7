"""The flat key=value run config of the Flower App (pyproject [tool.flwr.app.config]), typed.

Flower passes configs as flat scalars; this module is the one place that maps those keys onto the
typed settings the server and the devices use, so both sides read the same names.
"""

from __future__ import annotations

from typing import Any, Mapping

from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig

DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 30,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "device-fraction": 0.25,
    "local-epochs": 1,
    "steps-per-epoch": 8,
    "lr": 0.01,
    "local-optimizer": "adam",
    "personalize-steps": 20,
    "personalize-lr": 0.01,
    "negatives": 4,
    "noise-multiplier": 0.0,
    "max-grad-norm": 1.0,
    "epsilon": 0.0,
    "epsilon-budget": 0.0,
    "delta": 1e-5,
    "strategy": "fedavg",
    "server-lr": 1.0,
    "server-momentum": 0.0,
    "model-kind": "neumf",
    "gmf-dim": 32,
    "mlp-dim": 32,
    "layers": "64,32,16",
    "item-bias": True,
    "init-std": 0.01,
    "n-items": 0,
    "out-dir": "",
    "stores-dir": "",
    "master-key-file": "",
    "state-prefix": "",
    "eval-stage": "validation",
    "eval-every": 10,
    "keep-serving": 0,  # set by the server on the final evaluation: devices store their serving row
    "seed": 0,
    "min-nodes": 1,
    "round-offset": 0,
}


def merged(*configs: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, then each config in order; unknown keys are an error naming the key."""
    out = dict(DEFAULTS)
    for cfg in configs:
        for key, value in dict(cfg).items():
            if key in ("server-round", "partition-id", "num-partitions", "store", "key-file"):
                continue
            if key not in DEFAULTS:
                raise FedrecError(f"run config: unknown key {key!r}; known: {', '.join(sorted(DEFAULTS))}")
            out[key] = type(DEFAULTS[key])(value) if isinstance(DEFAULTS[key], float) else value
    return out


def model_config(cfg: Mapping[str, Any]) -> ModelConfig:
    layers = tuple(int(x) for x in str(cfg["layers"]).split(",") if x.strip())
    return ModelConfig(kind=str(cfg["model-kind"]), gmf_dim=int(cfg["gmf-dim"]), mlp_dim=int(cfg["mlp-dim"]),
                       layers=layers, item_bias=bool(cfg["item-bias"]), init_std=float(cfg["init-std"]))


def model_fields(model: ModelConfig) -> dict[str, Any]:
    return {"model-kind": model.kind, "gmf-dim": model.gmf_dim, "mlp-dim": model.mlp_dim,
            "layers": ",".join(str(x) for x in model.layers), "item-bias": model.item_bias, "init-std": model.init_std}
