"""``model.json``, written beside every ``global_model.pt``: the resolved settings of the run that made
it (``federation``: FederationConfig, ``privacy``: the DevicePrivacy every device ran). One reader, so
the device that serves the model and the audit that checks the wire read the same description."""

from __future__ import annotations

import json
from pathlib import Path

from fedrec.common.config import FederationConfig
from fedrec.common.errors import FedrecError
from fedrec.common.files import read_text
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.settings import from_nested

MODEL_INFO = "model.json"


def _section(path: Path, name: str) -> dict:
    text = read_text(path, "the model description written beside global_model.pt")
    try:
        section = json.loads(text)[name]
    except (KeyError, TypeError, ValueError) as exc:
        raise FedrecError(f"{path}: unreadable model description ({type(exc).__name__}: {exc})") from None
    if not isinstance(section, dict):
        raise FedrecError(f"{path}: {name} is not a table")
    return section


def read_model_config(path: Path) -> FederationConfig:
    return from_nested(FederationConfig, _section(path, "federation"), f"{path} federation")


def read_model_privacy(path: Path) -> DevicePrivacy:
    return from_nested(DevicePrivacy, _section(path, "privacy"), f"{path} privacy")
