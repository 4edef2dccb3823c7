"""A watchdog that ends a command's child processes when the command itself dies, even by SIGKILL.

``Children`` starts one reaper per command and tells it the PID of every child it starts; code that
starts processes it does not name (Ray under Flower's simulation engine) runs inside
``processes.reaped_descendants()``, whose reaper (``--tree``) records every descendant of the command. The reaper
polls: while its parent lives it keeps a record of every descendant of those children (with each
process's start time, so a recycled PID is never signalled); once the parent is gone, or its pipe
closes without the word ``done``, it sends SIGTERM to all of them (Flower shuts down gracefully on
it), waits, and SIGKILLs what is left. A SuperLink's SuperExec and ServerApp, which escape into
sessions of their own, are found because they were recorded while the tree was intact.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 10.0


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: when the process started (None if it is gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            tree.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    return tree


def _record(known: dict[int, str]) -> None:
    """Add every live descendant of the known processes to ``known``."""
    tree, todo = children_by_parent(), list(known)
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in known and (started := start_time(child)) is not None:
                known[child] = started
                todo.append(child)


def _live(known: dict[int, str]) -> list[int]:
    return [pid for pid, started in known.items() if start_time(pid) == started]


def signal_all(pids: list[int], sig: int) -> None:
    """Signal each PID; one that is gone or not ours is skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap(known: dict[int, str]) -> None:
    _record(known)
    signal_all(_live(known), signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and _live(known):
        time.sleep(0.2)
    signal_all(_live(known), signal.SIGKILL)


def _adopt_children(parent: int, known: dict[int, str]) -> None:
    """Tree mode: every direct child of ``parent`` but this reaper counts as started by the command."""
    for child in children_by_parent().get(parent, []):
        if child != os.getpid() and child not in known and (started := start_time(child)) is not None:
            known[child] = started


def watch(parent: int, tree: bool = False) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole foreground group: the parent handles it
    known: dict[int, str] = {}
    buffer = b""
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], POLL_S)
        if ready:
            chunk = os.read(stdin.fileno(), 4096)
            if not chunk:  # the parent's end closed: it exited, normally or not
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line == b"done":
                    return
                if line.isdigit() and (started := start_time(int(line))) is not None:
                    known[int(line)] = started
        if os.getppid() != parent:
            break
        if tree:
            _adopt_children(parent, known)
        _record(known)
    reap(known)


if __name__ == "__main__":
    watch(int(sys.argv[1]), tree="--tree" in sys.argv[2:])
