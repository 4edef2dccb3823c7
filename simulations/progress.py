"""One progress style for all long work: rich's bar in a terminal, plain timed lines when the output goes to a
file or a pipe (rich draws a bar there only once, at the end), silenced in tests and on request. A fit in
the background process hands its lines to the harness (``forward_to``), which prints them above its own
bar: the background process does not own the terminal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeAlias

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from fedrec.common.cli import err, say

LINE_EVERY_S = 10.0  # at most one line per task this often while it advances
HEARTBEAT_S = 30.0  # a line at least this often, also while nothing advances (Ray starting, a long epoch)
FORWARDED_EVERY_S = 30.0  # a background fit's lines come between the foreground's: fewer of them

_forward: Callable[[str], None] | None = None  # set in the background process: where its lines go


def forward_to(emit: Callable[[str], None] | None) -> None:
    """Send this process's progress lines to ``emit`` instead of drawing them (None: draw them again)."""
    global _forward
    _forward = emit


class _Silent:
    def add_task(self, *args: object, **kwargs: object) -> TaskID:
        return TaskID(0)

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def advance(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    said: float = 0.0  # when its last line was printed

    def line(self, now: float) -> str:
        count = f"{self.completed:g}/{self.total:g}" if self.total is not None else f"{self.completed:g}"
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - self.started))
        return f"{self.description}  {count}  {elapsed}"


class Lines:
    """rich's Progress API (add_task, update, advance) as one line per step, at most every
    ``LINE_EVERY_S`` per task and always on its last step; a heartbeat thread repeats the line of a task
    that has printed nothing for ``HEARTBEAT_S``."""

    def __init__(
        self, line_every: float = LINE_EVERY_S, heartbeat: float = HEARTBEAT_S, emit: Callable[[str], None] = say
    ):
        self.line_every, self.heartbeat, self.emit = line_every, heartbeat, emit
        self.tasks: dict[TaskID, _Task] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._beats, name="progress-heartbeat", daemon=True)
        self._beat.start()

    def add_task(self, description: str, total: float | None = None, **kwargs: object) -> TaskID:
        with self._lock:
            task_id = TaskID(len(self.tasks))
            self.tasks[task_id] = _Task(description, total)
            self._say(self.tasks[task_id], force=True)
        return task_id

    def update(
        self,
        task_id: TaskID,
        *,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        total: float | None = None,
        **kwargs: object,
    ) -> None:
        with self._lock:
            task = self.tasks[task_id]
            if description is not None:
                task.description = description
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = completed
            if advance is not None:
                task.completed += advance
            self._say(task, force=task.total is not None and task.completed >= task.total)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _say(self, task: _Task, force: bool) -> None:
        now = time.monotonic()
        if force or now - task.said >= self.line_every:
            self.emit(task.line(now))
            task.said = now

    def _beats(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat)):
            with self._lock:
                now = time.monotonic()
                for task in self.tasks.values():
                    unfinished = task.total is None or task.completed < task.total
                    if unfinished and now - task.said >= self.heartbeat:
                        self.emit(task.line(now))
                        task.said = now

    def close(self) -> None:
        self._stop.set()
        self._beat.join()


Bar: TypeAlias = "Progress | Lines | _Silent"  # what `progress` yields


@contextmanager
def progress(show: bool = True) -> Iterator[Bar]:
    if not show:
        yield _Silent()
        return
    if _forward is not None or not err.is_terminal:
        lines = Lines() if _forward is None else Lines(FORWARDED_EVERY_S, FORWARDED_EVERY_S, _forward)
        try:
            yield lines
        finally:
            lines.close()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        yield bar
