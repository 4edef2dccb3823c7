"""A device's privacy ledger: every DP-SGD step it ever took, composed by Opacus' RDP accountant.

Flower's Opacus example reports each round's epsilon from a fresh PrivacyEngine; that under-states the
spend. The ledger keeps the accountant history itself (noise multiplier, sample rate, steps), persists
it in the device store, and recomputes the cumulative epsilon from it, so it survives restarts and
anyone holding the history can recompute the number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

UNIT = "record-level (one interaction with its sampled negatives), per device"
SHARED_UNIT = (
    "record-level (one interaction with its sampled negatives), central: noise on the sum of >= min_devices devices"
)
USER_UNIT = "user-level (everything one user contributes; bounds record-level too), noise on the sum"


# A noise planned so that the last round ends exactly at the budget composes to it up to float rounding.
BUDGET_TOLERANCE = 1e-9


def over_budget(epsilon: float, budget: float) -> bool:
    """The one budget check of every mechanism: would a device at ``epsilon`` be past its ``budget``?"""
    return epsilon > budget + BUDGET_TOLERANCE


@dataclass
class PrivacyLedger:
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Append a round's steps, merging with the last entry when the mechanism is unchanged."""
        if steps <= 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.history[-1]
            self.history[-1] = (sigma, q, n + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float) -> float:
        return history_epsilon(tuple(self.history), delta)

    def epsilon_if(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """The cumulative epsilon after one more round with these settings (for the budget check)."""
        trial = PrivacyLedger(list(self.history))
        trial.record(noise_multiplier, sample_rate, steps)
        return trial.epsilon(delta)

    def to_json(self) -> bytes:
        return json.dumps({"accountant": "rdp", "history": self.history}).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> PrivacyLedger:
        if not data:
            return cls()
        raw = json.loads(data)
        return cls([(float(s), float(q), int(n)) for s, q, n in raw["history"]])


@lru_cache(maxsize=4096)
def history_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Epsilon of a whole accountant history (cached: many devices share identical histories)."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in history]
    return float(accountant.get_epsilon(delta=delta))


def noise_for_budget(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Smallest noise multiplier (RDP) with which ``steps`` steps at ``sample_rate`` stay within epsilon."""
    return float(
        get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"
        )
    )


LIFETIME = "lifetime_ledger"  # store state, never prefixed: no server-named run resets it


@dataclass
class LifetimeLedger:
    """Every private round this store's device committed, per unit, whatever the run or state prefix, and
    for each run's ledger (state prefix) the last round it counted, so a mechanism whose history is a
    function of the round number (``user``) adds only the rounds it has not counted yet."""

    units: dict[str, PrivacyLedger] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)  # state prefix -> last round number counted

    def after(self, unit: str, history: tuple[tuple[float, float, int], ...]) -> LifetimeLedger:
        """This ledger with ``history`` (a round's new accountant entries) added to ``unit``."""
        units = {k: PrivacyLedger(list(v.history)) for k, v in self.units.items()}
        ledger = units.setdefault(unit, PrivacyLedger())
        for sigma, q, steps in history:
            ledger.record(sigma, q, steps)
        return LifetimeLedger(units, dict(self.counted))

    def epsilon(self, unit: str, delta: float) -> float:
        return self.units.get(unit, PrivacyLedger()).epsilon(delta)

    def to_json(self) -> bytes:
        return json.dumps(
            {"units": {k: v.history for k, v in self.units.items()}, "counted": self.counted}, sort_keys=True
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> LifetimeLedger:
        if data is None:
            return cls()
        raw = json.loads(data)
        units = {k: PrivacyLedger([(float(s), float(q), int(n)) for s, q, n in v]) for k, v in raw["units"].items()}
        return cls(units, {str(k): int(v) for k, v in raw["counted"].items()})
