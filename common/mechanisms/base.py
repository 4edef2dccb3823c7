"""What every privacy mechanism is: a class owning its unit, its trust model, the settings it reads, the
noise it plans, what its devices reply and what the server does with the sum (``fedrec.common.mechanisms``).

Modelled on Opacus' ``opacus/accountants/``: an abstract base class and a registry by name
(``registry.py``); one module per mechanism.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from scipy.stats import binom

from fedrec.common.errors import FedrecError
from fedrec.common.item_rows import ITEM_TABLE
from fedrec.common.model import build_model, global_state
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.replies import allowed_keys
from fedrec.common.settings import require

if TYPE_CHECKING:
    from fedrec.common.config import DeviceConfig, FederationConfig, PrivacyConfig


History = tuple[tuple[float, float, int], ...]  # an accountant history: (noise multiplier, sample rate, steps)


@dataclass(frozen=True)
class DevicePrivacy:
    """The mechanism a device runs. ``noise_multiplier`` 0 = no DP; otherwise the device refuses any round
    that would take its composed epsilon past ``budget``. Under ``distributed`` the noise multiplier is that
    of the sum over all devices (each device adds its 1/sqrt(min_devices) share) and ``expected_batch`` is
    the public expected number of records sampled per round, which divides the sum; under ``user`` it is
    the expected number of sampled devices (every device's whole update is one unit)."""

    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    budget: float = 0.0
    mechanism: str = "local"
    expected_batch: float = 0.0

    def __post_init__(self) -> None:
        require(self.noise_multiplier >= 0, "noise_multiplier", f"must be >= 0, got {self.noise_multiplier}")
        require(self.max_grad_norm > 0, "max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        require(0.0 < self.delta < 1.0, "delta", f"must be in (0, 1), got {self.delta}")
        require(not self.private or self.budget > 0, "budget", "a private device needs a budget > 0")

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0


class Trainer(Enum):
    """How a node trains its devices for one round (``fedrec.client.app`` maps each to its function)."""

    LOCAL = "local"  # each device trains on its own, with or without DP-SGD (client/fleet.py)
    SHARED_GRADIENTS = "shared_gradients"  # one DP-SGD step's noisy gradient sums (client/shared_noise.py)
    USER_UPDATES = "user_updates"  # each sampled device's clipped, noisy whole update (client/user_level.py)


@dataclass(frozen=True)
class ServerStep:
    """What the server applies to the noisy sum of a shared-noise round: torch.optim.SGD with momentum on
    ``sign`` x sum / expected batch (the gradient of the pooled recipe: sign -1; a mean update: +1), at
    ``lr`` on the item table and ``dense_lr`` (when given) on every other parameter."""

    lr: float
    momentum: float
    sign: float
    dense_lr: float | None = None

    def rate(self, key: str) -> float:
        return self.lr if self.dense_lr is None or key == ITEM_TABLE else self.dense_lr

    def apply(
        self,
        state: dict[str, torch.Tensor],
        noisy_sums: dict[str, torch.Tensor],
        expected_batch: float,
        buffers: dict[str, torch.Tensor],
    ) -> None:
        """One step on ``state`` in place; ``buffers`` (the momentum, per parameter) is updated in place too."""
        for key, noisy_sum in noisy_sums.items():
            direction = self.sign * noisy_sum / expected_batch
            buffers[key] = self.momentum * buffers[key] + direction if key in buffers else direction
            state[key] = (state[key].double() + self.rate(key) * buffers[key]).to(state[key].dtype)


@dataclass(frozen=True)
class AccountantStep:
    """What one round adds to a device's accountant history (``fedrec.common.privacy.PrivacyLedger``)."""

    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class Ignored:
    """A setting the mechanism does not read: refused when it is set to anything outside ``allowed``
    (empty = its default) rather than silently ignored."""

    key: str  # dotted, under ``federation``
    why: str
    allowed: tuple[object, ...] = ()


def setting(federation: FederationConfig, key: str) -> tuple[object, object]:
    """The value of the dotted ``key`` under ``federation`` and its default (that of the owning dataclass)."""
    *path, leaf = key.split(".")
    owner: object = federation
    for name in path:
        owner = getattr(owner, name)
    return getattr(owner, leaf), getattr(type(owner)(), leaf)


def with_setting(config: Any, key: str, value: object) -> Any:
    """``config`` (a frozen settings dataclass) with the dotted ``key`` set to ``value``."""
    name, _, rest = key.partition(".")
    return replace(config, **{name: with_setting(getattr(config, name), rest, value) if rest else value})


def planned_rounds(rounds: int, participation: float, quantile: float) -> int:
    """Rounds a device takes at ``quantile`` of Binomial(rounds, participation): each device flips its own
    coin per round, so the noise is planned for the device at that quantile, not for one in every round."""
    if participation >= 1.0 or quantile >= 1.0:
        return rounds
    return max(1, int(binom.ppf(quantile, rounds, participation)))


def need(condition: bool, key: str, message: str, mechanism: str) -> None:
    if not condition:
        raise FedrecError(f"run config: federation.{key}: {message} under privacy.mechanism {mechanism}")


class Mechanism(ABC):
    """One privacy mechanism. Class attributes are its facts; methods what it does with a configuration."""

    name: ClassVar[str]
    unit: ClassVar[str]  # what one unit of privacy is (the report's privacy table)
    trusted: ClassVar[str]  # who must be trusted for the guarantee to hold
    trust: ClassVar[str] = ""  # the same in a clause, for the report's headline
    server_sees: ClassVar[str]  # what the server learns each round
    private: ClassVar[bool] = True
    user_level: ClassVar[bool] = False  # the unit is one user (else one record)
    # The noise is split across devices and only the sum is used: rounds need secure aggregation.
    shared: ClassVar[bool] = False
    trainer: ClassVar[Trainer] = Trainer.LOCAL
    # Trains any model of the contract (common/recommender.py), not only NeuMF's own layout.
    any_model: ClassVar[bool] = True
    # A train reply's arrays are (a sum of) the global parameters, or their change, under their own names;
    # else the mechanism's own arrays (``share_names``).
    replies_parameters: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...]] = ()  # the settings (dotted, under federation) it reads
    ignores: ClassVar[tuple[Ignored, ...]] = ()

    def check(self, federation: FederationConfig) -> None:
        """Refuse, in one line, a setting this mechanism ignores that was set to another value, or a model
        it cannot train."""
        require(
            self.any_model or not federation.device.model.custom,
            "device.model.kind",
            f"privacy.mechanism {self.name} trains NeuMF's own layout only, not {federation.device.model.kind!r}",
        )
        for ignored in self.ignores:
            value, default = setting(federation, ignored.key)
            allowed = ignored.allowed or (default,)
            require(
                value in allowed,
                ignored.key,
                f"{value!r} is ignored under privacy.mechanism {self.name} ({ignored.why}); "
                f"leave it at {' or '.join(repr(a) for a in allowed)}",
            )

    def without_ignored(self, federation: FederationConfig) -> FederationConfig:
        """``federation`` with every setting this mechanism ignores at its default: for a harness that runs
        arms of several mechanisms from one configuration (each default passes every mechanism's check)."""
        for ignored in self.ignores:
            value, default = setting(federation, ignored.key)
            if value not in (ignored.allowed or (default,)):
                federation = with_setting(federation, ignored.key, default)
        return federation

    @abstractmethod
    def plan(
        self, privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
    ) -> DevicePrivacy:
        """The noise that keeps a device of the planned schedule within epsilon; the budget is the hard stop.
        ``records`` / ``devices`` are the fleet's train records and devices (public, as the dataset size is
        to Opacus)."""

    def reply_keys(self, kind: str, private: bool) -> tuple[str, ...]:
        """The metric keys a ``kind`` ("train" or "evaluate") reply may carry (``fedrec.common.replies``):
        under DP only functions of public facts."""
        return allowed_keys(kind, private)

    def histogram_round(self, device: DeviceConfig, round_number: int) -> bool:
        """Does this round release the item histogram instead of a model update?"""
        return False

    def share_names(self, device: DeviceConfig, round_number: int, parameters: Sequence[str]) -> tuple[str, ...]:
        """The arrays, in order, of a node's share of a shared-noise round (``parameters``: the global
        model's names as the server sends them); empty for a mechanism whose replies are not shares."""
        return ()

    def server_step(self, federation: FederationConfig) -> ServerStep | None:
        """How the server applies a round's noisy sum; None = the Flower strategy aggregates."""
        return None

    def initial_state(self, device: DeviceConfig) -> dict[str, torch.Tensor]:
        """The global model the first round starts from: a seeded random model of the configured kind."""
        torch.manual_seed(device.seed)
        return global_state(build_model(1, device.n_items, device.model))

    def round_step(self, device: DeviceConfig, privacy: DevicePrivacy, round_number: int) -> AccountantStep:
        """What a device's round adds to its accountant history."""
        return AccountantStep(privacy.noise_multiplier, self.sample_rate(device), device.training.steps)

    def ledgers(
        self, stored: PrivacyLedger, device: DeviceConfig, privacy: DevicePrivacy, round_number: int
    ) -> tuple[PrivacyLedger, PrivacyLedger]:
        """A device's ledger before and after this round, from the one it ``stored``: the budget check reads
        the second, a refusing device reports the first. Without DP nothing is spent."""
        if not privacy.private:
            return stored, stored
        shared = self.shared_history(device, privacy, round_number)
        if shared is not None:
            before = self.shared_history(device, privacy, round_number - 1) or ()
            return PrivacyLedger(list(before)), PrivacyLedger(list(shared))
        step = self.round_step(device, privacy, round_number)
        after = PrivacyLedger(list(stored.history))
        after.record(step.noise_multiplier, step.sample_rate, step.steps)
        return stored, after

    def new_entries(self, device: DeviceConfig, privacy: DevicePrivacy, round_number: int, counted: int) -> History:
        """What this round adds to the device's lifetime ledger (``fedrec.common.policy``), given the last
        round of the same run it counted (``counted``; a round number at or past this one means the server
        restarted its count, and the whole history of the new run counts)."""
        shared = self.shared_history(device, privacy, round_number)
        if shared is None:
            step = self.round_step(device, privacy, round_number)
            return ((step.noise_multiplier, step.sample_rate, step.steps),)
        done = sum(n for *_, n in self.shared_history(device, privacy, counted) or ()) if counted < round_number else 0
        entries = []
        for sigma, q, steps in shared:
            kept = max(0, steps - done)
            done -= steps - kept
            if kept:
                entries.append((sigma, q, kept))
        return tuple(entries)

    @property
    def lifetime_unit(self) -> str:
        """The lifetime ledger a round of this mechanism counts in."""
        return "user" if self.user_level else "record"

    def sample_rate(self, device: DeviceConfig) -> float:
        """The Poisson rate of the accountant's unit in one step."""
        return device.training.sample_rate

    def server_history(self, released: History) -> History:
        """A device's accountant history against the server, given its history against an observer of the
        released model. The same for every mechanism here: records are sampled on the device, and under
        ``user`` every device sends a noisy share each round, so the server sees no one's coin; the
        server's view, the noisy sums, is what the released model is computed from. A mechanism whose
        server saw more (who was sampled, a single device's share) would return a longer history."""
        return released

    def shared_history(self, device: DeviceConfig, privacy: DevicePrivacy, rounds: int) -> History | None:
        """The accountant history every device has after ``rounds``, when it is the same for all (the
        ledger then need not be read per device); None = each device's own ledger."""
        return None
