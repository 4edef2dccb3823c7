"""User-supplied files and output directories: every failure is one line naming the path, found before any work."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fedrec.common.errors import DataError, FedrecError


def read_text(path: Path, missing: str) -> str:
    """The file's UTF-8 text; ``missing`` says what the file is, for the not-found message."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: not found ({missing})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def writable_dir(path: str | Path, option: str) -> Path:
    """Create ``path`` if needed and prove that a file can be written in it (``option``: the flag that named it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FedrecError(f"{path}: exists and is not a directory ({option})")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise FedrecError(f"{path}: cannot write there ({exc.strerror or exc}; {option})") from None
    return path
