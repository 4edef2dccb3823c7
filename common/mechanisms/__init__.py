"""Privacy mechanisms as classes: a base class (``base.py``), one module per mechanism and a registry by
name (``registry.py``), in the manner of Opacus' ``opacus/accountants/``. Client and server both read them."""

from fedrec.common.mechanisms.base import (
    AccountantStep,
    DevicePrivacy,
    Mechanism,
    ServerStep,
    Trainer,
    planned_rounds,
)
from fedrec.common.mechanisms.registry import MECHANISMS, NAMES, SHARED_NAMES, mechanism_for

__all__ = [
    "MECHANISMS",
    "NAMES",
    "SHARED_NAMES",
    "AccountantStep",
    "DevicePrivacy",
    "Mechanism",
    "ServerStep",
    "Trainer",
    "mechanism_for",
    "planned_rounds",
]
