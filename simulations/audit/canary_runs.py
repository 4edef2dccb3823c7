"""Retrain a finished run's federated arm with canaries, under the audited arm's own resolved settings.

``fedrec audit`` cannot insert canaries into a run that already happened, so it trains the arm again on
the first ``users`` users of the run's data with canaries added: the same model, local training,
privacy mechanism, strategy and (unless told otherwise) rounds as recorded for the audited arm in
report.json, so the noise is calibrated as in the run. Two trainers: ``harness`` is the real thing
(Flower simulation engine, encrypted stores, the device code), and ``inprocess`` runs the same device
training code in one process (fast; see inprocess.py).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from fedrec.common.config import FederationConfig, FedrecConfig, config_from_report
from fedrec.common.datasets import Interactions
from fedrec.common.mechanisms import mechanism_for
from fedrec.common.settings import from_nested
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult, federation_of
from fedrec.simulations.arms.table import ARMS
from fedrec.simulations.audit.canary import CanaryTrainer
from fedrec.simulations.audit.inprocess import fit_inprocess

TRAINERS = ("whitebox", "harness", "inprocess")  # whitebox: fedrec.simulations.audit.whitebox


def run_config_of(report: dict) -> FedrecConfig:
    """The run's settings, validated like a TOML config (report meta.config is ``FedrecConfig.to_dict()``)."""
    return config_from_report(report["meta"].get("config", {}), "report.json meta.config")


def audited_federation(report: dict, arm: str, rounds: int | None) -> FederationConfig:
    """The arm's resolved settings as it ran (report.json ``arms.<arm>.info.federation``), else its branch
    of the run's settings under its mechanism (the arm table); ``rounds`` overrides the number of rounds."""
    recorded = report["arms"].get(arm, {}).get("info", {}).get("federation")
    if recorded is not None:
        federation = from_nested(FederationConfig, recorded, f"report.json arms.{arm}.info.federation")
    else:
        federation = federation_of(ARMS[arm], run_config_of(report))
    if rounds is not None:
        federation = replace(federation, server=replace(federation.server, rounds=rounds))
    return federation


def canary_federation(federation: FederationConfig) -> FederationConfig:
    """The audited settings for the smaller canary fleet: a shared-noise arm's m_min is that of the canary
    fleet (0 = resolved again from its manifest), and its item rows start at random, since every canary
    sits on an item of its own that has no public features (the mechanism and its noise are unchanged)."""
    if not mechanism_for(federation.privacy).shared:
        return federation
    shared = replace(federation.device.shared_noise, min_devices=0, feature_init="")
    return replace(federation, device=replace(federation.device, shared_noise=shared))


def harness_trainer(federation: FederationConfig, name: str, nodes: int, work_dir: Path, show: bool) -> CanaryTrainer:
    """fit_federated in a scratch run dir (its stores, models and ledgers are deleted afterwards)."""
    # lazy: flwr's ServerApp and Ray load only when the audit trains a federated canary, not for in-process ones
    from fedrec.simulations.arms.federated import FederatedArm, fit_federated

    def train(data: Interactions, split: Split, seed: int) -> ArmResult:
        scratch = Path(tempfile.mkdtemp(prefix=f"canary-{name}-", dir=work_dir))
        try:
            arm = FederatedArm(
                name=name, data=data, run_dir=scratch, federation=federation, nodes=nodes, primary_seed=seed, show=show
            )
            return fit_federated(arm, split, seed)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return train


def canary_trainer(
    kind: str, federation: FederationConfig, name: str, nodes: int, work_dir: Path, show: bool
) -> CanaryTrainer:
    if kind == "harness":
        return harness_trainer(federation, name, nodes, work_dir, show)
    if kind == "inprocess":
        return lambda data, split, seed: fit_inprocess(data, split, seed, federation)
    raise ValueError(f"canary trainer must be one of {', '.join(TRAINERS)}, not {kind!r}")
