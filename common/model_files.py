"""Model files read back exactly as written: a SHA-256 over a state dict's content, checked on load, and
``model.json``, written beside every ``global_model.pt``: the resolved settings of the run that made it
(``federation``: FederationConfig, ``privacy``: the DevicePrivacy every device ran) and the model's digest.
One reader, so the device that serves the model and the audit that checks the wire read the same file.

The digest covers each tensor's name, dtype, shape and bytes, so it does not depend on how torch lays
the file out; a flipped byte either breaks the file (refused as unreadable) or changes content (refused
as not matching), never loads as different weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedrec.common.config import FederationConfig
from fedrec.common.errors import FedrecError
from fedrec.common.files import read_text
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.settings import from_nested

FINAL_MODEL = "global_model.pt"
MODEL_INFO = "model.json"
DIGEST = "sha256"


class ModelFileError(FedrecError):
    """A checkpoint or model file that cannot be read back exactly as it was written."""


def state_digest(state: Mapping[str, torch.Tensor], header: dict | None = None) -> str:
    """SHA-256 over ``header`` (as JSON) and every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(json.dumps(header or {}, sort_keys=True, default=str).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_torch_file(path: Path, hint: str) -> Any:
    """``torch.load`` (weights only) with every kind of damage turned into one line naming the file."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: not found") from None
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise ModelFileError(f"{path}: unreadable, truncated or damaged ({reason}); {hint}") from None


def matches(state: Any, expected: object, header: dict | None = None) -> bool:
    """Whether ``state`` (as loaded, possibly garbage) has the ``expected`` digest."""
    try:
        return isinstance(expected, str) and state_digest(state, header) == expected
    except (TypeError, AttributeError, RuntimeError, ValueError):
        return False


@dataclass(frozen=True)
class ModelInfo:
    federation: FederationConfig
    privacy: DevicePrivacy
    digest: str | None


def read_model_info(path: Path) -> ModelInfo:
    """``model.json``, every part checked against its settings class."""
    try:
        raw = json.loads(read_text(path, "the model description written beside global_model.pt"))
        federation, privacy = raw["federation"], raw["privacy"]
    except (KeyError, TypeError, ValueError) as exc:
        raise FedrecError(f"{path}: unreadable model description ({type(exc).__name__}: {exc})") from None
    return ModelInfo(
        from_nested(FederationConfig, federation, f"{path} federation"),
        from_nested(DevicePrivacy, privacy, f"{path} privacy"),
        raw.get(DIGEST),
    )


def load_global_model(path: Path) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """``global_model.pt`` verified against the digest in the ``model.json`` beside it."""
    if not path.is_file():
        raise ModelFileError(f"{path}: global model not found")
    info = read_model_info(path.with_name(MODEL_INFO))
    state: Any = read_torch_file(path, "copy it again from the server's out dir")
    if not matches(state, info.digest):
        raise ModelFileError(
            f"{path}: content does not match the SHA-256 digest in {path.with_name(MODEL_INFO)} "
            "(altered, damaged, or not the model that model.json describes)"
        )
    return state, info
