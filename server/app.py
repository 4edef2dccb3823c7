"""The fedrec ServerApp: Flower's own strategies over the Message API (see server/federation.py)."""

from __future__ import annotations

from typing import Any, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.common.run_config import merged
from fedrec.server.federation import RoundCallback, run_federation


def make_server_app(overrides: Mapping[str, Any] | None = None, on_round: RoundCallback | None = None,
                    results: dict | None = None) -> ServerApp:
    """A ServerApp whose run config is the App's run config plus ``overrides`` (the harness's settings)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome = run_federation(grid, merged(context.run_config, overrides or {}), on_round)
        if results is not None:
            results.update(outcome)

    return server_app


app = make_server_app()
