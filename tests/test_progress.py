"""Progress when the output is not a terminal: a line per task when it starts and ends, at most one per
interval between, and a heartbeat while nothing advances (issue 25: silence for minutes in a log file)."""

from __future__ import annotations

import time

from fedrec.simulations import progress as progress_module
from fedrec.simulations.progress import Lines, progress


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_lines_at_start_end_and_at_most_once_per_interval(capsys):
    bar = Lines(line_every=3600, heartbeat=3600)
    try:
        task = bar.add_task("fit", total=4)
        for epoch in range(4):
            bar.update(task, advance=1, description=f"fit  loss {epoch}")
    finally:
        bar.close()
    lines = _lines(capsys)
    assert [line.rsplit("  ", 1)[0] for line in lines] == ["fit  0/4", "fit  loss 3  4/4"]


def test_a_heartbeat_while_nothing_advances(capsys):
    bar = Lines(line_every=3600, heartbeat=0.2)
    try:
        task = bar.add_task("starting", total=2)
        time.sleep(1.5)
        bar.update(task, completed=2)
        time.sleep(0.5)  # a finished task has no heartbeat
    finally:
        bar.close()
    lines = _lines(capsys)
    assert lines[0].startswith("starting  0/2") and lines[-1].startswith("starting  2/2")
    beats = lines[1:-1]
    assert 3 <= len(beats) <= 8 and all(b.startswith("starting  0/2") for b in beats), lines


def test_not_a_terminal_means_lines(monkeypatch, capsys):
    monkeypatch.setattr(progress_module.err, "_force_terminal", False)
    with progress(True) as bar:
        assert isinstance(bar, Lines)
