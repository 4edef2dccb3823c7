"""The harness's commands: `fedrec data`, `baseline`, `simulate`, `retention`, `audit`.

Each command imports what it runs inside its body (marked "lazy: CLI start-up"), so that `fedrec --help` and
every other command load no torch, flwr or Ray they do not use; none of these imports hides a cycle
(tests/test_import_cycles.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from fedrec.common.cli import err, exit_now, parse_list, say
from fedrec.simulations.arms.table import (
    CENTRAL_ARMS,
    DEFAULT_ARMS,
    DEFAULT_CENTRAL_ARMS,
    DEFAULT_PRIVATE_ARM,
    budget_keys,
    choices,
    dropout_keys,
    model_keys,
    rounds_keys,
)

if TYPE_CHECKING:
    from fedrec.simulations.api import Results

app = typer.Typer()
data_app = typer.Typer(no_args_is_help=True, help="Obtain and provision datasets.")
app.add_typer(data_app, name="data")
config_app = typer.Typer(no_args_is_help=True, help="The settings of every command, in the TOML format of --config.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    config: Optional[Path] = typer.Argument(None, help="A TOML config to check and resolve (default: none)."),
) -> None:
    """Every setting and its value (defaults, then FILE), as a complete TOML config."""
    import tomli_w

    # lazy: CLI start-up
    from fedrec.common.config import load_config

    print(tomli_w.dumps(load_config(config).to_dict()), end="")


@data_app.command("fetch")
def data_fetch(
    dataset: str = typer.Argument("ml-100k", help="ml-100k or ml-1m"),
    data_dir: Optional[Path] = typer.Option(None, help="Cache dir (default $FEDREC_DATA_DIR or ~/.cache/fedrec/data)."),
) -> None:
    """Download (or find) a dataset, verify its checksum and cache it."""
    # lazy: CLI start-up
    from fedrec.common.fetch import fetch

    target = fetch(dataset, data_dir)
    err.print(f"{dataset} ready in {target}")


@data_app.command("provision")
def data_provision(
    out: Path = typer.Option(..., help="Dir to write: manifest.json and stores/<device_id>.db."),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or a path to a CSV (user,item,timestamp\\[,rating])."),
    users: Optional[int] = typer.Option(None, min=1, help="Keep only the first N users."),
    seed: int = typer.Option(0, help="Split seed (tie-break of equal timestamps, docs/protocol.md)."),
    key_file: Optional[Path] = typer.Option(
        None, help="Master key file; created (mode 0600) if missing. Default: OUT/master.key (simulation only)."
    ),
    passphrase_env: Optional[str] = typer.Option(None, help="Environment variable holding a master passphrase."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    workers: int = typer.Option(2, min=1, help="Processes writing stores."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Split per user (docs/protocol.md) and write one encrypted store per device plus a manifest (no content)."""
    # lazy: CLI start-up
    from fedrec.common.datasets import load_dataset
    from fedrec.common.split import temporal_split
    from fedrec.simulations.provision import master_secret, provision

    data = load_dataset(dataset, str(data_dir) if data_dir else None, users)  # bad data fails before a key is made
    master, recipe, recorded = master_secret(out, key_file, passphrase_env)
    manifest = provision(
        data, temporal_split(data, seed), out, master, recipe=recipe, key_file=recorded, workers=workers, show=not quiet
    )
    err.print(f"wrote {data.n_users} device stores and {manifest}")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="CSV to write (user,item,timestamp,rating), the generic dataset format."),
    users: int = typer.Option(943, help="Users (devices) in the population."),
    items: int = typer.Option(1682, help="Items in the catalogue."),
    seed: int = typer.Option(0, help="Generator seed: the same seed and sizes give the same file."),
    source: str = typer.Option("ml-100k", help="Dataset the generator is fitted to (with ratings and timestamps)."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
) -> None:
    """Write a synthetic population fitted to a dataset's statistics (docs/synth.md)."""
    # lazy: CLI start-up
    from fedrec.simulations.synth.run import synth_csv

    say(synth_csv(out, users, items, seed, source, str(data_dir) if data_dir else None))


@data_app.command("export-split")
def data_export_split(
    run_dir: Path = typer.Argument(..., help="A finished run dir (fedrec baseline or simulate)."),
    format: str = typer.Option("recbole", "--format", help="recbole: RecBole's atomic files and a config for them."),
    out: Optional[Path] = typer.Option(None, help="Where to write (default RUN_DIR/export/FORMAT)."),
    dataset: Optional[str] = typer.Option(
        None, help="Dataset to reload (default: meta.dataset of the run; give the CSV path for runs on a CSV file)."
    ),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
) -> None:
    """The run's exact split (its primary seed) for another toolkit, checked against the run's held-out pairs."""
    # lazy: CLI start-up
    from fedrec.simulations.export_split import export_split

    done = export_split(run_dir, format, out, dataset, str(data_dir) if data_dir else None)
    counts = ", ".join(f"{stage} {n}" for stage, n in done.rows.items())
    say(f"wrote {done.directory} ({counts} interactions): {', '.join(f.name for f in done.files)}")


