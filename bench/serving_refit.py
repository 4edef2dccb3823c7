"""How much the on-device serving refit is worth: validation NDCG@10 of a finished federated arm served
with other refit settings (the trained model and the devices' stores stay as the run left them).

    python -m bench.serving_refit RUN_DIR [ARM] --steps 20,100 --lr 0.01,0.03

Each device refits its user row against the final global model on its train part and ranks its
validation item, exactly as the arm's on-device evaluation does (``evaluate_device``); only
``device.serving`` changes. Validation only: the test item is never looked at.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import typer

from fedrec.client.device_round import evaluate_device
from fedrec.client.fleet import node_devices
from fedrec.common.config import FederationConfig, Serving
from fedrec.common.metrics import hit_ndcg
from fedrec.common.model_files import load_global_model
from fedrec.common.settings import from_nested


def validation(run_dir: Path, arm: str, serving: Serving | None = None) -> tuple[float, float, int]:
    """Validation HR@10, NDCG@10 and device count of ``arm`` served with ``serving`` (default: the run's own)."""
    report = json.loads((run_dir / "report.json").read_text())
    info = report["arms"][arm]["info"]
    cfg = from_nested(FederationConfig, info["federation"], f"{run_dir}/report.json")
    state, _ = load_global_model(run_dir / info["model_dir"] / "global_model.pt")
    device = replace(cfg.device, eval_stage="validation", serving=serving or cfg.device.serving)
    ranks = [r for ref in node_devices({}, cfg.device.fleet) if (r := evaluate_device(ref, state, device)) is not None]
    hr, ndcg = hit_ndcg(np.asarray(ranks, dtype=np.int64))
    return hr, ndcg, len(ranks)


def main(
    run_dir: Path,
    arm: str = typer.Argument("federated"),
    steps: str = typer.Option("20,100", help="Comma-separated refit step counts."),
    lr: str = typer.Option("0.01", help="Comma-separated refit learning rates."),
) -> None:
    torch.set_num_threads(1)
    for n_steps in (int(s) for s in steps.split(",")):
        for rate in (float(x) for x in lr.split(",")):
            t0 = time.time()
            hr, ndcg, n = validation(run_dir, arm, Serving(n_steps, rate))
            print(
                f"{arm} refit_steps {n_steps} refit_lr {rate:g}: val HR@10 {hr:.4f} NDCG@10 {ndcg:.4f} "
                f"({n} devices, {time.time() - t0:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    typer.run(main)
