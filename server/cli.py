"""The server's commands: `fedrec certs` (a local PKI) and `fedrec server` (SuperLink + one run)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedrec.common.cli import say
from fedrec.common.files import writable_dir

app = typer.Typer()
certs_app = typer.Typer(
    no_args_is_help=True, help="A local CA, the server certificate and device keys (tests, small installs)."
)
app.add_typer(certs_app, name="certs")


@certs_app.command("init")
def certs_init(
    out: Path = typer.Option(
        ..., help="Directory for ca.crt, server.crt, server.pem (the server's); the CA key goes to OUT-ca/."
    ),
    server_name: list[str] = typer.Option([], help="DNS name devices use for the server (repeatable)."),
    ip: list[str] = typer.Option([], help="IP address devices use for the server (repeatable)."),
    devices: int = typer.Option(0, min=0, help="Also create this many device key pairs (device-0, device-1, ...)."),
    force: bool = typer.Option(False, help="Replace an existing CA (every device must then get the new ca.crt)."),
) -> None:
    """Create a CA and a server certificate valid for every --server-name and --ip."""
    from fedrec.common.certs import ca_key_dir, create_ca, create_device_keys, issue_server_cert

    writable_dir(out, "--out")
    writable_dir(ca_key_dir(out), "--out (its CA key directory)")
    _, ca_key = create_ca(out, overwrite=force)
    pki = issue_server_cert(out, server_name, ip)
    say(
        f"CA {pki.ca_cert} (give to every device), server certificate {pki.cert} + key {pki.key} "
        f"for {', '.join(server_name + ip)}; CA key {ca_key} (keep it off the server: it signs what devices trust)"
    )
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

    writable_dir(out, "--out")
    pki = issue_server_cert(out, server_name, ip)
    say(f"server certificate {pki.cert} + key {pki.key} for {', '.join(server_name + ip)}; restart the server")


@certs_app.command("device")
def certs_device(
    names: list[str] = typer.Argument(..., help="Device names; each gets DIR/devices/NAME and NAME.pub."),
    out: Path = typer.Option(..., help="Certificates directory."),
) -> None:
    """Create authentication key pairs for devices (EC P-384, OpenSSH format, as SuperNodes read them)."""
    from fedrec.common.certs import create_device_keys

    writable_dir(out, "--out")
    for name in names:
        keys = create_device_keys(out, name)
        say(f"device key {keys.private_key} (to the device), {keys.public_key} (register on the server)")


@certs_app.command("operator")
def certs_operator(
    out: Path = typer.Option(..., help="Directory holding the CA from `fedrec certs init`."),
    name: str = typer.Option("operator", help="File names NAME.crt and NAME.pem (private)."),
) -> None:
    """Issue an operator client certificate: what `fedrec server --operator-port` asks for."""
    from fedrec.common.certs import issue_operator_cert

    writable_dir(out, "--out")
    credential = issue_operator_cert(out, name)
    say(f"operator certificate {credential.cert} + key {credential.key} (to the operator only, never to devices)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def operator(
    ctx: typer.Context,
    server: str = typer.Option(..., help="HOST:PORT of the server's operator door (`fedrec server --operator-port`)."),
    certs: Optional[Path] = typer.Option(None, help="Directory with ca.crt and NAME.crt/NAME.pem."),
    name: str = typer.Option("operator", help="The operator certificate's name in --certs."),
    ca_cert: Optional[Path] = typer.Option(None, help="CA of the server certificate (overrides --certs)."),
    cert: Optional[Path] = typer.Option(None, help="Operator client certificate (overrides --certs)."),
    key: Optional[Path] = typer.Option(None, help="Its private key (overrides --certs)."),
) -> None:
    """Run `flwr ARGS` against the server with the operator certificate, e.g. `fedrec operator --server
    fl.example.org:9093 --certs pki supernode list` (the connection is named `fedrec` and is the default)."""
    from fedrec.common.certs import CA_CERT, OPERATOR_CERT_SUFFIX, OPERATOR_KEY_SUFFIX, OperatorCredential
    from fedrec.common.errors import FedrecError
    from fedrec.server.operator import OperatorSettings, run_flwr

    def pick(given: Optional[Path], file: str, flag: str) -> Path:
        if given is not None:
            return given
        if certs is None:
            raise FedrecError(f"{flag} is required (or --certs DIR)")
        return certs / file

    credential = OperatorCredential(
        pick(ca_cert, CA_CERT, "--ca-cert"),
        pick(cert, f"{name}{OPERATOR_CERT_SUFFIX}", "--cert"),
        pick(key, f"{name}{OPERATOR_KEY_SUFFIX}", "--key"),
    )
    if not ctx.args:
        raise FedrecError("give the flwr command to run, e.g. `fedrec operator --server HOST:PORT --certs pki ls`")
    raise typer.Exit(run_flwr(OperatorSettings(server, credential), list(ctx.args)))


@app.command()
def server(
    out: Path = typer.Option(
        ..., help="Run output: checkpoint.pt each round, global_model.pt + model.json at the end."
    ),
    certs: Optional[Path] = typer.Option(
        None, help="Directory from `fedrec certs init` (ca.crt, server.crt, server.pem)."
    ),
    ca_cert: Optional[Path] = typer.Option(None, help="CA certificate (overrides --certs; bring your own PKI)."),
    cert: Optional[Path] = typer.Option(None, help="Server certificate (PEM)."),
    key: Optional[Path] = typer.Option(None, help="Server private key (PEM)."),
    devices: list[Path] = typer.Option(
        [], help="Device public key or directory of *.pub to register (default CERTS/devices)."
    ),
    host: str = typer.Option("0.0.0.0", help="Address to listen on."),
    port: int = typer.Option(9092, help="The devices' TLS port: it serves the Fleet API and nothing else."),
    operator_port: Optional[int] = typer.Option(
        None, help="Also open an operator port (mutual TLS, operator certificate; off: operate on this machine)."
    ),
    operator_ca: Optional[Path] = typer.Option(
        None, help="CA of operator client certificates (default: the CA; see `fedrec certs operator`)."
    ),
    config: Optional[Path] = typer.Option(None, help="fedrec TOML config; its \\[federation.*] tables set the run."),
    rounds: Optional[int] = typer.Option(None, help="Federated rounds (run config server.rounds)."),
    run_config: Optional[str] = typer.Option(None, help='Run config overrides, e.g. "device.training.epochs=2".'),
    wait_for: Optional[int] = typer.Option(
        None, min=0, help="Devices that must be online before the run starts (default: all registered)."
    ),
    state_dir: Optional[Path] = typer.Option(
        None, help="SuperLink state, Flower CLI config and logs (default OUT/superlink)."
    ),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the SuperLink and the devices."),
    app_dir: Optional[Path] = typer.Option(
        None, "--app", help="Flower App directory (default: one written into the state dir)."
    ),
    manifest: Optional[Path] = typer.Option(None, help="Provisioning manifest: sets n-items (the catalogue size)."),
) -> None:
    """Start a SuperLink (TLS, device authentication), register device keys, run federated training."""
    from fedrec.server.launcher import federation_config, serve, settings

    s = settings(
        certs,
        ca_cert,
        cert,
        key,
        devices,
        out,
        state_dir,
        federation_config(config, run_config, rounds),
        manifest=manifest,
        host=host,
        port=port,
        operator_port=operator_port,
        operator_ca=operator_ca,
        wait_for=wait_for,
        startup_timeout=timeout,
        app_dir=app_dir.resolve() if app_dir else None,
    )
    serve(s, say)
