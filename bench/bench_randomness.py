"""The randomness of one DP device round: torch.Generator against SeededSource and SecureSource.

    python -m bench.bench_randomness [--rounds 40] [--records 100]

Measured side by side in one run, the variants taking turns round by round (medians of CPU time, one
torch thread, so a busy machine slows all of them alike):
1. the draws alone of a DP round with the default device config: the round's negatives, then per step a
   Poisson mask over the records and noise added to every trained parameter (Opacus' way: a seeded
   global generator, a seeded noise generator, numpy's for negatives; the streams' way);
2. the whole round, ``train_private`` on a device of ``--records`` records: once as it is
   (``make_private_ghost``, torch generators) and once with ``make_private_ghost_streams`` in its place,
   on seeded and on secure streams. Goal: secure <= 1.10 x the torch round (floor 1.30).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from unittest import mock

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedrec.client import local_training
from fedrec.client.local_training import make_examples, train_private, trained_under_dp
from fedrec.client.round_randomness import SecureRandomness, SimulatedRandomness
from fedrec.client.secure_opacus import make_private_ghost_streams
from fedrec.common.config import FederationConfig
from fedrec.common.instructions import resolve_privacy
from fedrec.common.model import NeuMF
from fedrec.common.randomness import NEGATIVES, NOISE, SAMPLING, RandomSource, SecureSource, SeededSource

N_ITEMS = 1682  # ML-100K's catalogue
SOURCES: dict[str, Callable[[int], RandomSource]] = {
    "SeededSource": SeededSource,
    "SecureSource": lambda seed: SecureSource(),
}


def torch_draws(seed: int, grads: list[torch.Tensor], records: int, negatives: int, std: float, steps: int) -> None:
    """What a round draws today: numpy negatives, the global generator's mask, the noise generator's noise."""
    np.random.default_rng(seed).integers(0, N_ITEMS, size=(records, negatives))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        _ = torch.rand(records) < 1 / steps
        for g in grads:
            _ = g + torch.normal(0.0, std, g.shape, generator=generator)


def stream_draws(
    source: RandomSource, grads: list[torch.Tensor], records: int, negatives: int, std: float, steps: int
) -> None:
    source.stream(NEGATIVES).integers(0, N_ITEMS, (records, negatives))
    sampling, noise = source.stream(SAMPLING), source.stream(NOISE)
    for _ in range(steps):
        sampling.bernoulli(records, 1 / steps)
        noisy = noise.add_normal(torch.cat([g.reshape(-1) for g in grads]), std)  # as StreamDPOptimizer does
        _ = [part.view_as(g) for g, part in zip(grads, noisy.split([g.numel() for g in grads]))]


def streams_in_place_of_generator(source: Callable[[], RandomSource]) -> Callable[..., Any]:
    """``make_private_ghost``'s signature, answered by ``make_private_ghost_streams`` on a fresh source."""

    def make_private(engine: Any, model: Any, optimizer: Any, loader: Any, nm: float, norm: float, *_: Any) -> Any:
        streams = source()
        return make_private_ghost_streams(
            engine,
            model,
            optimizer,
            loader,
            noise_multiplier=nm,
            max_grad_norm=norm,
            sampling=streams.stream(SAMPLING),
            noise=streams.stream(NOISE),
        )

    return make_private


def interleaved(variants: dict[str, Callable[[int], None]], rounds: int) -> dict[str, float]:
    """Median CPU seconds per call of each variant, the variants taking turns (one warm-up call each)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for warm_up in variants.values():
        warm_up(10**6)
    for i in range(rounds):
        for name, run in variants.items():
            t = time.process_time()
            run(i)
            times[name].append(time.process_time() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--records", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    cfg = FederationConfig()
    device = replace(cfg.device, n_items=N_ITEMS)
    training = device.training
    privacy = replace(resolve_privacy(cfg.privacy, device, cfg.server.rounds), budget=math.inf)
    std = privacy.noise_multiplier * privacy.max_grad_norm
    model = NeuMF(1, N_ITEMS, device.model)
    grads = [torch.zeros_like(p) for name, p in model.named_parameters() if trained_under_dp(name)]
    coords = sum(g.numel() for g in grads)
    draw = (grads, args.records, training.negatives, std, training.steps)
    draws = interleaved(
        {
            "torch.Generator": lambda i: torch_draws(i, *draw),
            **{name: (lambda i, make=make: stream_draws(make(i), *draw)) for name, make in SOURCES.items()},
        },
        args.rounds * 3,
    )

    rng = np.random.default_rng(0)
    items, labels = make_examples(rng.integers(0, N_ITEMS, args.records), None, N_ITEMS, training.negatives, rng)

    def private_round(seed: int) -> None:
        train_private(NeuMF(1, N_ITEMS, device.model), items, labels, training, privacy, SimulatedRandomness(seed))

    def deployed_round(seed: int) -> None:  # the path a deployed device runs: no patch
        train_private(NeuMF(1, N_ITEMS, device.model), items, labels, training, privacy, SecureRandomness())

    def with_streams(make: Callable[[int], RandomSource]) -> Callable[[int], None]:
        def run(seed: int) -> None:
            patched = streams_in_place_of_generator(lambda: make(seed))
            with mock.patch.object(local_training, "make_private_ghost", patched):
                private_round(seed)

        return run

    rounds = interleaved(
        {
            "torch.Generator": private_round,
            "SeededSource": with_streams(SOURCES["SeededSource"]),
            "SecureSource": deployed_round,
        },
        args.rounds,
    )

    table = Table(
        title=f"one DP round: {args.records} records, {training.steps} steps, noise on {coords} coordinates a step "
        f"(noise multiplier {privacy.noise_multiplier:.3f}); median CPU ms, 1 thread"
    )
    table.add_column("randomness")
    table.add_column("draws ms", justify="right")
    table.add_column("x torch", justify="right")
    table.add_column("whole round ms", justify="right")
    table.add_column("x torch", justify="right")
    for name in draws:
        table.add_row(
            name,
            f"{draws[name] * 1e3:.2f}",
            f"{draws[name] / draws['torch.Generator']:.2f}",
            f"{rounds[name] * 1e3:.1f}",
            f"{rounds[name] / rounds['torch.Generator']:.3f}",
        )
    console = Console()
    console.print(table)
    ratio = rounds["SecureSource"] / rounds["torch.Generator"]
    console.print(f"ratio secure round / torch round = {ratio:.3f} (goal <= 1.10, floor 1.30)")


if __name__ == "__main__":
    main()
