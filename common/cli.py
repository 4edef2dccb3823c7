"""What every `fedrec` command shares: one-line errors, plain progress lines, list options."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer
from rich.console import Console

from fedrec.common.errors import FedrecError, Interrupted
from fedrec.common.processes import interrupt_on_signals

T = TypeVar("T")
err = Console(stderr=True)
# What pyproject's `harness` extra brings that a device install lacks (Ray, through flwr[simulation]; plots;
# the audit's accountants): a command that imports one says which install it needs.
HARNESS_MODULES = ("ray", "matplotlib", "dp_accounting")


def say(line: str) -> None:
    """One plain line on stderr; paths and [brackets] are printed as they are, never as console markup."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def parse_list(text: str, cast: Callable[[str], T] = str) -> list[T]:  # type: ignore[assignment]
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FedrecError(f"cannot parse {text!r} as a comma-separated list") from None


def exit_now(code: int, at_once: bool = False) -> NoReturn:
    """Exit with ``code`` once the error is printed. A library thread that cannot be told to stop (Flower's
    ServerApp thread, still waiting for replies after its simulation runtime crashed) would keep a plain
    ``sys.exit`` waiting for it forever; when such a thread is left, the process ends without it.
    ``at_once`` also skips exit handlers (an interrupt: Ray's would try its dead processes for seconds)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others or at_once:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run(app: typer.Typer) -> None:
    """Run ``app``; a FedrecError becomes ``error: <message>`` on one line and exit code 1, Ctrl-C or
    SIGTERM ``interrupted`` and 130 or 143 (a command that leaves something half-done says what in its
    own line first)."""
    try:
        with interrupt_on_signals():
            app()
    except FedrecError as exc:
        say(f"error: {exc}")
        exit_now(1)
    except Interrupted as exc:
        say("interrupted")
        exit_now(exc.code, at_once=True)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in HARNESS_MODULES:
            raise
        say(f"error: this command needs {exc.name}, which a device install leaves out: pip install 'fedrec[harness]'")
        exit_now(1)
