"""No DP: the ``federated`` arm. Devices train plainly and reply with their loss and accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedrec.common.mechanisms.base import DevicePrivacy, Ignored, Mechanism

if TYPE_CHECKING:
    from fedrec.common.config import DeviceConfig, PrivacyConfig


class NoPrivacy(Mechanism):
    name = "none"
    unit = "none (no differential privacy)"
    trusted = "the server, with every device's update"
    server_sees = "each node's mean update, its train loss and its devices' on-device accuracy"
    private = False
    reads = ()
    ignores = (Ignored("privacy.max_update_norm", "it bounds a device's update only under the user mechanism"),)

    def plan(
        self, privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
    ) -> DevicePrivacy:
        return DevicePrivacy(0.0, privacy.max_grad_norm, privacy.delta, 0.0, self.name)
