"""The one CLI, ``fedrec``. Every command exits 0 on success, non-zero with a one-line reason on failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from common.errors import FedrecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Privacy-preserving federated recommender.")
data_app = typer.Typer(no_args_is_help=True, help="Obtain and provision datasets.")
app.add_typer(data_app, name="data")
err = Console(stderr=True)


def parse_list(text: str, cast=str) -> list:
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FedrecError(f"cannot parse {text!r} as a comma-separated list") from None


@data_app.command("fetch")
def data_fetch(
    dataset: str = typer.Argument("ml-100k", help="ml-100k or ml-1m"),
    data_dir: Optional[Path] = typer.Option(None, help="Cache dir (default $FEDREC_DATA_DIR or ~/.cache/fedrec/data)."),
) -> None:
    """Download (or find) a dataset, verify its checksum and cache it."""
    from common.fetch import fetch

    target = fetch(dataset, data_dir)
    err.print(f"{dataset} ready in {target}")


@app.command()
def baseline(
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or a path to a CSV (user,item,timestamp[,rating])."),
    arms: str = typer.Option("random,popularity,ease,centralized", help="Comma-separated arms."),
    out: Path = typer.Option(..., help="Run dir to write."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; the report gives means and 95% intervals."),
    config: Optional[Path] = typer.Option(None, help="TOML config (model and training settings)."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    users: Optional[int] = typer.Option(None, min=3, help="Keep only the first N users (quick runs)."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Centralized arms (random, popularity, EASE, NeuMF) under protocol.md; writes a run dir."""
    from common.config import load_config
    from simulations.arms.registry import central_fitters
    from simulations.experiment import Experiment, run

    cfg = load_config(config)
    fitters = central_fitters(parse_list(arms), cfg, show=not quiet)
    exp = Experiment(dataset=dataset, out=out, fitters=fitters, seeds=parse_list(seeds, int),
                     data_dir=str(data_dir) if data_dir else None, users=users, config=cfg.to_dict(), show=not quiet)
    report = run(exp)
    err.print(f"wrote {out}/report.json and report.md ({report['meta']['wall_s']:.0f} s)")


def main() -> None:
    try:
        app()
    except FedrecError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        sys.exit(130)


if __name__ == "__main__":
    main()
