"""On-device evaluation of a node's devices: one serving refit per device against the stacked refits.

    python -m bench.bench_serving [--devices 943] [--stores DIR]

Both executors evaluate the same ML-100K devices (one node holding all of them, 1 torch thread) with the
same global model, side by side in one run: the validation evaluation of a round (refit on train, rank
the validation item) and the final one (which also refits on train + validation and stores the serving
row). Prints each path's seconds, the ratio, and whether the metrics agree.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench.bench_round import provisioned
from fedrec.client.fleet import evaluate_fleet, node_devices
from fedrec.common.config import DeviceConfig, Fleet
from fedrec.common.instructions import DeviceInstructions, RoundInfo
from fedrec.common.model import NeuMF, global_state


def timed(device: DeviceConfig, params: dict[str, torch.Tensor], final: bool) -> tuple[float, dict]:
    task = DeviceInstructions(device, round=RoundInfo(30, final=final))
    refs = node_devices({}, device.fleet)
    t0 = time.perf_counter()
    metrics = evaluate_fleet(refs, params, task)
    return time.perf_counter() - t0, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=None, help="first N ML-100K users (default: all 943)")
    parser.add_argument("--stores", type=Path, default=None, help="provisioned stores to reuse")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, _, stores = provisioned(args.devices, args.stores)
    base = DeviceConfig(n_items=data.n_items, seed=0, state_prefix="bench/")
    torch.manual_seed(0)
    params = global_state(NeuMF(1, data.n_items, base.model))
    table = Table(title=f"evaluation of {data.n_users} devices on one node (1 thread)")
    for column in ("evaluation", "per_device s", "batched s", "ratio", "metrics agree"):
        table.add_column(column)
    for final in (False, True):
        seconds, metrics = {}, {}
        for executor in ("per_device", "batched"):
            copy = stores.parent / f"{stores.name}-{executor}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(stores, copy)  # a final evaluation writes serving rows
            device = replace(base, executor=executor, fleet=Fleet(str(copy), str(copy / "master.key")))
            seconds[executor], metrics[executor] = timed(device, params, final)
            shutil.rmtree(copy)
        ratio = seconds["per_device"] / seconds["batched"]
        table.add_row(
            "final (+ serving row)" if final else "validation",
            f"{seconds['per_device']:.1f}",
            f"{seconds['batched']:.1f}",
            f"{ratio:.1f}x",
            str(metrics["per_device"] == metrics["batched"]),
        )
    Console().print(table)


if __name__ == "__main__":
    main()
