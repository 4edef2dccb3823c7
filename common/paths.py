"""Output directories checked before any work, so a read-only target fails in one line naming it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fedrec.common.errors import FedrecError


def writable_dir(path: str | Path, option: str) -> Path:
    """Create ``path`` if needed and prove that a file can be written in it (``option``: the flag that named it)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise FedrecError(f"{path}: cannot write there ({exc.strerror or exc}; {option})") from None
    return path
