"""Arms fitted in a second process while the federated arms run in this one.

A federated arm keeps both cores about 90% busy, while a centralized fit runs on one torch thread: run one
after the other, the default `fedrec simulate` leaves a core idle for the whole centralized fit. A
background fit is the same fitter on the same split and seed in a spawned process, so its scores are
the ones a foreground fit gives (tests/test_background.py). The process starts inside
``reaped_descendants``: it ends with the harness, even after a SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from contextlib import ExitStack
from multiprocessing.pool import AsyncResult, Pool
from multiprocessing.queues import SimpleQueue
from types import TracebackType

from fedrec.common.cli import say
from fedrec.common.processes import reaped_descendants
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult, Fitter
from fedrec.simulations.progress import forward_to


def _start_worker(lines: SimpleQueue) -> None:
    # Ctrl-C reaches the whole foreground group; the harness handles it (its reaper ends this process)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward_to(lines.put)


def _relay(lines: SimpleQueue) -> None:
    """The background fit's progress lines, printed by the harness (above its bar in a terminal)."""
    while (line := lines.get()) is not None:
        say(line)


def timed_fit(fitter: Fitter, split: Split, seed: int) -> tuple[ArmResult, float]:
    t0 = time.perf_counter()
    result = fitter(split, seed)
    return result, time.perf_counter() - t0


class BackgroundFits:
    """One worker process, started with the first fit; fits run in the order they were submitted. Leaving
    the block normally waits for them; leaving it on an error ends the worker at once."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._pool: Pool | None = None
        self._lines: SimpleQueue | None = None
        self._relay: threading.Thread | None = None

    def submit(self, fitter: Fitter, split: Split, seed: int) -> AsyncResult:
        if self._pool is None:
            self._stack.enter_context(reaped_descendants())
            context = multiprocessing.get_context("spawn")
            self._lines = context.SimpleQueue()
            self._relay = threading.Thread(target=_relay, args=(self._lines,), name="background-progress", daemon=True)
            self._relay.start()
            self._pool = context.Pool(1, initializer=_start_worker, initargs=(self._lines,))
        return self._pool.apply_async(timed_fit, (fitter, split, seed))

    def __enter__(self) -> BackgroundFits:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            if exc_type is None:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()
        if self._lines is not None and self._relay is not None:
            self._lines.put(None)
            self._relay.join(timeout=5)
        self._stack.close()
