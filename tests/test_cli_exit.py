"""A failing command ends with its one-line error, even when a library thread that cannot be stopped is
left behind (as Flower's ServerApp thread is when its simulation runtime crashes)."""

from __future__ import annotations

import subprocess
import sys

from fedrec.simulations.arms.federated import root_cause

STUCK_THREAD = """
import threading
import typer
from fedrec.common.cli import run
from fedrec.common.errors import FedrecError

app = typer.Typer()

@app.command()
def go() -> None:
    threading.Thread(target=threading.Event().wait).start()  # non-daemon, never set
    raise FedrecError("the runtime crashed")

run(app)
"""


def test_an_error_with_a_stuck_thread_left_exits_with_one_line():
    done = subprocess.run([sys.executable, "-c", STUCK_THREAD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: the runtime crashed"


def test_root_cause_names_the_innermost_failure():
    try:
        try:
            try:
                raise Exception("The current node timed out during startup.\nmore detail")
            except Exception as ray_error:
                raise RuntimeError("Simulation Runtime crashed.") from ray_error
        except RuntimeError as flower_error:
            raise RuntimeError("An error was encountered. Ending simulation.") from flower_error
    except RuntimeError as exc:
        assert root_cause(exc) == "The current node timed out during startup."
    assert root_cause(ValueError()) == "ValueError"
