"""The fedrec ServerApp: Flower's own strategies over the Message API (see server/federation.py), with train
replies summed under SecAgg+ when the run asks for it (server/secure_aggregation.py)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.common.config import FederationConfig
from fedrec.common.flower_logs import single_flower_lines
from fedrec.common.settings import from_flat
from fedrec.server.federation import FederationResult, RoundCallback, run_federation
from fedrec.server.secure_aggregation import secure_grid


def make_server_app(
    config: FederationConfig | None = None,
    on_round: RoundCallback | None = None,
    results: list[FederationResult] | None = None,
) -> ServerApp:
    """A ServerApp for ``config``, or (``flwr run``, ``fedrec server``) for the App's run config."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config or from_flat(FederationConfig, dict(context.run_config), "run config")
        outcome = run_federation(secure_grid(grid, cfg.server), cfg, on_round)
        if results is not None:
            results.append(outcome)

    return server_app


single_flower_lines()
app = make_server_app()
