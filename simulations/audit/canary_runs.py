"""Retrain a finished run's federated arm with canaries, under the run's own config, kept small.

``fedrec audit`` cannot insert canaries into a run that already happened, so it trains the arm again on
the first ``users`` users of the run's data (the run's split seed, model, federated settings and
epsilon budget, so the noise is calibrated as in the run) with canaries added. Two trainers:
``harness`` is the real thing (Flower simulation engine, encrypted stores, the device code), and
``inprocess`` runs the same device training code in one process (fast; see inprocess.py).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from fedrec.client.local_training import LocalConfig
from fedrec.common.config import FedrecConfig, load_config
from fedrec.common.datasets import Interactions
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult
from fedrec.simulations.audit.canary import CanaryTrainer
from fedrec.simulations.audit.inprocess import InProcessConfig, fit_inprocess

TRAINERS = ("harness", "inprocess")


def run_config_of(report: dict) -> FedrecConfig:
    """The run's settings, validated like a TOML config (report meta.config holds the same tables)."""
    return load_config(None, overrides=report["meta"].get("config", {}))


def inprocess_trainer(cfg: FedrecConfig, private: bool, rounds: int) -> CanaryTrainer:
    fed = cfg.federated
    local = LocalConfig(local_epochs=fed.local_epochs, steps_per_epoch=fed.steps_per_epoch, lr=fed.lr,
                        negatives=fed.negatives, noise_multiplier=fed.noise_multiplier,
                        max_grad_norm=fed.max_grad_norm, delta=fed.delta)
    ip = InProcessConfig(rounds=rounds, local=local, model=cfg.model, epsilon=fed.epsilon)
    return lambda data, split, seed: fit_inprocess(data, split, seed, ip, private)


def harness_trainer(cfg: FedrecConfig, private: bool, rounds: int, work_dir: Path, show: bool) -> CanaryTrainer:
    """fit_federated in a scratch run dir (its stores, models and ledgers are deleted afterwards)."""
    from fedrec.simulations.federated import FederatedArm, fit_federated

    fed = dataclasses.replace(cfg.federated, rounds=rounds)
    name = "federated_dp" if private else "federated"

    def train(data: Interactions, split: Split, seed: int) -> ArmResult:
        scratch = Path(tempfile.mkdtemp(prefix=f"canary-{name}-", dir=work_dir))
        try:
            arm = FederatedArm(name=name, data=data, run_dir=scratch, fed=fed, model=cfg.model, private=private,
                               primary_seed=seed, show=show)
            return fit_federated(arm, split, seed)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return train


def canary_trainer(kind: str, cfg: FedrecConfig, private: bool, rounds: int, work_dir: Path, show: bool) -> CanaryTrainer:
    if kind == "harness":
        return harness_trainer(cfg, private, rounds, work_dir, show)
    if kind == "inprocess":
        return inprocess_trainer(cfg, private, rounds)
    raise ValueError(f"canary trainer must be one of {', '.join(TRAINERS)}, not {kind!r}")
