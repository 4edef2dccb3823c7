"""No DP: the ``federated`` arm. Devices train plainly and reply with their loss and accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedrec.common.mechanisms.base import DevicePrivacy, Mechanism

if TYPE_CHECKING:
    from fedrec.common.config import DeviceConfig, PrivacyConfig


class NoPrivacy(Mechanism):
    name = "none"
    unit = "none (no differential privacy)"
    trusted = "the server, with every device's update"
    server_sees = "each node's mean update, its train loss and its devices' on-device accuracy"
    private = False
    reads = ()
    # Nothing is refused: a harness configuration names this mechanism (local is the default) while it
    # also sets up the arms of the others, and every setting this one does not read, another one does.
    ignores = ()

    def plan(
        self, privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
    ) -> DevicePrivacy:
        return DevicePrivacy(0.0, privacy.max_grad_norm, privacy.delta, 0.0, self.name)
