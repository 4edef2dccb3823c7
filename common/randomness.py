"""The randomness behind a device's privacy: record sampling, negatives, participation and DP noise.

A device gets its randomness from one type, ``RandomSource``, and the class of the instance it is handed
decides how it is keyed: ``SecureSource`` (a deployed device) draws a 256-bit key from the operating
system and takes no seed at all, ``SeededSource`` (a simulated device) derives its key from a seed so runs
repeat. Nothing turns one into the other, so a deployed device cannot fall back to a seeded stream.

Both share one stream implementation, a ChaCha20 keystream (``cryptography``'s cipher over zero bytes),
so the simulation runs the exact code a deployment runs. ``SeededSource`` hashes its whole seed (any
size, no 32-bit narrowing as ``torch.Generator.manual_seed`` does), and each stream's key comes from the
source's key by HKDF with the purpose in its info: the sampling, negatives and noise streams of one
device are independent, so the noise cannot depend on which records were sampled (it did when Opacus'
sampler and the noise shared one MT19937 stream).

DP noise is snapped: ``add_normal`` rounds the value and the Gaussian noise to one power-of-two grid and
adds them exactly, so the released value is a function of (grid value + grid noise) alone, whatever the
float arithmetic around it; see ``add_normal`` and docs/privacy.md for what this covers and what not.
"""

from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Final

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# The purposes a device draws for; any other non-empty name is accepted too, and gets its own stream.
SAMPLING: Final = "sampling"  # Poisson record masks
NEGATIVES: Final = "negatives"  # negative items of each record
NOISE: Final = "noise"  # DP noise
PARTICIPATION: Final = "participation"  # whether a device takes part in a round

KEY_BYTES: Final = 32  # ChaCha20's 256-bit key; also what SecureSource reads from the OS
# The noise grid: 2**-GRID_BITS of the noise std (to a power of two). Finer moves the snapped value less
# (sensitivity + grid * sqrt(d)); coarser leaves more 53-bit uniforms per grid cell (the sampler's error).
GRID_BITS: Final = 20
_EXACT: Final = 2.0**52  # |value / grid| below this: the grid sum is exact in float64
_UNIT: Final = 2.0**-53
_LOW53: Final = (1 << 53) - 1
_HALF: Final = torch.tensor(0.5, dtype=torch.float64)
_WORD: Final = 8
Shape = int | Sequence[int]


def _encode(*parts: int | str) -> bytes:
    """An injective encoding of ints (any size, any sign) and strings: type tag, length, bytes."""
    out = bytearray()
    for part in parts:
        if isinstance(part, int):
            raw, tag = part.to_bytes(part.bit_length() // 8 + 1, "big", signed=True), b"i"
        else:
            raw, tag = part.encode(), b"s"
        out += tag + len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def noise_grid(std: float) -> float:
    """The power of two the noise of ``std`` and the value it is added to are rounded to (std / grid is in
    [2**GRID_BITS, 2**(GRID_BITS+1)))."""
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"noise std must be finite and > 0, got {std}")
    return math.ldexp(1.0, math.frexp(std)[1] - 1 - GRID_BITS)


def _numel(shape: Shape) -> tuple[int, tuple[int, ...]]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    return math.prod(dims), dims


