"""How a model of one's own is named in the settings: by where its class is (``package.module:Class`` or
``path/to/file.py:Class``). No torch here: a device checks a name against its owner's list before it loads
any training code."""

from __future__ import annotations

from pathlib import Path


def is_model_path(kind: str) -> bool:
    """``kind`` names a class by where it is, not a built-in kind."""
    module, _, name = kind.rpartition(":")
    return bool(module) and name.isidentifier()


def canonical(kind: str) -> str:
    """The same name for the same class: a file path made absolute (against the working directory)."""
    where, colon, name = kind.rpartition(":")
    return f"{Path(where).expanduser().resolve()}{colon}{name}" if where.endswith(".py") else kind
