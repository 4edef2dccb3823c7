"""A pytest plugin that breaks one privacy mechanism on purpose (``--mutation NAME``), for
``bench.privacy_mutations``: the privacy checks must fail on each broken mechanism and pass on the honest one.

The mutations patch module attributes at start-up, before any test runs; the code under test is not
changed on disk. Each is one way a mechanism has been, or could be, broken:

- ``noise-div-10``: every DP noise draw (Opacus' generator, the ChaCha20 streams, the shared-noise shares)
  has a tenth of its standard deviation.
- ``one-stream``: sampling and noise read the same random numbers (torch: the sampler on the noise's seed,
  every purpose on one generator; ChaCha20: every purpose on the source's own key).
- ``seed-32``: a deployed device's round draws from torch generators seeded with 32 random bits.
- ``skip-share``: devices add no noise to their shared-noise shares.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
import torch

MUTATIONS = ("none", "noise-div-10", "one-stream", "seed-32", "skip-share")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--mutation", default="none", choices=MUTATIONS, help="the mechanism to break")


def _scaled(function: Callable[..., Any], std_at: int, factor: float) -> Callable[..., Any]:
    """``function`` with its positional argument ``std_at`` (or keyword ``std``) multiplied by ``factor``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "std" in kwargs:
            kwargs["std"] = kwargs["std"] * factor
        else:
            args = (*args[:std_at], args[std_at] * factor, *args[std_at + 1 :])
        return function(*args, **kwargs)

    return wrapper


def noise_div_10() -> None:
    import opacus.optimizers.optimizer as opacus_optimizer
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost

    from fedrec.client import local_training, shared_noise, user_level
    from fedrec.common.randomness import RandomStream

    for module in (opacus_optimizer, ghost):
        if hasattr(module, "_generate_noise"):
            module._generate_noise = _scaled(module._generate_noise, 0, 0.1)  # type: ignore[attr-defined]
    RandomStream.normal = _scaled(RandomStream.normal, 2, 0.1)  # type: ignore[method-assign]
    RandomStream.add_normal = _scaled(RandomStream.add_normal, 2, 0.1)  # type: ignore[method-assign]
    shared_noise.noise = _scaled(shared_noise.noise, 1, 0.1)
    user_level.noise = _scaled(user_level.noise, 1, 0.1)
    original = local_training._noise_only_step

    def quieter(optimizer: Any, privacy: Any, generator: torch.Generator) -> None:
        from dataclasses import replace

        original(optimizer, replace(privacy, noise_multiplier=privacy.noise_multiplier * 0.1), generator)

    local_training._noise_only_step = quieter


def one_stream() -> None:
    from fedrec.client import batched_training, local_training, round_randomness
    from fedrec.common.randomness import RandomSource, RandomStream
    from fedrec.simulations.arms import centralized_dp

    def same_seed(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    for module in (local_training, batched_training, centralized_dp):
        if hasattr(module, "torch_sampler"):
            module.torch_sampler = same_seed  # type: ignore[attr-defined]
    round_randomness.SimulatedRandomness.draws = lambda self, purpose: round_randomness.TorchDraws(self.seed)  # type: ignore[method-assign]
    RandomSource.stream = lambda self, purpose: RandomStream(self._key)  # type: ignore[method-assign]


def seed_32() -> None:
    from fedrec.client import device_round
    from fedrec.client.round_randomness import SecureRandomness, SimulatedRandomness

    original = device_round.round_randomness

    def thirty_two_bits(ref: Any, task: Any) -> Any:
        chosen = original(ref, task)
        return SimulatedRandomness(secrets.randbits(32)) if isinstance(chosen, SecureRandomness) else chosen

    device_round.round_randomness = thirty_two_bits


def skip_share() -> None:
    from fedrec.client import shared_noise, user_level

    def no_noise(shape: tuple[int, ...], std: float, draws: Any) -> torch.Tensor:
        return torch.zeros(shape)

    shared_noise.noise = no_noise
    user_level.noise = no_noise


APPLY = {"noise-div-10": noise_div_10, "one-stream": one_stream, "seed-32": seed_32, "skip-share": skip_share}


def pytest_configure(config: pytest.Config) -> None:
    mutation = config.getoption("--mutation")
    if mutation != "none":
        APPLY[mutation]()
