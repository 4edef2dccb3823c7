"""The Flower App that `flwr run` submits: its components live in the installed `fedrec` package, its
run config is ``flatten(FederationConfig())``. `fedrec server` writes this App into its state directory,
so an installed wheel needs no source checkout; the repository's own pyproject carries the same
sections (a test keeps them equal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from fedrec.common.config import FederationConfig
from fedrec.common.settings import flatten

PUBLISHER = "fedrec"
COMPONENTS = {"serverapp": "fedrec.server.app:app", "clientapp": "fedrec.client.app:app"}


def app_section(config: FederationConfig = FederationConfig()) -> dict[str, Any]:
    """``[tool.flwr.app]``: publisher, components and the run config's defaults."""
    return {"publisher": PUBLISHER, "components": dict(COMPONENTS), "config": flatten(config)}


def write_app(directory: Path, config: FederationConfig) -> Path:
    """A minimal Flower App directory whose run config defaults are ``config``."""
    directory.mkdir(parents=True, exist_ok=True)
    project = {
        "project": {"name": "fedrec-app", "version": "1.0.0", "dependencies": []},
        "tool": {"flwr": {"app": app_section(config)}},
    }
    (directory / "pyproject.toml").write_text(tomli_w.dumps(project))
    return directory


def run_config_toml(config: FederationConfig = FederationConfig()) -> str:
    """The body of pyproject's ``[tool.flwr.app.config]``: one bare dotted key per line (TOML reads it as
    nested tables, which Flower flattens back to the same dotted key)."""
    return "".join(f"{key} = {tomli_w.dumps({'v': value})[4:]}" for key, value in flatten(config).items())


if __name__ == "__main__":  # python -m fedrec.server.flower_app: the section to paste into pyproject.toml
    print(run_config_toml(), end="")
