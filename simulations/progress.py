"""One progress style for all long work (rich), silenced in tests and non-interactive logs on request."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeAlias

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class _Silent:
    def add_task(self, *args: object, **kwargs: object) -> TaskID:
        return TaskID(0)

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def advance(self, *args: object, **kwargs: object) -> None:
        pass


Bar: TypeAlias = "Progress | _Silent"  # what `progress` yields


@contextmanager
def progress(show: bool = True) -> Iterator[Bar]:
    if not show:
        yield _Silent()
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    ) as bar:
        yield bar
