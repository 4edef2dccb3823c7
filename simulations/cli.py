"""The one CLI, ``fedrec``. Every command exits 0 on success, non-zero with a one-line reason on failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedrec.common.errors import FedrecError

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
    from fedrec.common.fetch import fetch

    target = fetch(dataset, data_dir)
    err.print(f"{dataset} ready in {target}")


# --- encrypted device stores: fedrec data provision / fedrec store (issue 3) ----------------------
@data_app.command("provision")
def data_provision(
    out: Path = typer.Option(..., help="Dir to write: manifest.json and stores/<device_id>.db."),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or a path to a CSV (user,item,timestamp[,rating])."),
    users: Optional[int] = typer.Option(None, min=1, help="Keep only the first N users."),
    seed: int = typer.Option(0, help="Split seed (tie-break of equal timestamps, protocol.md)."),
    key_file: Optional[Path] = typer.Option(None, help="Master key file; created (mode 0600) if missing. "
                                            "Default: OUT/master.key (simulation only)."),
    passphrase_env: Optional[str] = typer.Option(None, help="Environment variable holding a master passphrase."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    workers: int = typer.Option(2, min=1, help="Processes writing stores."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Split per user (protocol.md) and write one encrypted store per device plus a manifest (no content)."""
    from fedrec.common.split import temporal_split
    from fedrec.simulations.experiment import load
    from fedrec.simulations.provision import master_secret, provision

    master, recipe, recorded = master_secret(out, key_file, passphrase_env)
    data = load(dataset, str(data_dir) if data_dir else None, users)
    manifest = provision(data, temporal_split(data, seed), out, master, recipe=recipe, key_file=recorded,
                         workers=workers, show=not quiet)
    err.print(f"wrote {data.n_users} device stores and {manifest}")


# --- synthetic populations: fedrec data synth (issue 12) -------------------------------------------
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
    from fedrec.simulations.synth.run import synth_csv

    err.print(synth_csv(out, users, items, seed, source, str(data_dir) if data_dir else None), markup=False,
              soft_wrap=True)
# --- end issue 12 -----------------------------------------------------------------------------------


from fedrec.client.store_cli import store_app  # noqa: E402

app.add_typer(store_app, name="store")
# --- end issue 3 -----------------------------------------------------------------------------------


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
    from fedrec.common.config import load_config
    from fedrec.simulations.arms.registry import central_fitters
    from fedrec.simulations.experiment import Experiment, run

    cfg = load_config(config)
    fitters = central_fitters(parse_list(arms), cfg, show=not quiet)
    exp = Experiment(dataset=dataset, out=out, fitters=fitters, seeds=parse_list(seeds, int),
                     data_dir=str(data_dir) if data_dir else None, users=users, config=cfg.to_dict(), show=not quiet)
    report = run(exp)
    err.print(f"wrote {out}/report.json and report.md ({report['meta']['wall_s']:.0f} s)")


