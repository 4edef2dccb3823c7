"""Progress when the output is not a terminal: a line per task when it starts and ends, at most one per
interval between, and a heartbeat while nothing advances (issue 25: silence for minutes in a log file)."""

from __future__ import annotations

import csv
import time

from fedrec_cli import run_fedrec
from synthetic_data import synthetic_log

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


def test_a_command_whose_output_is_a_file_prints_progress_lines(tmp_path):
    log = synthetic_log(n_users=20, n_items=15, per_user=8, seed=4)
    data = tmp_path / "log.csv"
    with data.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user", "item", "timestamp"])
        writer.writerows(zip(log.user_ids[log.users], log.item_ids[log.items], log.timestamps))
    (tmp_path / "small.toml").write_text(
        "central.model = {gmf_dim = 4, mlp_dim = 4, layers = [8]}\ncentral.train = {epochs = 3, batch_size = 32}\n"
    )
    done = run_fedrec("baseline", "--dataset", str(data), "--arms", "centralized", "--config",
                      str(tmp_path / "small.toml"), "--no-retention", "--out", str(tmp_path / "run"))  # fmt: skip
    assert done.code == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("centralized neumf")]
    assert steps[0].startswith("centralized neumf  0/3  00:00:0") and "3/3" in steps[1], done.stderr
