"""``model.json``, written beside every ``global_model.pt``: the resolved settings of the run that made
it (``federation``: FederationConfig, ``privacy``: the DevicePrivacy every device ran). One reader, so
the device that serves the model and the audit that checks the wire read the same description."""

from __future__ import annotations

import json
from pathlib import Path

from fedrec.common.config import FederationConfig
from fedrec.common.errors import FedrecError
from fedrec.common.files import read_text
from fedrec.common.settings import from_nested

MODEL_INFO = "model.json"


def read_model_config(path: Path) -> FederationConfig:
    text = read_text(path, "the model description written beside global_model.pt")
    try:
        federation = json.loads(text)["federation"]
    except (KeyError, TypeError, ValueError) as exc:
        raise FedrecError(f"{path}: unreadable model description ({exc})") from None
    return from_nested(FederationConfig, federation, f"{path} federation")
