"""What `fedrec retention RUN_DIR` does: reload the run's dataset and re-run the simulator on its arms."""

from __future__ import annotations

from pathlib import Path

from fedrec.common.datasets import load_dataset
from fedrec.common.errors import DataError, FedrecError
from fedrec.simulations.retention.run import run_retention
from fedrec.simulations.retention_report import tables
from fedrec.simulations.rundir import RunDir


def retention_for_run_dir(
    run_dir: Path, seeds: list[int], data_dir: str | None, show: bool = True, dataset: str | None = None
) -> str:
    """Returns the printed tables (markdown, so they paste into docs unchanged)."""
    if not seeds:
        raise FedrecError("--seeds: give at least one seed")
    rd = RunDir.finished(run_dir)
    report_path = rd.report_json
    meta = rd.read_report()["meta"]
    name = dataset or meta["dataset"]
    try:
        data = load_dataset(name, data_dir, meta.get("users"))
    except DataError as exc:
        raise DataError(f"{exc} (reloading the dataset of {report_path}; pass --dataset PATH for a CSV run)") from None
    report = run_retention(Path(run_dir), data, seeds=seeds, show=show)
    return tables(report)
