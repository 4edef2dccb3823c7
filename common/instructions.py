"""What a server sends a device each round, and what a device may do with it.

The device section of the run config travels whole (``fedrec.common.config.DeviceConfig``), beside the
privacy mechanism the server resolved for this run and the facts of this round. A device reads
nothing else: no run-config defaults on the device side, so a setting cannot silently fall back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedrec.common.config import DeviceConfig, PrivacyConfig
from fedrec.common.mechanisms import DevicePrivacy, Mechanism, mechanism_for
from fedrec.common.settings import flatten, from_flat

FLOWER_KEYS = ("server-round",)  # added by Flower's strategies to every ConfigRecord they send


@dataclass(frozen=True)
class RoundInfo:
    number: int = 0  # the absolute round (a resumed run continues the count)
    final: bool = False  # the final evaluation: devices keep their serving row for `fedrec recommend`


@dataclass(frozen=True)
class DeviceInstructions:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    privacy: DevicePrivacy = field(default_factory=DevicePrivacy)
    round: RoundInfo = field(default_factory=RoundInfo)

    def to_config(self) -> dict[str, Any]:
        return flatten(self)

    @classmethod
    def from_config(cls, record: Mapping[str, Any], source: str = "server message") -> DeviceInstructions:
        return from_flat(cls, {k: v for k, v in record.items() if k not in FLOWER_KEYS}, source)

    @property
    def mechanism(self) -> Mechanism:
        return mechanism_for(self.privacy)

    @property
    def histogram_round(self) -> bool:
        """Does this round release the item histogram instead of a model update (``distributed``, round 1)?"""
        return self.mechanism.histogram_round(self.device, self.round.number)

    def share_names(self, parameters: Sequence[str]) -> tuple[str, ...]:
        """The arrays, in order, of a node's share under a shared mechanism: what it adds to the round's sum
        (``parameters``: the global model's names as the server sends them)."""
        return self.mechanism.share_names(self.device, self.round.number, parameters)


def resolve_privacy(
    privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
) -> DevicePrivacy:
    """The noise that keeps a device of the planned schedule within epsilon (the mechanism's plan);
    ``records`` / ``devices`` (the fleet's train records and devices) are needed by the shared-noise ones."""
    return mechanism_for(privacy).plan(privacy, device, rounds, records, devices)
