"""Reading a user-supplied text file so that every failure is one line naming the file."""

from __future__ import annotations

from pathlib import Path

from fedrec.common.errors import DataError


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
