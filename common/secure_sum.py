"""Exact sums through Flower's SecAgg+ for the mechanisms that share the noise (``distributed``, ``user``).

SecAgg+ clips every value of a node's vector to [-c, c], rounds it stochastically onto T levels and sums
modulo a power of two. Clipping one node's noisy share is not a function of the sum, so it would fall
outside the Gaussian analysis. Under a shared mechanism a node therefore puts its share on SecAgg+'s grid
itself. It rounds each value stochastically to a multiple of the step 2c / T (unbiased, an error below one
step) and wraps it into [-c, c) modulo 2c. Every value then sits exactly on a SecAgg+ level (c and T are
powers of two, so the arithmetic is exact), and SecAgg+ neither clips nor rounds it again. The server gets
back the exact sum of the rounded shares modulo 2c, which is their sum whenever it lies in [-c, c).
Here c bounds the round's *sum* of a coordinate, not one node's value (docs/privacy.md, "Quantization").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedrec.common.errors import FedrecError

if TYPE_CHECKING:  # annotations only: common/config.py imports this module to check its settings
    from fedrec.common.config import SecureAggregation

SETTING = "federation.server.secure_aggregation"


def _power_of_two(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


@dataclass(frozen=True)
class SumGrid:
    clipping_range: float  # c: the sum of every coordinate must lie in [-c, c)
    levels: int  # T: SecAgg+'s quantization_range; the step is 2c / T

    def __post_init__(self) -> None:
        if not _power_of_two(self.clipping_range) or not _power_of_two(self.levels):
            raise FedrecError(
                f"{SETTING}: clipping_range ({self.clipping_range:g}) and quantization_range ({self.levels}) "
                "must be powers of two under a shared-noise mechanism, so that shares sum exactly"
            )

    @property
    def step(self) -> float:
        return 2 * self.clipping_range / self.levels

    def _wrap(self, units: np.ndarray) -> np.ndarray:
        half = self.levels // 2
        return (np.mod(units + half, self.levels) - half) * self.step

    def encode(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A node's share on the grid: stochastically rounded to a multiple of the step, wrapped into [-c, c)."""
        scaled = np.asarray(values, dtype=np.float64) / self.step
        low = np.floor(scaled)
        return self._wrap(low + (rng.random(scaled.shape) < scaled - low))

    def decode(self, mean: np.ndarray, vectors: int) -> np.ndarray:
        """The sum of ``vectors`` encoded shares, from the mean of them that SecAgg+ reveals."""
        return self._wrap(np.rint(np.asarray(mean, dtype=np.float64) * vectors / self.step))

    def headroom(self, total: np.ndarray) -> float:
        """Largest |sum| as a share of c. Near 1 a coordinate may have wrapped: clipping_range is too small."""
        return float(np.abs(total).max(initial=0.0)) / self.clipping_range


def check_shared_noise(sa: SecureAggregation, min_devices: int) -> None:
    """Before the first round of a shared-noise mechanism: the shares can sum exactly, each node's share
    is scaled by exactly one, and no sum SecAgg+ can unmask holds fewer than ``min_devices`` shares of the
    noise (counting one device per node, as on a fleet of phones)."""
    SumGrid(sa.clipping_range, sa.quantization_range)
    if sa.max_weight != int(sa.max_weight):
        raise FedrecError(f"{SETTING}.max_weight: must be a whole number under a shared-noise mechanism")
    if sa.reconstruction_threshold < min_devices:
        raise FedrecError(
            f"{SETTING}.reconstruction_threshold={sa.reconstruction_threshold} is below "
            f"federation.device.shared_noise.min_devices={min_devices}: SecAgg+ could reveal a sum of "
            f"{sa.reconstruction_threshold} nodes, with less noise than the accountant assumes; raise it to "
            f"{min_devices} or lower min_devices"
        )
