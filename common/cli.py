"""What every `fedrec` command shares: one-line errors, plain progress lines, list options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from fedrec.common.errors import FedrecError

T = TypeVar("T")
err = Console(stderr=True)


def say(line: str) -> None:
    """One plain line on stderr; paths and [brackets] are printed as they are, never as console markup."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def parse_list(text: str, cast: Callable[[str], T] = str) -> list[T]:  # type: ignore[assignment]
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FedrecError(f"cannot parse {text!r} as a comma-separated list") from None


def run(app: typer.Typer) -> None:
    """Run ``app``; a FedrecError becomes ``error: <message>`` on one line and exit code 1."""
    try:
        app()
    except FedrecError as exc:
        say(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
