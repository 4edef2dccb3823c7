"""The device owner's privacy limits, which the device enforces against whatever the server instructs.

A server can ask a device for anything: noise 1e-4, a budget of 1e300, a fresh ledger under a new state
prefix, a round of a shared-noise mechanism whose sum needs only one device. The owner sets the limits
(``fedrec client`` flags, carried in the SuperNode's node config, which the server never sees or sets);
the device refuses a round that breaks any of them, with one line in its log, so the server's
instructions can only make a round stricter than the policy, never looser.

The lifetime budget is kept in the store under a name no server chooses (``LIFETIME``; the ledger is
``fedrec.common.privacy.LifetimeLedger``): every private round a device commits is added to it, whatever
the state prefix, run or round number it was told. This module imports no torch: SecAgg+'s key stages
check the policy before a device loads its training code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from fedrec.common.errors import FedrecError
from fedrec.common.model_names import canonical
from fedrec.common.settings import SettingError, require

if TYPE_CHECKING:
    from fedrec.common.config import DeviceConfig
    from fedrec.common.mechanisms import DevicePrivacy
    from fedrec.common.model import ModelConfig

NODE_CONFIG_PREFIX = "policy."  # node config keys: policy.<field>


@dataclass(frozen=True)
class DevicePolicy:
    """What a device accepts. The defaults are those of a deployed device: DP only, at least the noise of
    the default runs, and at most epsilon 10 over its whole life, per unit."""

    allow_non_private: bool = False  # train without DP at all (its update then carries its records in clear)
    min_noise_multiplier: float = 0.5  # of the mechanism's Gaussian (for shared noise: that of the sum)
    max_delta: float = 1e-5
    max_epsilon: float = 10.0  # lifetime, per unit, over every run and state prefix on this store
    min_devices: int = 2  # shared noise: the fewest devices whose shares must add up to the promised noise
    min_secagg_threshold: int = 2  # SecAgg+: the fewest shares that reconstruct a secret
    # Models of one's own (module:Class or file.py:Class) this device may load, comma-separated, "*" any:
    # loading one runs its code, so a server cannot name code for a device to run.
    allow_models: str = ""

    def __post_init__(self) -> None:
        require(self.min_noise_multiplier >= 0, "min_noise_multiplier", "must be >= 0")
        require(0 < self.max_delta < 1, "max_delta", f"must be in (0, 1), got {self.max_delta}")
        require(self.max_epsilon > 0 and not math.isnan(self.max_epsilon), "max_epsilon", "must be > 0")
        require(self.min_devices >= 1, "min_devices", f"must be >= 1, got {self.min_devices}")
        require(self.min_secagg_threshold >= 1, "min_secagg_threshold", "must be >= 1")

    def refusal(self, privacy: DevicePrivacy, device: DeviceConfig, shared: bool) -> str | None:
        """Why this device refuses the instructed round, or None when the round is within its limits."""
        if not privacy.private:
            return None if self.allow_non_private else "training without DP is not allowed by this device"
        if privacy.noise_multiplier < self.min_noise_multiplier:
            return f"noise multiplier {privacy.noise_multiplier:g} is below this device's minimum {self.min_noise_multiplier:g}"
        if privacy.delta > self.max_delta:
            return f"delta {privacy.delta:g} is above this device's maximum {self.max_delta:g}"
        if shared and device.shared_noise.min_devices < self.min_devices:
            return (
                f"shared noise over {device.shared_noise.min_devices} device(s) is below this device's minimum "
                f"{self.min_devices}"
            )
        return None

    def model_refusal(self, model: ModelConfig) -> str | None:
        """Why this device refuses to load the instructed model, or None (the built-in kinds load anywhere)."""
        return model_refusal(model, self.allow_models)

    def secagg_refusal(self, threshold: int) -> str | None:
        if threshold < self.min_secagg_threshold:
            return f"SecAgg+ threshold {threshold} is below this device's minimum {self.min_secagg_threshold}"
        return None

    def to_node_config(self) -> str:
        """The policy as ``--node-config`` pairs (typed values, as Flower parses them)."""
        return " ".join(f"{NODE_CONFIG_PREFIX}{f.name}={_node_value(getattr(self, f.name))}" for f in fields(self))

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> DevicePolicy:
        given = {k[len(NODE_CONFIG_PREFIX) :]: v for k, v in node_config.items() if k.startswith(NODE_CONFIG_PREFIX)}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise FedrecError(f"node config: unknown device policy key {NODE_CONFIG_PREFIX}{unknown[0]}")
        typed = {}
        for name, value in given.items():
            try:
                typed[name] = _typed(value, known[name].type)
            except ValueError as exc:
                raise FedrecError(f"node config: {NODE_CONFIG_PREFIX}{name}: {exc}") from None
        try:
            return cls(**typed)
        except SettingError as exc:
            raise FedrecError(f"node config: {NODE_CONFIG_PREFIX}{exc.field}: {exc}") from None


# A simulated fleet's owner is the harness, which runs every arm (non-private ones included) as its own
# world over the same provisioned stores: it refuses nothing but what no mechanism can mean.
SIMULATED = DevicePolicy(
    allow_non_private=True,
    min_noise_multiplier=0.0,
    max_delta=0.1,
    max_epsilon=math.inf,
    min_devices=1,
    min_secagg_threshold=1,
    allow_models="*",
)


def model_refusal(model: ModelConfig, allowed: str) -> str | None:
    """Why a model may not be loaded under the owner's comma-separated ``allowed`` kinds, or None (a file
    path names the same model however it is written)."""
    names = {canonical(name.strip()) for name in allowed.split(",") if name.strip()}
    if not model.custom or "*" in names or canonical(model.kind) in names:
        return None
    return f"model {model.kind!r} is not one this device's owner allowed (--allow-model): loading it runs its code"


def _node_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return repr(value)


def _typed(value: object, kind: object) -> Any:
    """A node config value (bool, int, float or str as Flower parsed it) as the field's type."""
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if name == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"expected true or false, got {value!r}")
    if name == "int":
        return int(str(value))
    if name == "str":
        return str(value)
    return float(str(value))


def deployed(node_config: Mapping[str, Any]) -> bool:
    """A SuperNode `fedrec client` started (its node config names its store or its gateway's group), not a
    simulated node."""
    return "store" in node_config or "stores-dir" in node_config


def node_policy(node_config: Mapping[str, Any]) -> DevicePolicy:
    """The owner's limits: a deployed node's from its node config (``fedrec client`` flags, the strict
    defaults for any left out); a simulated node's are the harness's (``SIMULATED``)."""
    return DevicePolicy.from_node_config(node_config) if deployed(node_config) else SIMULATED
