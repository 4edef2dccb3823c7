"""What `fedrec retention RUN_DIR` does: reload the run's dataset and re-run the simulator on its arms."""

from __future__ import annotations

from pathlib import Path

from common.errors import FedrecError
from simulations.retention.report_section import tables
from simulations.retention.run import run_retention


def retention_for_run_dir(run_dir: Path, seeds: list[int], data_dir: str | None, show: bool = True) -> str:
    """Returns the printed tables (markdown, so they paste into docs unchanged)."""
    from simulations.experiment import load
    from simulations.rundir import RunDir

    if not (Path(run_dir) / "report.json").is_file():
        raise FedrecError(f"{Path(run_dir) / 'report.json'}: not found (is {run_dir} a fedrec run dir?)")
    if not seeds:
        raise FedrecError("--seeds: give at least one seed")
    meta = RunDir(run_dir).read_report().get("meta", {})
    if "dataset" not in meta:
        raise FedrecError(f"{Path(run_dir) / 'report.json'}: meta.dataset missing")
    data = load(meta["dataset"], data_dir, meta.get("users"))
    report = run_retention(Path(run_dir), data, seeds=seeds, show=show)
    return tables(report)