class RandomStream:
    """One ChaCha20 keystream and the draws a device needs from it, as torch tensors.

    Built by a ``RandomSource`` (its key is never reused); not thread-safe. A stream holds 2**32 blocks of
    64 bytes (256 GiB) before ChaCha20's block counter wraps; a DP round uses a few MB. The noise path
    works in buffers the stream keeps (a fresh MB-sized tensor per pass costs as much as the pass)."""

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a stream key has {KEY_BYTES} bytes, got {len(key)}")
        # The key is unique per stream, so one fixed nonce (and counter 0) is safe.
        self._cipher = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._zeros = b""
        self._buffers: dict[str, torch.Tensor] = {}

    def random_bytes(self, n: int) -> bytes:
        return self._cipher.update(bytes(n))

    def _buffer(self, name: str, dtype: torch.dtype, n: int) -> torch.Tensor:
        """[n] of the stream's buffer ``name``: overwritten by the next call that uses it, never handed out."""
        buffer = self._buffers.get(name)
        if buffer is None or len(buffer) < n:
            buffer = self._buffers[name] = torch.empty(n, dtype=dtype)
        return buffer[:n]

    def _words(self, n: int) -> torch.Tensor:
        """[n] int64 of 64 random bits each, in the stream's buffer."""
        if len(self._zeros) < _WORD * n:
            self._zeros = bytes(_WORD * n)
        out = self._buffer("words", torch.int64, n)
        if n:
            self._cipher.update_into(memoryview(self._zeros)[: _WORD * n], out.numpy().data.cast("B"))
        return out

    def uniform(self, shape: Shape) -> torch.Tensor:
        """float64 in [0, 1): 53 random bits over 2**53, every value of that grid equally likely."""
        n, dims = _numel(shape)
        words = self._words(n).bitwise_and_(_LOW53)
        return words.to(torch.float64).mul_(_UNIT).reshape(dims)

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        """[n] bool, each True with probability p (to 2**-53): a Poisson sampling mask."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {p}")
        return self.uniform(n) < p

    def coin(self, p: float) -> bool:
        """One Bernoulli draw (a device's participation in a round)."""
        return bool(self.bernoulli(1, p)[0])

    def integers(self, low: int, high: int, shape: Shape) -> torch.Tensor:
        """int64 uniform on [low, high): a 64-bit word modulo the range, rejecting the words below
        2**64 mod range, so no value is favoured (plain modulo favours the low values)."""
        span = high - low
        if not 1 <= span <= 2**63 or not -(2**63) <= low < high <= 2**63:
            raise ValueError(f"need low < high within int64 and a range of at most 2**63, got [{low}, {high})")
        n, dims = _numel(shape)
        reject_below = np.uint64((2**64) % span)
        out = np.empty(n, dtype=np.uint64)
        todo = np.arange(n)
        while len(todo):  # a second pass with probability < span / 2**64 per draw
            words = self._words(len(todo)).numpy().view(np.uint64)
            ok = words >= reject_below
            out[todo[ok]] = words[ok] % np.uint64(span)
            todo = todo[~ok]
        return torch.from_numpy(out.astype(np.int64) + np.int64(low)).reshape(dims)

    def standard_normal(self, n: int) -> torch.Tensor:
        """[n] float64 N(0, 1) by Box-Muller on 53-bit uniforms (both outputs of each pair are used).
        |z| < 8.58: the radius uniform is at least 2**-53."""
        return self._box_muller(n, 1.0).clone()

    def _box_muller(self, n: int, scale: float) -> torch.Tensor:
        """[n] float64 N(0, scale**2) in the stream's buffer, in few passes over memory (the DP hot path).
        A word shifted right by 11 is k, uniform on [-2**52, 2**52): 1/2 - k / 2**53 is uniform on the
        53-bit grid of (0, 1], exactly, and the angle k * pi / 2**52 uniform on [-pi, pi)."""
        half = (n + 1) // 2
        k = self._buffer("normal", torch.float64, 3 * half)
        k[: 2 * half].copy_(self._words(2 * half).bitwise_right_shift_(11))
        radius, angle, cos = k[:half], k[half : 2 * half], k[2 * half :]
        torch.add(_HALF, radius, alpha=-_UNIT, out=radius).log_().mul_(-2.0 * scale * scale).sqrt_()
        torch.cos(angle.mul_(math.pi * 2 * _UNIT), out=cos)
        angle.sin_().mul_(radius)
        radius.mul_(cos)
        return k[:n]

    def _grid_noise(self, n: int, std: float) -> torch.Tensor:
        """[n] float64 integers in the stream's buffer: N(0, std**2) in units of ``noise_grid(std)``."""
        return self._box_muller(n, std / noise_grid(std)).round_()

    def normal(self, shape: Shape, std: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Noise N(0, std**2) on the grid of ``std`` (exact in float64). To release a value plus noise,
        use ``add_normal``: the sum is then exact too."""
        n, dims = _numel(shape)
        if std == 0:
            return torch.zeros(dims, dtype=dtype)
        return self._grid_noise(n, std).mul_(noise_grid(std)).to(dtype, copy=True).reshape(dims)

    def add_normal(self, value: torch.Tensor, std: float) -> torch.Tensor:
        """``value`` + N(0, std**2) per coordinate, in ``value``'s dtype and shape.

        The floating-point mitigation: the value and the noise are rounded to the grid (a power of two,
        std / 2**20 or finer) and added as integers in float64, which is exact. The release is then the
        rounded Gaussian mechanism on the snapped value (a function of snapped value + continuous noise),
        however it is rounded to ``value``'s dtype afterwards, and its only departure from the ideal is
        the sampler's own: 53-bit Box-Muller against cells of 2**-20 std. Snapping moves each coordinate
        by at most grid/2: the L2 sensitivity grows by at most grid * sqrt(numel). One call for many
        tensors (concatenated) is faster than a call each: the cost is per pass over memory."""
        if std == 0:
            return value.clone()
        grid = noise_grid(std)
        # value / grid: exact (a power of two), and so is its rounding.
        units = self._buffer("value", torch.float64, value.numel())
        units.copy_(value.detach().reshape(-1)).mul_(1.0 / grid).round_()
        if units.numel():
            low, high = torch.aminmax(units)
            if not max(-float(low), float(high)) < _EXACT:  # NaN fails too
                raise ValueError(
                    f"values in [{float(low) * grid:g}, {float(high) * grid:g}]: not exact with noise of std {std:g}"
                )
        total = self._grid_noise(value.numel(), std).add_(units).mul_(grid)
        return total.to(value.dtype, copy=True).reshape(value.shape)


class RandomSource(ABC):
    """Where a device's streams come from: one independent stream per purpose and call.

    ``stream(purpose)`` derives the stream's key from the source's key by HKDF-SHA256 with the purpose and
    how many streams of that purpose the source has handed out before: a second call for a purpose gives a
    new stream, never the first one again (reused noise would cancel in a difference of two releases).
    For a ``SeededSource`` the same seed and the same order of calls give the same streams."""

    def __init__(self, key: bytes):
        self._key = key
        self._opened: dict[str, int] = {}

    def stream(self, purpose: str) -> RandomStream:
        if not purpose:
            raise ValueError("a stream needs a purpose")
        count = self._opened.get(purpose, 0)
        self._opened[purpose] = count + 1
        info = b"fedrec stream v1" + _encode(purpose, count)
        return RandomStream(HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(self._key))

    @property
    @abstractmethod
    def reproducible(self) -> bool:
        """Can the streams be recomputed (from a seed)? The only two answers are the two subclasses."""


class SecureSource(RandomSource):
    """A deployed device's randomness: a 256-bit key from the operating system, held in this object only.

    It takes no argument, so no seed can key it; it refuses to be pickled or copied, so no two processes
    (or objects) hand out the same streams."""

    def __init__(self) -> None:
        super().__init__(os.urandom(KEY_BYTES))

    @property
    def reproducible(self) -> bool:
        return False

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a SecureSource stays in the process and object that drew its key")


class SeededSource(RandomSource):
    """A simulated device's randomness, repeatable: the key is SHA-256 of the whole seed and ``context``
    (e.g. the round and the device id), every bit of them, so seeds differing in any bit give other
    streams. Never for a deployed device: whoever knows the seed can recompute every draw."""

    def __init__(self, seed: int, *context: int | str):
        super().__init__(hashlib.sha256(b"fedrec seeded source v1" + _encode(seed, *context)).digest())

    @property
    def reproducible(self) -> bool:
        return True
