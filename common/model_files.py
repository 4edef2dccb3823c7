"""Model files read back exactly as written: a SHA-256 over a state dict's content, checked on load.

The digest covers each tensor's name, dtype, shape and bytes, so it does not depend on how torch lays
the file out; a flipped byte either breaks the file (refused as unreadable) or changes content (refused
as not matching), never loads as different weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import torch

from fedrec.common.errors import FedrecError


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


def read_torch_file(path: Path, hint: str):
    """``torch.load`` (weights only) with every kind of damage turned into one line naming the file."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: not found") from None
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise ModelFileError(f"{path}: unreadable, truncated or damaged ({reason}); {hint}") from None


def matches(state, expected, header: dict | None = None) -> bool:
    """Whether ``state`` (as loaded, possibly garbage) has the ``expected`` digest."""
    try:
        return isinstance(expected, str) and state_digest(state, header) == expected
    except (TypeError, AttributeError, RuntimeError, ValueError):
        return False