def run_to_the_end(out: Path, work: Callable[[], Results]) -> Results:
    """``work()``, the run into ``out``; on Ctrl-C or SIGTERM one line names the run dir it leaves
    incomplete, and the command ends at once."""
    # lazy: CLI start-up
    from fedrec.common.errors import Interrupted
    from fedrec.simulations.rundir import INCOMPLETE

    try:
        return work()
    except Interrupted as exc:
        if (out / INCOMPLETE).exists():
            say(f"interrupted: {out} is incomplete (its INCOMPLETE file says so); run again into a fresh --out")
        elif (out / "report.json").exists():  # only the retention stage, which reads a finished run, was cut short
            say(f"interrupted: {out} holds every arm but no retention; `fedrec retention {out}` adds it")
        else:
            say(f"interrupted before any arm was fitted; nothing was written to {out}")
        # No waiting, no exit handlers: the processes the run started (Ray, the background fit) are ended by
        # their reapers once this process is gone (processes.reaped_descendants).
        exit_now(exc.code, at_once=True)


MODEL_OPTION = typer.Option(
    None,
    help=f"A model of one's own, as module:Class or file.py:Class (docs/models.md), for {', '.join(model_keys())}.",
)


@app.command()
def baseline(
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or a path to a CSV (user,item,timestamp\\[,rating])."),
    arms: str = typer.Option(
        ",".join(DEFAULT_CENTRAL_ARMS),
        help=f"Comma-separated arms, any of {choices(CENTRAL_ARMS)}.",
    ),
    out: Path = typer.Option(..., help="Run dir to write."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; the report gives means and 95% intervals."),
    config: Optional[Path] = typer.Option(None, help="TOML config (model and training settings)."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    users: Optional[int] = typer.Option(None, min=3, help="Keep only the first N users (quick runs)."),
    retention: bool = typer.Option(True, help="Run the retention simulator after the accuracy arms."),
    quiet: bool = typer.Option(False, help="No progress output."),
    model: Optional[str] = MODEL_OPTION,
) -> None:
    """Centralized arms (random, popularity, EASE, NeuMF) under docs/protocol.md; writes a run dir."""
    # lazy: CLI start-up
    from fedrec.simulations import api

    results = run_to_the_end(
        out,
        lambda: api.baseline(
            out,
            dataset,
            arms=parse_list(arms),
            seeds=parse_list(seeds, int),
            users=users,
            config=config,
            data_dir=str(data_dir) if data_dir else None,
            retention=retention,
            show=not quiet,
            model=model,
        ),
    )
    err.print(f"wrote {out}/report.json and report.md ({results.report['meta']['wall_s']:.0f} s)")


@app.command()
def simulate(
    out: Path = typer.Option(..., help="Run dir to write."),
    config: Optional[Path] = typer.Option(
        None, help="TOML config (tables \\[central.*], \\[federation.*], \\[federated_ddp.*], \\[simulation])."
    ),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or a path to a CSV."),
    users: Optional[int] = typer.Option(None, min=3, help="Keep only the first N users (one device each)."),
    rounds: Optional[int] = typer.Option(
        None, help=f"Rounds of every federated arm (sets {', '.join(rounds_keys())})."
    ),
    dropout: Optional[float] = typer.Option(
        None,
        min=0.0,
        max=0.99,
        help="Share of each simulated node's devices that miss every round, chosen afresh each round "
        f"(sets {', '.join(dropout_keys())}).",
    ),
    epsilon: Optional[float] = typer.Option(
        None,
        help=f"Budget of every private arm, in its unit (docs/simulate.md, Arms); sets the noise "
        f"(sets {', '.join(budget_keys('epsilon'))}).",
    ),
    delta: Optional[float] = typer.Option(
        None, help=f"DP delta of every private arm (default 1e-5; sets {', '.join(budget_keys('delta'))})."
    ),
    arms: str = typer.Option(
        ",".join(DEFAULT_ARMS),
        help=f"Comma-separated arms, any of {choices()}.",
    ),
    sweep: str = typer.Option(
        "",
        help=f"Extra budgets, e.g. 1,2,4, for every private arm of the run ({DEFAULT_PRIVATE_ARM} if none): "
        "accuracy-vs-epsilon plot.",
    ),
    seeds: str = typer.Option("0", help="Comma-separated seeds."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    ray_address: Optional[str] = typer.Option(
        None, help="An existing Ray cluster's head host:port, or auto (overrides simulation.ray_address)."
    ),
    retention: bool = typer.Option(True, help="Run the retention simulator after the accuracy arms."),
    quiet: bool = typer.Option(False, help="No progress output."),
    model: Optional[str] = MODEL_OPTION,
) -> None:
    """Federated arms through Flower's simulation engine beside the centralized arms; writes a run dir."""
    # lazy: CLI start-up
    from fedrec.simulations import api

    results = run_to_the_end(
        out,
        lambda: api.simulate(
            out,
            dataset,
            arms=parse_list(arms),
            seeds=parse_list(seeds, int),
            users=users,
            config=config,
            rounds=rounds,
            dropout=dropout,
            epsilon=epsilon,
            delta=delta,
            sweep=parse_list(sweep, float),
            ray_address=ray_address,
            data_dir=str(data_dir) if data_dir else None,
            retention=retention,
            show=not quiet,
            model=model,
        ),
    )
    err.print(f"wrote {out}/report.json and report.md ({results.report['meta']['wall_s']:.0f} s)")


@app.command()
def retention(
    run_dir: Path = typer.Argument(..., help="A finished run dir (fedrec baseline or simulate) with scores/<arm>.npy."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma-separated simulation seeds (common random numbers per seed)."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    dataset: Optional[str] = typer.Option(
        None, help="Dataset to reload (default: meta.dataset of the run; give the CSV path for runs on a CSV file)."
    ),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Simulated long-term retention of every arm (docs/protocol.md); updates report.json, report.md and plots."""
    # lazy: CLI start-up
    from fedrec.simulations.retention.cli_entry import retention_for_run_dir

    print(
        retention_for_run_dir(run_dir, parse_list(seeds, int), str(data_dir) if data_dir else None, not quiet, dataset)
    )
    err.print(f"updated {run_dir}/report.json, report.md and retention_*.png")


@app.command()
def audit(
    run_dir: Path = typer.Argument(..., help="A finished run dir (fedrec simulate or baseline)."),
    stores: Optional[Path] = typer.Option(None, help="Device stores to scan (default RUN_DIR/stores)."),
    dataset: Optional[str] = typer.Option(
        None, help="Dataset to reload (default: meta.dataset of the run; give the CSV path for runs on a CSV file)."
    ),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    skip: str = typer.Option("", help="Comma-separated sections to skip: accounting,wire,at_rest,mia,canary."),
    shadows: int = typer.Option(
        4, min=0, help="LiRA shadow trainings of the centralized arm (even; 0 = loss attack only)."
    ),
    shadow_epochs: Optional[int] = typer.Option(None, min=1, help="Epochs per shadow (default: the arm's best epoch)."),
    canaries: int = typer.Option(20000, min=2, help="Canary interactions m, each included with probability 1/2."),
    canary_guesses: int = typer.Option(9500, min=1, help="Guesses per side (k 'in' + k 'out'), fixed in advance."),
    canary_users: int = typer.Option(200, min=3, help="Users (devices) in the canary retraining (the run's first N)."),
    canary_rounds: Optional[int] = typer.Option(
        None, min=1, help="Rounds of the canary retraining (default: the run's)."
    ),
    canary_trainer: str = typer.Option(
        "whitebox",
        help="whitebox (the device code, scored on what the server receives), harness (Flower simulation, "
        "scored on the final model) or inprocess (harness's device code in one process).",
    ),
    canary_contrast: bool = typer.Option(
        True, help="Also audit a control: whitebox, the arm at epsilon 1000; otherwise the arm without DP."
    ),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Privacy audit: epsilon spent (re-checked), what crosses the wire, what rests on devices, what attacks learn."""
    import json

    # lazy: CLI start-up
    from fedrec.simulations.audit.run import AuditOptions, headline
    from fedrec.simulations.audit.run import audit as run_audit

    opts = AuditOptions(
        stores=stores,
        data=dataset,
        data_dir=str(data_dir) if data_dir else None,
        skip=tuple(parse_list(skip)),
        shadows=shadows,
        shadow_epochs=shadow_epochs,
        canaries=canaries,
        canary_guesses=canary_guesses,
        canary_users=canary_users,
        canary_rounds=canary_rounds,
        canary_trainer=canary_trainer,
        canary_contrast=canary_contrast,
        show=not quiet,
    )
    result = run_audit(run_dir, opts)
    print(json.dumps(headline(result), indent=1))
    err.print(f"wrote {run_dir}/audit.json and audit.md")
