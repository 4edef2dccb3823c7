"""A finished run dir read back: its report, its data and split rebuilt and checked, its artefacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedrec.common.datasets import Interactions, load_dataset
from fedrec.common.errors import DataError
from fedrec.common.split import Split, temporal_split
from fedrec.simulations.rundir import RunDir

MIA_ARMS = ("centralized", "federated", "federated_ddp", "federated_dp")


@dataclass
class AuditedRun:
    run_dir: RunDir
    report: dict
    data: Interactions
    split: Split

    @property
    def path(self) -> Path:
        return self.run_dir.path

    @property
    def seed(self) -> int:
        return int(self.report["meta"]["seed"])

    def arms_with_scores(self) -> list[str]:
        return [a for a in MIA_ARMS if (self.path / "scores" / f"{a}.npy").exists()]

    def private_arms(self) -> dict[str, dict]:
        """Arms whose report carries a privacy block with a ledger (the federated DP arms; centralized_dp
        reports its accountant inputs without a per-device ledger)."""
        return {
            name: arm["privacy"]
            for name, arm in self.report["arms"].items()
            if (arm.get("privacy") or {}).get("ledger")
        }

    def model_dir(self, arm: str) -> Path | None:
        info = self.report["arms"].get(arm, {}).get("info", {})
        if "model_dir" in info:
            return self.path / info["model_dir"]
        guess = self.path / "models" / arm
        return guess if guess.exists() else None


def _check_split(run_dir: RunDir, data: Interactions, split: Split) -> None:
    """The rebuilt split must reproduce the run's split/test.csv, or every audit number would be wrong."""
    if run_dir.split_matches(split, data, "test") is False:
        raise DataError(
            f"{run_dir.split_path('test')}: the split rebuilt from report.json (dataset {data.name}, seed {split.seed}) "
            "differs from the run's test split; pass --data to point at the run's dataset"
        )


def open_run(path: Path, data_override: str | None = None, data_dir: str | None = None) -> AuditedRun:
    run_dir = RunDir.finished(path)
    report = run_dir.read_report()
    meta = report["meta"]
    users = meta.get("users") or None
    data = load_dataset(data_override or meta["dataset"], data_dir, users)
    if data.n_users != meta["n_users"] and users is None:
        data = data.subset_users(int(meta["n_users"]))  # older reports lack meta.users: the first N users
    if (data.n_users, data.n_items) != (meta["n_users"], meta["n_items"]):
        raise DataError(
            f"{path}/report.json: run has {meta['n_users']} users x {meta['n_items']} items, "
            f"the reloaded dataset {data.n_users} x {data.n_items}"
        )
    split = temporal_split(data, int(meta["seed"]))
    _check_split(run_dir, data, split)
    return AuditedRun(run_dir, report, data, split)
