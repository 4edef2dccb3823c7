"""One full-participation DP round over every ML-100K device: per-device Opacus vs the batched executor,
against one centralized NeuMF epoch, measured side by side in one run (one process, one torch thread).

    python -m bench.bench_batched [--devices 943] [--reference-devices 943] [--optimizer adam|sgd] [--lazy-noise]
                                  [--chunk 64] [--block 256] [--clock cpu|wall]

Federated model config, 4 negatives, 8 steps, noise multiplier 1.0, every device starting from the same
initial global model:
1. one centralized NeuMF epoch (default centralized settings, taken as bench.bench_round takes it);
2. reference: today's train_fleet path, the device round with the per-device Opacus step, one device after another (store open + decrypt,
   model, examples, Opacus ``train_private``, write-back) and the example-weighted sum of the replies;
   with ``--reference-devices N`` the first N devices are timed and the time scaled to all;
3. batched: per block of devices, stores opened and read, ``train_private_batched`` on the block, user
   rows and ledgers written back, replies summed; with the executor's own breakdown.
A Flower round spreads the devices over its SuperNodes (2 by default) and adds dispatch
(bench.bench_round measured 0.01-0.04x an epoch), so its wall time is about this one-core time / nodes.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench.bench_round import centralized_epoch, provisioned
from fedrec.client.batched_training import Phases, train_private_batched
from fedrec.client.device_round import (
    EMBEDDING,
    device_rounds,
    device_seed,
    read_ledger,
    round_examples,
    training_row,
    write_round,
)
from fedrec.client.fleet import LocalStep, node_devices
from fedrec.client.round_randomness import SimulatedRandomness
from fedrec.client.stacked import DeviceWork
from fedrec.common.config import DeviceConfig, Fleet, LocalTraining, PrivacyConfig
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo
from fedrec.common.model import NeuMF, global_state
from fedrec.common.policy import SIMULATED

Clock = Callable[[], float]
PREFIX, REFERENCE_PREFIX = "bench-batched/", "bench-reference/"


FEDERATED_MODEL = DeviceConfig().model


def round_task(stores: Path, n_items: int, optimizer: str, noise: float, prefix: str) -> DeviceInstructions:
    """The default device settings with the optimizer and noise under test; every device trains."""
    device = DeviceConfig(
        training=LocalTraining(optimizer=optimizer),
        participation=1.0,
        n_items=n_items,
        fleet=Fleet(str(stores), str(stores / "master.key")),
        state_prefix=prefix,
    )
    return DeviceInstructions(
        device, DevicePrivacy(noise, PrivacyConfig().max_grad_norm, budget=1e9), RoundInfo(number=1)
    )


def read_inputs(stores: list, task: DeviceInstructions, clock: Clock) -> tuple[list[DeviceWork], dict[str, float]]:
    """Every open device's round inputs, read as the device round reads them (its user row without building
    a model: NeuMF's construction alone costs more than the store's decryption)."""
    parts = {"store read (events, user row)": 0.0, "examples": 0.0}
    works = []
    for store in stores:
        t = clock()
        row = training_row(store, store.path.stem, task.device)
        parts["store read (events, user row)"] += clock() - t
        t = clock()
        randomness = SimulatedRandomness(device_seed(task.device.seed, task.round.number, store.path.stem))
        items, labels = round_examples(store, task, randomness)
        works.append(DeviceWork(items, labels, row, randomness))
        parts["examples"] += clock() - t
    return works, parts


def reference_round(refs, params, task: DeviceInstructions, clock: Clock) -> float:
    """Seconds for the reference path: the device round's per-device step (store open, model, examples,
    train_private, write-back) and the example-weighted sum train_fleet takes of the replies."""
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    t = clock()
    for result in device_rounds(refs, task, LocalStep(params, task), SIMULATED):
        for k, v in result.arrays.items():
            total[k] += v.double() * result.num_examples
    return clock() - t


def batched_round(
    refs,
    params,
    task: DeviceInstructions,
    block: int,
    chunk: int,
    phases: Phases,
    clock: Clock,
    lazy_noise: bool = False,
) -> tuple[list[DeviceWork], dict[str, float]]:
    """The round as a node would run it: per block of devices, open their stores, read, train the block
    batched, write every user row and ledger back, close; replies summed example-weighted."""
    parts = {
        "store open + decrypt": 0.0,
        "batched training": 0.0,
        "store write (user row + ledger) + close": 0.0,
        "aggregation (weighted sum)": 0.0,
    }
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    all_works = []
    for start in range(0, len(refs), block):
        with ExitStack() as open_stores:
            t = clock()
            stores = [open_stores.enter_context(ref.open()) for ref in refs[start : start + block]]
            parts["store open + decrypt"] += clock() - t
            works, read = read_inputs(stores, task, clock)
            for k, v in read.items():
                parts[k] = parts.get(k, 0.0) + v
            t = clock()
            device = task.device
            results = train_private_batched(
                params,
                device.model,
                device.n_items,
                works,
                device.training,
                task.privacy,
                chunk_size=chunk,
                phases=phases,
                lazy_noise=lazy_noise,
            )
            parts["batched training"] += clock() - t
            t = clock()
            for store, r in zip(stores, results):
                device, privacy = task.device, task.privacy
                _, after = task.mechanism.ledgers(read_ledger(store, PREFIX), device, privacy, task.round.number)
                write_round(store, PREFIX, after, {EMBEDDING: r.user_row})
            open_stores.close()
            parts["store write (user row + ledger) + close"] += clock() - t
        t = clock()
        for r in results:
            for k, v in r.state.items():
                total[k] += v.double() * r.num_examples
        parts["aggregation (weighted sum)"] += clock() - t
        all_works += works
    return all_works, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=None, help="first N users (default: all)")
    parser.add_argument("--reference-devices", type=int, default=None, help="devices timed on the reference path")
    parser.add_argument("--optimizer", default=LocalTraining().optimizer, choices=("adam", "sgd"))
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--chunk", type=int, default=64, help="devices trained together (one stacked chunk)")
    parser.add_argument("--block", type=int, default=256, help="devices whose stores are open at once")
    parser.add_argument("--stores", type=Path, default=None, help="reuse provisioned stores (else a temp dir)")
    parser.add_argument("--lazy-noise", action="store_true", help="SGD only: item rows' noise drawn when read")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this process' CPU seconds (steady on a shared machine); wall: elapsed seconds",
    )
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    _, split, stores = provisioned(args.devices, args.stores)
    refs = node_devices({}, Fleet(str(stores), str(stores / "master.key")))
    task = round_task(stores, split.n_items, args.optimizer, args.noise, PREFIX)
    torch.manual_seed(0)
    params = global_state(NeuMF(1, split.n_items, FEDERATED_MODEL))
    n = len(refs)

    epoch_s = centralized_epoch(split, clock)
    n_ref = min(args.reference_devices or n, n)
    reference_task = round_task(stores, split.n_items, args.optimizer, args.noise, REFERENCE_PREFIX)
    reference_s = reference_round(refs[:n_ref], params, reference_task, clock) * n / n_ref
    phases = Phases(clock)
    t = clock()
    _, parts = batched_round(refs, params, task, args.block, args.chunk, phases, clock, args.lazy_noise)
    batched_s = clock() - t

    training = task.device.training
    table = Table(
        title=f"{n} devices, DP-SGD (noise {args.noise}, {training.optimizer}, {training.steps} steps, "
        f"{training.negatives} negatives{', lazy noise' if args.lazy_noise else ''}), federated NeuMF, 1 core, "
        f"{args.clock} seconds"
    )
    for col in ("what", f"{args.clock} s", "x centralized epoch"):
        table.add_column(col, justify="left" if col == "what" else "right")

    def row(name: str, seconds: float) -> None:
        table.add_row(name, f"{seconds:.2f}", f"{seconds / epoch_s:.2f}")

    row("centralized NeuMF epoch", epoch_s)
    row(f"DP round, reference: per-device Opacus step{'' if n_ref == n else f' ({n_ref} timed, scaled)'}", reference_s)
    row("DP round, batched: blocks of devices", batched_s)
    for name, seconds in parts.items():
        row(f"  {name}", seconds)
        if name == "batched training":
            for phase, phase_s in phases.seconds.items():
                row(f"    {phase}", phase_s)
            row("    other (chunk set-up, results, ledgers)", seconds - sum(phases.seconds.values()))
    row("  other (loop, timers)", batched_s - sum(parts.values()))
    console = Console()
    console.print(table)
    console.print(
        f"DP round / centralized epoch on one core: reference {reference_s / epoch_s:.2f}, batched "
        f"{batched_s / epoch_s:.2f} (goal <= 2, floor <= 4); batched round {reference_s / batched_s:.1f}x "
        f"faster than the reference; peak RSS of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