@app.command()
def simulate(
    out: Path = typer.Option(..., help="Run dir to write."),
    config: Optional[Path] = typer.Option(None, help="TOML config (tables model, central, federated)."),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or a path to a CSV."),
    clients: Optional[int] = typer.Option(None, min=3, help="Simulate only the first N users' devices."),
    rounds: Optional[int] = typer.Option(None, min=1, help="Federated rounds (overrides the config)."),
    epsilon: Optional[float] = typer.Option(None, min=0.0, help="Per-device budget for federated_dp; sets the noise."),
    delta: Optional[float] = typer.Option(None, help="DP delta (default 1e-5)."),
    arms: str = typer.Option(",".join(("random", "popularity", "ease", "centralized", "federated", "federated_dp")),
                             help="Comma-separated arms."),
    sweep: str = typer.Option("", help="Extra federated_dp budgets, e.g. 1,2,4 (accuracy-vs-epsilon plot)."),
    seeds: str = typer.Option("0", help="Comma-separated seeds."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Federated arms through Flower's simulation engine beside the centralized arms; writes a run dir."""
    from fedrec.common.config import load_config
    from fedrec.simulations.experiment import run
    from fedrec.simulations.simulate import build_experiment

    cfg = load_config(config, {"federated": {"rounds": rounds, "epsilon": epsilon, "delta": delta}})
    exp = build_experiment(cfg, parse_list(arms), dataset, out, parse_list(seeds, int),
                           str(data_dir) if data_dir else None, clients, parse_list(sweep, float), not quiet)
    report = run(exp)
    err.print(f"wrote {out}/report.json and report.md ({report['meta']['wall_s']:.0f} s)")


# --- deployment: fedrec certs / server / client / recommend (issue 6) ------------------------------
certs_app = typer.Typer(no_args_is_help=True, help="A local CA, the server certificate and device keys (tests, small installs).")
app.add_typer(certs_app, name="certs")


def say(line: str) -> None:
    """Progress of the deployment commands: plain text, one line per message (logs get whole paths)."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


@certs_app.command("init")
def certs_init(
    out: Path = typer.Option(..., help="Directory for ca.crt, ca.key, server.crt, server.pem."),
    server_name: list[str] = typer.Option([], help="DNS name devices use for the server (repeatable)."),
    ip: list[str] = typer.Option([], help="IP address devices use for the server (repeatable)."),
    devices: int = typer.Option(0, min=0, help="Also create this many device key pairs (device-0, device-1, ...)."),
    force: bool = typer.Option(False, help="Replace an existing CA (every device must then get the new ca.crt)."),
) -> None:
    """Create a CA and a server certificate valid for every --server-name and --ip."""
    from fedrec.common.certs import create_ca, create_device_keys, issue_server_cert

    create_ca(out, overwrite=force)
    pki = issue_server_cert(out, server_name, ip)
    say(f"CA {pki.ca_cert} (give to every device), server certificate {pki.cert} + key {pki.key} "
              f"for {', '.join(server_name + ip)}")
    for i in range(devices):
        keys = create_device_keys(out, f"device-{i}")
        say(f"device key {keys.private_key} (to the device), {keys.public_key} (register on the server)")


@certs_app.command("server")
def certs_server(
    out: Path = typer.Option(..., help="Directory holding the CA from `fedrec certs init`."),
    server_name: list[str] = typer.Option([], help="DNS name (repeatable)."),
    ip: list[str] = typer.Option([], help="IP address (repeatable)."),
) -> None:
    """Reissue the server certificate (rotation, or new names) from the existing CA."""
    from fedrec.common.certs import issue_server_cert

    pki = issue_server_cert(out, server_name, ip)
    say(f"server certificate {pki.cert} + key {pki.key} for {', '.join(server_name + ip)}; restart the server")


@certs_app.command("device")
def certs_device(
    names: list[str] = typer.Argument(..., help="Device names; each gets DIR/devices/NAME and NAME.pub."),
    out: Path = typer.Option(..., help="Certificates directory."),
) -> None:
    """Create authentication key pairs for devices (EC P-384, OpenSSH format, as SuperNodes read them)."""
    from fedrec.common.certs import create_device_keys

    for name in names:
        keys = create_device_keys(out, name)
        say(f"device key {keys.private_key} (to the device), {keys.public_key} (register on the server)")


@app.command()
def server(
    out: Path = typer.Option(..., help="Run output: checkpoint.pt each round, global_model.pt + model.json at the end."),
    certs: Optional[Path] = typer.Option(None, help="Directory from `fedrec certs init` (ca.crt, server.crt, server.pem)."),
    ca_cert: Optional[Path] = typer.Option(None, help="CA certificate (overrides --certs; bring your own PKI)."),
    cert: Optional[Path] = typer.Option(None, help="Server certificate (PEM)."),
    key: Optional[Path] = typer.Option(None, help="Server private key (PEM)."),
    devices: list[Path] = typer.Option([], help="Device public key or directory of *.pub to register (default CERTS/devices)."),
    host: str = typer.Option("0.0.0.0", help="Address to listen on."),
    port: int = typer.Option(9092, help="The one TLS port (Fleet, Control and Runtime APIs)."),
    rounds: Optional[int] = typer.Option(None, min=1, help="Federated rounds (run config num-server-rounds)."),
    run_config: Optional[str] = typer.Option(None, help='More run config, e.g. "n-items=1682 local-epochs=1".'),
    wait_for: Optional[int] = typer.Option(None, min=0, help="Devices that must be online before the run starts (default: all registered)."),
    state_dir: Optional[Path] = typer.Option(None, help="SuperLink state, Flower CLI config and logs (default OUT/superlink)."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the SuperLink and the devices."),
    app_dir: Optional[Path] = typer.Option(None, "--app", help="Flower App directory (default: this fedrec project)."),
    manifest: Optional[Path] = typer.Option(None, help="Provisioning manifest: sets n-items (the catalogue size)."),
) -> None:
    """Start a SuperLink (TLS, device authentication), register device keys, run federated training."""
    from fedrec.server.launcher import APP_DIR, parse_run_config, serve, settings

    s = settings(certs, ca_cert, cert, key, devices, out, state_dir, run_config=parse_run_config(run_config),
                 rounds=rounds, manifest=manifest, host=host, port=port, wait_for=wait_for, startup_timeout=timeout,
                 app_dir=(app_dir or APP_DIR).resolve())
    serve(s, say)


@app.command()
def client(
    store: Optional[Path] = typer.Option(None, help="This device's encrypted store."),
    key_file: Optional[Path] = typer.Option(None, help="The store's 32-byte key file."),
    superlink: str = typer.Option(..., help="SuperLink address HOST:PORT."),
    root_cert: Path = typer.Option(..., help="CA certificate that signed the SuperLink's certificate."),
    auth_key: Path = typer.Option(..., help="This device's private authentication key (`fedrec certs device`)."),
    port: Optional[int] = typer.Option(None, help="Local SuperNode runtime port (default: a free one)."),
    max_wait: Optional[float] = typer.Option(None, help="Give up if the SuperLink is unreachable this many seconds."),
    quiet: bool = typer.Option(False, help="Do not echo the SuperNode's log."),
    stores_dir: Optional[Path] = typer.Option(None, help="Gateway: a provisioned dir; serve all its devices."),
    master_key_file: Optional[Path] = typer.Option(None, help="Gateway: the group's master key file."),
) -> None:
    """Run this device (or a gateway for a group of devices) as a Flower SuperNode that trains when asked."""
    from fedrec.client.device import ClientSettings, run_client

    run_client(ClientSettings(store, key_file, superlink, root_cert, auth_key, port, max_wait, stores_dir,
                              master_key_file), say, echo=not quiet)


@app.command()
def recommend(
    store: Path = typer.Option(..., help="This device's encrypted store."),
    key_file: Path = typer.Option(..., help="The store's key file."),
    model: Path = typer.Option(..., help="global_model.pt (model.json beside it)."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="How many items."),
    manifest: Optional[Path] = typer.Option(None, help="Provisioning manifest with the item catalogue (default: found beside the store)."),
    state_prefix: Optional[str] = typer.Option(None, help="State-name prefix the device trained under (default: the run's)."),
) -> None:
    """Top-k unseen items for this device's user, computed on the device."""
    from fedrec.client.device import recommend as top_k

    for rec in top_k(store, key_file, model, k, manifest, state_prefix):
        print(f"{rec.rank + 1:>3}  {rec.item_id:>8}  {rec.score:8.3f}  {rec.title or ''}".rstrip())
# --- end deployment ---------------------------------------------------------------------------------


# --- retention (issue 5) ----------------------------------------------------------------------------
@app.command()
def retention(
    run_dir: Path = typer.Argument(..., help="A finished run dir (fedrec baseline or simulate) with scores/<arm>.npy."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma-separated simulation seeds (common random numbers per seed)."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    dataset: Optional[str] = typer.Option(None, help="Dataset to reload (default: meta.dataset of the run; "
                                          "give the CSV path for runs on a CSV file)."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Simulated long-term retention of every arm (protocol.md); updates report.json, report.md and plots."""
    from fedrec.simulations.retention.cli_entry import retention_for_run_dir

    print(retention_for_run_dir(run_dir, parse_list(seeds, int), str(data_dir) if data_dir else None, not quiet,
                                dataset))
    err.print(f"updated {run_dir}/report.json, report.md and retention_*.png")
# --- end retention ----------------------------------------------------------------------------------


# --- audit (issue 7) --------------------------------------------------------------------------------
@app.command()
def audit(
    run_dir: Path = typer.Argument(..., help="A finished run dir (fedrec simulate or baseline)."),
    stores: Optional[Path] = typer.Option(None, help="Device stores to scan (default RUN_DIR/stores)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset to reload (default: meta.dataset of the run; "
                                          "give the CSV path for runs on a CSV file)."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset cache dir."),
    skip: str = typer.Option("", help="Comma-separated sections to skip: accounting,wire,at_rest,mia,canary."),
    shadows: int = typer.Option(4, min=0, help="LiRA shadow trainings of the centralized arm (even; 0 = loss attack only)."),
    shadow_epochs: Optional[int] = typer.Option(None, min=1, help="Epochs per shadow (default: the arm's best epoch)."),
    canaries: int = typer.Option(1000, min=2, help="Canary interactions m, each included with probability 1/2."),
    canary_guesses: int = typer.Option(100, min=1, help="Guesses per side (k 'in' + k 'out'), fixed in advance."),
    canary_users: int = typer.Option(100, min=3, help="Users in the canary retraining (the run's first N)."),
    canary_rounds: Optional[int] = typer.Option(None, min=1, help="Rounds of the canary retraining (default: the run's)."),
    canary_trainer: str = typer.Option("harness", help="harness (Flower simulation) or inprocess (same device code, one process)."),
    canary_contrast: bool = typer.Option(True, help="Also audit the arm without DP (shows the audit can see a leak)."),
    quiet: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Privacy audit: epsilon spent (re-checked), what crosses the wire, what rests on devices, what attacks learn."""
    import json

    from fedrec.simulations.audit.run import AuditOptions, audit as run_audit, headline

    opts = AuditOptions(stores=stores, data=dataset, data_dir=str(data_dir) if data_dir else None,
                        skip=tuple(parse_list(skip)), shadows=shadows, shadow_epochs=shadow_epochs,
                        canaries=canaries, canary_guesses=canary_guesses, canary_users=canary_users,
                        canary_rounds=canary_rounds, canary_trainer=canary_trainer,
                        canary_contrast=canary_contrast, show=not quiet)
    result = run_audit(run_dir, opts)
    print(json.dumps(headline(result), indent=1))
    err.print(f"wrote {run_dir}/audit.json and audit.md")
# --- end audit --------------------------------------------------------------------------------------


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
