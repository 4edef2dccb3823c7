"""The `fedrec` command: each package's commands under one name (devices, server, harness)."""

from __future__ import annotations

import typer

from fedrec.client.cli import app as device_commands
from fedrec.common.cli import run
from fedrec.server.cli import app as server_commands
from fedrec.simulations.cli import app as harness_commands

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Privacy-preserving federated recommender.",
)
for commands in (harness_commands, server_commands, device_commands):
    app.add_typer(commands)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
