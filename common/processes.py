"""Child processes that never outlive their parent: each in its own process group, ended by PID.

Flower's deployment commands (``flower-superlink``, ``flower-supernode``, ``flwr``) start helpers of
their own; the SuperLink even starts its SuperExec in a new session. So on shutdown every child's
whole process group gets SIGTERM first (Flower shuts down gracefully on it), then SIGKILL after a
grace period, and any descendant that escaped into another session is found by walking ``/proc``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

from fedrec.common.errors import FedrecError, Interrupted
from fedrec.common.reaper import children_by_parent, signal_all, start_time

T = TypeVar("T")


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on (or holds) ``host:port``: binding it fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block; a second holder is refused in one line."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise FedrecError(f"{lock_file.parent}: another {what} (pid {holder}) is using it; stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind port 0), so parallel runs do not clash."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """Environment for Flower's commands: found by name, no telemetry, no package installs at run time."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # flower-superexec is started by name
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # the app is installed already
    env["PYTHONUNBUFFERED"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    tree, found, todo = children_by_parent(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _start_reaper(tree: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "fedrec.common.reaper", str(os.getpid()), *(["--tree"] if tree else [])]
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _release(reaper: subprocess.Popen, grace: float) -> None:
    """The command ends normally: the reaper exits without touching anything."""
    if reaper.stdin is not None:
        try:
            reaper.stdin.write(b"done\n")
            reaper.stdin.close()
        except BrokenPipeError:
            pass
    reaper.wait(timeout=grace)


@contextmanager
def reaped_descendants(grace: float = 10.0) -> Iterator[None]:
    """Every process started inside the block (by us or by a library) ends if this process dies."""
    reaper = _start_reaper(tree=True)
    try:
        yield
    except Interrupted:
        # Left watching: it ends the block's processes once this process has exited. Ending them first
        # would race Ray's core worker, which exits this process (code 1) as soon as its raylet dies.
        raise
    except BaseException:
        _release(reaper, grace)
        raise
    _release(reaper, grace)


class Children:
    """The processes one command started; ``stop()`` ends all of them and is safe to call twice. Should
    the command die without stopping them (SIGKILL, a crash), its reaper (``fedrec.common.reaper``)
    ends them."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self._reaper: subprocess.Popen | None = None

    def _watch(self, pid: int) -> None:
        if self._reaper is None or self._reaper.poll() is not None:
            self._reaper = _start_reaper(tree=False)
        assert self._reaper.stdin is not None
        self._reaper.stdin.write(f"{pid}\n".encode())
        self._reaper.stdin.flush()

    def start(
        self, name: str, argv: list[str], log: Path | None = None, capture: bool = False, cwd: Path | None = None
    ) -> subprocess.Popen:
        """Start ``argv`` in a new session; output to ``log``, or a pipe when ``capture``."""
        out: IO | int | None
        if capture:
            out = subprocess.PIPE
        elif log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")  # noqa: SIM115 (closed with the process)
        else:
            out = None
        try:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                text=capture,
                bufsize=1 if capture else -1,
            )
        except FileNotFoundError:
            raise FedrecError(f"{argv[0]}: command not found (is flwr installed in this environment?)") from None
        finally:
            if log is not None and not capture and out is not None and not isinstance(out, int):
                out.close()
        self.procs[name] = proc
        self._watch(proc.pid)
        return proc

    def stop_one(self, name: str, grace: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            _terminate(proc, grace)

    def stop(self, grace: float = 10.0) -> None:
        for name in reversed(list(self.procs)):
            self.stop_one(name, grace)
        if self._reaper is not None:
            _release(self._reaper, grace)
            self._reaper = None


def _terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group, wait, then SIGKILL the group and any escaped descendants."""
    if proc.poll() is None:
        escaped = descendants(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        escaped += descendants(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=grace)
        signal_all([p for p in escaped if alive(p)], signal.SIGTERM)  # helpers in sessions of their own
        deadline = time.monotonic() + min(grace, 3.0)
        while time.monotonic() < deadline and any(alive(p) for p in escaped):
            time.sleep(0.1)
        signal_all([p for p in escaped if alive(p)], signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()


def interruptible(target: Callable[[], T], name: str) -> T:
    """``target()`` in a daemon thread while this (the main) thread waits for it, so that Ctrl-C and SIGTERM
    reach fedrec as ``Interrupted``: a library that takes the signals over (Ray's core worker installs a
    SIGTERM handler in C that aborts the process) would swallow them, and Flower's simulation runtime
    blocks its caller until every round is done. Both are taken back every quarter second while
    ``target`` runs."""
    if threading.current_thread() is not threading.main_thread():
        return target()
    outcome: dict[str, object] = {}
    done = threading.Event()

    def body() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as it is
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=body, name=name, daemon=True).start()
    with interrupt_on_signals():
        while not done.wait(0.25):
            for signum in INTERRUPTS:
                signal.signal(signum, raise_interrupted)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def alive(pid: int) -> bool:
    """Running (not a zombie awaiting its parent)."""
    return start_time(pid) is not None


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise ``Interrupted`` in the main thread inside the block, so both share one
    clean-up path (elsewhere the handlers are left as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, raise_interrupted) for signum in INTERRUPTS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.5,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll ``predicate`` until true; fail with a message naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if not alive():
            raise FedrecError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise FedrecError(f"{what}: timed out after {timeout:.0f} s")
        time.sleep(interval)
