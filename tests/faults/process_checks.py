"""What the fault tests check of processes: what a PID runs, and that a whole tree has ended."""

from __future__ import annotations

import time
from pathlib import Path

from fedrec.common.processes import alive


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def assert_all_ended(tree: list[int], within: float, who: str) -> None:
    """Every PID of ``tree`` ends within ``within`` seconds; else the survivors, named."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.5)
    left = {p: command_of(p)[:80] for p in tree if alive(p)}
    assert not left, f"left behind by {who}: {left}"
