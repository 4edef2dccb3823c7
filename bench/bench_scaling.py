"""Provisioning and one federated DP round on synthetic populations of growing size, measured in one run.

    python -m bench.bench_scaling [--users 943,6040,20000,100000] [--items 1682] [--round-devices N]
                                  [--workers 2] [--out DIR] [--plot FILE]
    python -m bench.bench_scaling --rows DIR [DIR ...] [--plot FILE]   # tabulate and plot saved sizes

Each size runs in its own child process (so peak RSS is that size's own): draw the population
(simulations.synth, fitted to ML-100K once in the parent), split it (docs/protocol.md), provision one
encrypted store per user (simulations.provision, ``--workers`` processes), then one round of the
in-process device path, ``client.fleet.train_fleet`` over every device (``client.device_round.device_rounds``:
open + decrypt, Opacus DP-SGD at noise 1.0, write back) with the default run config, 1 torch thread.
``--round-devices N`` makes each device take part with probability N/users (quick mode: the round then
covers about N devices, and the table says so). Peak RSS is the child's maximum resident set
(the provisioning workers are separate processes and reported apart). Each size's row is also saved as
``row-<users>.json`` in the work dir, so sizes measured in separate runs (the largest takes the longest)
are tabulated and plotted together with ``--rows``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fedrec.client.fleet import node_devices, train_fleet
from fedrec.common.config import DeviceConfig, Fleet
from fedrec.common.datasets import load_dataset
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo
from fedrec.common.keys import create_key_file
from fedrec.common.policy import SIMULATED
from fedrec.common.split import temporal_split
from fedrec.server.federation import initial_state
from fedrec.simulations.provision import provision
from fedrec.simulations.synth.fit import fit_synth
from fedrec.simulations.synth.generate import synthesize


def one_size(stats_file: Path, users: int, items: int, round_devices: int, workers: int, work: Path) -> dict:
    torch.set_num_threads(1)
    stats = pickle.loads(stats_file.read_bytes())  # written by this benchmark's parent a moment ago
    t0 = time.perf_counter()
    data = synthesize(stats, users, items, 0)
    split = temporal_split(data, 0)
    draw_s = time.perf_counter() - t0
    stores = work / f"stores-{users}"
    stores.mkdir(parents=True)
    t0 = time.perf_counter()
    provision(data, split, stores, create_key_file(stores / "master.key"), workers=workers)
    provision_s = time.perf_counter() - t0
    fraction = 1.0 if not round_devices else min(1.0, round_devices / users)
    device = DeviceConfig(
        fleet=Fleet(str(stores), str(stores / "master.key")),
        n_items=items,
        participation=fraction,
        state_prefix="bench/",
    )
    task = DeviceInstructions(device, DevicePrivacy(1.0, budget=1e9), RoundInfo(number=1))
    devices = node_devices({}, device.fleet)
    params = initial_state(device)
    t0 = time.perf_counter()
    _, metrics = train_fleet(devices, params, task, SIMULATED)
    round_s = time.perf_counter() - t0
    shutil.rmtree(stores, ignore_errors=True)
    return {
        "users": users,
        "items": items,
        "interactions": len(data),
        "draw_s": draw_s,
        "provision_s": provision_s,
        "round_devices": int(metrics["devices"]),
        "round_s": round_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "provision_workers_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [r["users"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(
        users, [r["round_s"] / max(r["round_devices"], 1) * 1000 for r in rows], "o-", label="round, ms per device"
    )
    left.plot(users, [r["provision_s"] / r["users"] * 1000 for r in rows], "s-", label="provisioning, ms per device")
    left.set_xscale("log")
    left.set_xlabel("users (devices)")
    left.set_ylabel("ms per device")
    left.legend()
    right.plot(users, [r["peak_rss_gb"] for r in rows], "o-")
    right.set_xscale("log")
    right.set_xlabel("users (devices)")
    right.set_ylabel("peak RSS: draw + split + provision + round, GB")
    fig.suptitle("Synthetic populations: one federated DP round (in-process device path)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="943,6040,20000,100000")
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--round-devices", type=int, default=0, help="quick mode: about N devices train (0 = all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir, removed)")
    parser.add_argument("--plot", type=Path, default=Path("bench_scaling.png"))
    parser.add_argument("--rows", type=Path, nargs="+", default=None, help="dirs of saved rows: no new runs")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.stats, args.one, args.items, args.round_devices, args.workers, args.out)))
        return
    console = Console(width=160)
    if args.rows:
        saved = [json.loads(f.read_text()) for d in args.rows for f in d.glob("row-*.json")]
        if not saved:
            raise SystemExit(f"error: no row-<users>.json in {', '.join(map(str, args.rows))} (--rows)")
        report(sorted(saved, key=lambda r: r["users"]), args.plot, console)
        return
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = fit_synth(load_dataset("ml-100k"))
    console.print(f"fit to ml-100k: {time.perf_counter() - t0:.1f} s")
    stats_file = work / "stats.pkl"
    stats_file.write_bytes(pickle.dumps(stats))
    rows = []
    for users in (int(x) for x in args.users.split(",")):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bench_scaling",
                "--one",
                str(users),
                "--items",
                str(args.items),
                "--round-devices",
                str(args.round_devices),
                "--workers",
                str(args.workers),
                "--out",
                str(work),
                "--stats",
                str(stats_file),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        (work / f"row-{users}.json").write_text(json.dumps(rows[-1]))
        console.print(rows[-1])
    report(rows, args.plot, console)
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict], plot_path: Path, console: Console) -> None:
    table = Table(
        "users",
        "interactions",
        "draw + split s",
        "provision s",
        "ms/device",
        "round devices",
        "round s",
        "ms/device",
        "peak RSS GB",
    )
    for r in rows:
        table.add_row(
            f"{r['users']:,}",
            f"{r['interactions']:,}",
            f"{r['draw_s']:.1f}",
            f"{r['provision_s']:.1f}",
            f"{r['provision_s'] / r['users'] * 1000:.1f}",
            f"{r['round_devices']:,}",
            f"{r['round_s']:.1f}",
            f"{r['round_s'] / max(r['round_devices'], 1) * 1000:.0f}",
            f"{r['peak_rss_gb']:.2f}",
        )
    console.print(table)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        console.print(
            f"{last['users'] / first['users']:.1f}x the users: round time x{last['round_s'] / first['round_s']:.1f} "
            f"for x{last['round_devices'] / max(first['round_devices'], 1):.1f} the training devices, "
            f"provisioning x{last['provision_s'] / first['provision_s']:.1f}"
        )
    plot(rows, plot_path)
    console.print(f"plot: {plot_path}")


if __name__ == "__main__":
    main()
