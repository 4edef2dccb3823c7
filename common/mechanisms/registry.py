"""Every privacy mechanism by its ``privacy.mechanism`` name (as ``opacus.accountants.registry``)."""

from __future__ import annotations

from typing import Protocol

from fedrec.common.errors import FedrecError
from fedrec.common.mechanisms.base import Mechanism
from fedrec.common.mechanisms.distributed import DistributedDP
from fedrec.common.mechanisms.local import LocalDP
from fedrec.common.mechanisms.none import NoPrivacy
from fedrec.common.mechanisms.user import UserDP

MECHANISMS: dict[str, type[Mechanism]] = {
    NoPrivacy.name: NoPrivacy,
    LocalDP.name: LocalDP,
    DistributedDP.name: DistributedDP,
    UserDP.name: UserDP,
}
NAMES = tuple(MECHANISMS)
SHARED_NAMES = tuple(name for name, mechanism in MECHANISMS.items() if mechanism.shared)


class NamesMechanism(Protocol):
    """A ``PrivacyConfig`` (what the operator set) or a ``DevicePrivacy`` (what the server resolved)."""

    @property
    def mechanism(self) -> str: ...


def mechanism_for(privacy: NamesMechanism) -> Mechanism:
    """The mechanism ``privacy`` names."""
    if privacy.mechanism not in MECHANISMS:
        raise FedrecError(f"privacy.mechanism: must be one of {', '.join(NAMES)}, got {privacy.mechanism!r}")
    return MECHANISMS[privacy.mechanism]()
