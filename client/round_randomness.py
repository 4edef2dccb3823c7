"""Where a device's randomness comes from in one round, decided by one type.

``SimulatedRandomness`` (a simulated device, or a round without DP, where nothing rests on secrecy) draws
from torch generators seeded from the round seed, so runs repeat and the stacked trainer reproduces the
per-device one draw for draw. ``SecureRandomness`` (a deployed device's private round) draws from ChaCha20
streams keyed from the operating system (``fedrec.common.randomness.SecureSource``): nothing the server
knows can recompute them, and it has no seed to give a torch generator (``torch_seed`` refuses), so a
deployed device cannot fall back to one. In both, sampling, negatives and noise come from streams of
their own: the noise never depends on which records were sampled.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from fedrec.common.errors import FedrecError
from fedrec.common.randomness import NEGATIVES, RandomStream, SecureSource

Shape = int | Sequence[int]
# Purposes whose simulated streams keep the names their seeds were first derived under (runs repeat).
POISSON, USER_NOISE = "poisson", "user-noise"


def stream_seed(purpose: str, *seeds: int) -> int:
    """The seed of one simulated torch stream (noise, record sampling) from the round seeds it serves."""
    high = 0
    for seed in seeds:
        high ^= seed >> 32
    return zlib.crc32(f"{purpose}:{','.join(map(str, seeds))}".encode()) | high << 32


class Draws(Protocol):
    """The draws a device's mechanisms take from one stream (``RandomStream`` offers the same)."""

    def normal(self, shape: Shape, std: float, dtype: torch.dtype = torch.float32) -> torch.Tensor: ...

    def bernoulli(self, n: int, p: float) -> torch.Tensor: ...


class TorchDraws:
    """A simulated stream: one seeded torch generator."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, shape: Shape, std: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        return torch.normal(0.0, std, dims, generator=self.generator).to(dtype)

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < p


class StreamIntegers:
    """numpy's ``Generator.integers`` on a secure stream (what ``make_examples`` draws negatives with)."""

    def __init__(self, stream: RandomStream):
        self.stream = stream

    def integers(self, low: int, high: int, size: tuple[int, ...]) -> np.ndarray:
        return self.stream.integers(low, high, size).numpy()


class RoundRandomness(ABC):
    """One device's randomness for one round."""

    @property
    @abstractmethod
    def reproducible(self) -> bool: ...

    @abstractmethod
    def draws(self, purpose: str) -> Draws:
        """The stream of ``purpose`` (its own for each purpose: independent of every other)."""

    @abstractmethod
    def negatives(self) -> np.random.Generator | StreamIntegers:
        """What a round's negative items are drawn from."""

    @abstractmethod
    def torch_seed(self) -> int:
        """The round seed of the simulation's torch generators (Opacus' noise and sampler, the stacked
        trainer's masks and noise)."""

    @abstractmethod
    def order_seed(self) -> int:
        """The seed of plain training's minibatch order, which no guarantee rests on (under ``user`` the
        whole update is clipped and noised, whatever order produced it)."""


class SimulatedRandomness(RoundRandomness):
    def __init__(self, seed: int):
        self.seed = seed

    @property
    def reproducible(self) -> bool:
        return True

    def draws(self, purpose: str) -> TorchDraws:
        return TorchDraws(stream_seed(purpose, self.seed))

    def negatives(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def torch_seed(self) -> int:
        return self.seed

    def order_seed(self) -> int:
        return self.seed


class SecureRandomness(RoundRandomness):
    """A deployed device's private round: a fresh OS-keyed source per round, a stream per purpose."""

    def __init__(self) -> None:
        self.source = SecureSource()

    @property
    def reproducible(self) -> bool:
        return False

    def draws(self, purpose: str) -> RandomStream:
        return self.source.stream(purpose)

    def negatives(self) -> StreamIntegers:
        return StreamIntegers(self.source.stream(NEGATIVES))

    def torch_seed(self) -> int:
        raise FedrecError("a deployed device's private round draws nothing from a seeded torch generator")

    def order_seed(self) -> int:
        return int(self.source.stream("order").integers(0, 2**62, 1)[0])
