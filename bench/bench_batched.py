"""One full-participation DP round over every ML-100K device: per-device Opacus vs the batched executor,
against one centralized NeuMF epoch, measured side by side in one run (one process, one torch thread).

    python -m bench.bench_batched [--devices 943] [--reference-devices 943] [--optimizer adam|sgd] [--lazy-noise]
                                  [--chunk 64] [--block 256] [--clock cpu|wall]

Federated model config, 4 negatives, 8 steps, noise multiplier 1.0, every device starting from the same
initial global model:
1. one centralized NeuMF epoch (default centralized settings, taken as bench.bench_round takes it);
2. reference: today's train_fleet path, ``train_device`` one device after another (store open + decrypt,
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
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.bench_round import centralized_epoch, provisioned
from fedrec.client.batched_training import DeviceWork, Phases, train_private_batched
from fedrec.client.device_round import EMBEDDING, LEDGER, device_seed, embedding_bytes, train_device
from fedrec.client.device_round import _load_embedding  # the row loader train_device uses; no public name yet
from fedrec.client.fleet import node_devices
from fedrec.client.local_training import LocalConfig, make_examples
from fedrec.common.config import FEDERATED_MODEL, FederatedConfig
from fedrec.common.model import NeuMF, global_state
from fedrec.common.privacy import PrivacyLedger

Clock = Callable[[], float]
PREFIX, REFERENCE_PREFIX = "bench-batched/", "bench-reference/"


def local_config(optimizer: str, noise: float) -> LocalConfig:
    fed = FederatedConfig()
    return LocalConfig(local_epochs=fed.local_epochs, steps_per_epoch=fed.steps_per_epoch, lr=fed.lr,
                       negatives=fed.negatives, noise_multiplier=noise, max_grad_norm=fed.max_grad_norm,
                       delta=fed.delta, optimizer=optimizer)


def read_inputs(stores: list, params, n_items: int, cfg: LocalConfig, clock: Clock) -> tuple[list[DeviceWork], dict[str, float]]:
    """Every open device's round inputs, read as train_device reads them (its user row without building
    a model: NeuMF's construction alone costs more than the store's decryption)."""
    parts = {"store read (events, user row)": 0.0, "examples": 0.0}
    works = []
    for store in stores:
        t = clock()
        train, seen = store.read_events("train").items, store.read_events(None).items
        row = _load_embedding(store, PREFIX, FEDERATED_MODEL.embedding_dim, device_seed(0, 0, store.path.stem))
        parts["store read (events, user row)"] += clock() - t
        t = clock()
        seed = device_seed(0, 1, store.path.stem)
        items, labels = make_examples(train.astype(np.int64), seen.astype(np.int64), n_items, cfg.negatives,
                                      np.random.default_rng(seed))
        ledger = PrivacyLedger.from_json(store.get_state(PREFIX + LEDGER))
        works.append(DeviceWork(items, labels, row, ledger, seed))
        parts["examples"] += clock() - t
    return works, parts


def reference_round(refs, params, n_items: int, cfg: LocalConfig, clock: Clock) -> float:
    """Seconds for today's path: train_device device by device (store open, model, examples,
    train_private, write-back) and the example-weighted sum train_fleet takes of the replies."""
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    t = clock()
    for ref in refs:
        result = train_device(ref, params, FEDERATED_MODEL, n_items, cfg, REFERENCE_PREFIX, 1, 0)
        for k, v in result.state.items():
            total[k] += v.double() * result.num_examples
    return clock() - t


def batched_round(refs, params, n_items: int, cfg: LocalConfig, block: int, chunk: int, phases: Phases,
                  clock: Clock, lazy_noise: bool = False) -> tuple[list[DeviceWork], dict[str, float]]:
    """The round as a node would run it: per block of devices, open their stores, read, train the block
    batched, write every user row and ledger back, close; replies summed example-weighted."""
    parts = {"store open + decrypt": 0.0, "batched training": 0.0, "store write (user row + ledger) + close": 0.0,
             "aggregation (weighted sum)": 0.0}
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    all_works = []
    for start in range(0, len(refs), block):
        with ExitStack() as open_stores:
            t = clock()
            stores = [open_stores.enter_context(ref.open()) for ref in refs[start : start + block]]
            parts["store open + decrypt"] += clock() - t
            works, read = read_inputs(stores, params, n_items, cfg, clock)
            for k, v in read.items():
                parts[k] = parts.get(k, 0.0) + v
            t = clock()
            results = train_private_batched(params, FEDERATED_MODEL, n_items, works, cfg, chunk_size=chunk, phases=phases,
                                            lazy_noise=lazy_noise)
            parts["batched training"] += clock() - t
            t = clock()
            for store, w, r in zip(stores, works, results):
                store.put_states({PREFIX + EMBEDDING: embedding_bytes(r.user_row), PREFIX + LEDGER: w.ledger.to_json()})
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
    parser.add_argument("--optimizer", default=FederatedConfig().local_optimizer, choices=("adam", "sgd"))
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--chunk", type=int, default=64, help="devices trained together (one stacked chunk)")
    parser.add_argument("--block", type=int, default=256, help="devices whose stores are open at once")
    parser.add_argument("--stores", type=Path, default=None, help="reuse provisioned stores (else a temp dir)")
    parser.add_argument("--lazy-noise", action="store_true", help="SGD only: item rows' noise drawn when read")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process' CPU seconds (steady on a shared machine); wall: elapsed seconds")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    _, split, stores = provisioned(args.devices, args.stores)
    refs = node_devices({"stores-dir": str(stores), "master-key-file": str(stores / "master.key")}, {})
    cfg = local_config(args.optimizer, args.noise)
    torch.manual_seed(0)
    params = global_state(NeuMF(1, split.n_items, FEDERATED_MODEL))
    n = len(refs)

    epoch_s = centralized_epoch(split, clock)
    n_ref = min(args.reference_devices or n, n)
    reference_s = reference_round(refs[:n_ref], params, split.n_items, cfg, clock) * n / n_ref
    phases = Phases(clock)
    t = clock()
    _, parts = batched_round(refs, params, split.n_items, cfg, args.block, args.chunk, phases, clock,
                             args.lazy_noise)
    batched_s = clock() - t

    table = Table(title=f"{n} devices, DP-SGD (noise {args.noise}, {cfg.optimizer}, {cfg.steps} steps, "
                        f"{cfg.negatives} negatives{', lazy noise' if args.lazy_noise else ''}), federated NeuMF, 1 core, "
                        f"{args.clock} seconds")
    for col in ("what", f"{args.clock} s", "x centralized epoch"):
        table.add_column(col, justify="left" if col == "what" else "right")

    def row(name: str, seconds: float) -> None:
        table.add_row(name, f"{seconds:.2f}", f"{seconds / epoch_s:.2f}")

    row("centralized NeuMF epoch", epoch_s)
    row(f"DP round, reference: train_device one by one{'' if n_ref == n else f' ({n_ref} timed, scaled)'}",
        reference_s)
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
    console.print(f"DP round / centralized epoch on one core: reference {reference_s / epoch_s:.2f}, batched "
                  f"{batched_s / epoch_s:.2f} (goal <= 2, floor <= 4); batched round {reference_s / batched_s:.1f}x "
                  f"faster than the reference; peak RSS of this process "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
