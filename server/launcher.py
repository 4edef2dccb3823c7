"""`fedrec server`: a SuperLink with TLS and SuperNode authentication, the device keys registered, one run.

Everything on the wire is Flower's: ``flower-superlink`` serves the Fleet, Control and Runtime APIs
on one TLS port; ``flwr supernode register`` admits device keys; ``flwr run <app> fedrec --stream``
submits the same ServerApp the simulation uses and streams its log. Flower 1.42 does not
authenticate the Control API, so the SuperLink listens on 127.0.0.1 only and the network reaches
it through doors (``fedrec.server.front``): the public port relays the Fleet API alone, and an
optional operator port admits only a client certificate from the operator CA. The Flower CLI reads its
connection from ``$FLWR_HOME/config.toml``, which this launcher writes into its state directory,
so nothing in the user's home is touched. The SuperLink keeps its state in a SQLite file there:
registrations survive a restart, and the ServerApp resumes from ``checkpoint.pt`` in the out dir.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from fedrec.common.certs import CA_CERT, DEVICE_PUB_SUFFIX, SERVER_CERT, SERVER_KEY, ServerPki, loopback_pki
from fedrec.common.config import FederationConfig, StrategyConfig, load_config
from fedrec.common.errors import FedrecError, Interrupted
from fedrec.common.files import writable_dir
from fedrec.common.manifest import load_manifest
from fedrec.common.processes import (
    Children,
    exclusive,
    flower_env,
    free_port,
    interrupt_on_signals,
    port_in_use,
    wait_until,
)
from fedrec.common.settings import Scalar, flatten, from_flat
from fedrec.server.checkpoint import load_checkpoint
from fedrec.server.flower_app import write_app

CONNECTION = "fedrec"  # the connection name in $FLWR_HOME/config.toml
BIND_ALL = {"", "0.0.0.0", "::"}
LOOPBACK = "127.0.0.1"

Say = Callable[[str], None]


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``fedrec server`` needs; paths are resolved to absolute ones by ``settings()``."""

    ca_cert: Path
    cert: Path
    key: Path
    devices: tuple[Path, ...]  # OpenSSH public keys to register
    out: Path  # run config out-dir: checkpoints, final model, logs of rounds
    state_dir: Path  # FLWR_HOME, the SuperLink database and logs
    host: str = "0.0.0.0"
    port: int = 9092
    federation: FederationConfig = field(default_factory=FederationConfig)
    wait_for: int | None = None  # online devices before the run starts (default: all registered)
    startup_timeout: float = 120.0
    app_dir: Path | None = None  # a Flower App of one's own; default: the one written into state_dir
    operator_port: int | None = None  # the operator door (mutual TLS); None: operators work on this machine only
    operator_ca: Path | None = None  # the CA of operator client certificates (default: ca_cert)

    @property
    def run_config(self) -> dict[str, Scalar]:
        return flatten(self.federation)


def settings(
    certs: Path | None,
    ca_cert: Path | None,
    cert: Path | None,
    key: Path | None,
    devices: list[Path],
    out: Path,
    state_dir: Path | None,
    federation: FederationConfig,
    manifest: Path | None = None,
    operator_ca: Path | None = None,
    **rest: Any,  # the other ServerSettings fields, passed through
) -> ServerSettings:
    """Fill paths from a ``fedrec certs`` directory (each overridable for a PKI of one's own) and resolve
    what the server alone knows into the run config: where it writes, the catalogue size, whom to wait for."""

    def pick(given: Path | None, name: str, flag: str) -> Path:
        path = given or (certs / name if certs else None)
        if path is None:
            raise FedrecError(f"{flag} is required (or --certs DIR from `fedrec certs init`)")
        if not path.is_file():
            raise FedrecError(f"{path}: file not found ({flag})")
        return path.resolve()

    keys: list[Path] = []
    for path in devices or ([certs / "devices"] if certs and (certs / "devices").is_dir() else []):
        if path.is_dir():
            keys += sorted(path.glob(f"*{DEVICE_PUB_SUFFIX}"))
        elif path.is_file():
            keys.append(path)
        else:
            raise FedrecError(f"{path}: no such device public key or directory (--devices)")
    out = out.resolve()
    device = federation.device
    if manifest is not None and device.n_items == 0:  # the catalogue size is public; the server needs it
        device = replace(device, n_items=load_manifest(manifest.parent).n_items)
    # Sample every device we wait for, not whichever subset happens to be connected when a round starts.
    wait_for = rest.get("wait_for")
    strategy = federation.server.strategy
    if strategy.min_nodes == StrategyConfig().min_nodes:
        strategy = replace(strategy, min_nodes=max(1, wait_for if wait_for is not None else len(keys)))
    server = replace(federation.server, out_dir=str(out), strategy=strategy)  # absolute: the ServerApp runs elsewhere
    federation = replace(federation, server=server, device=device)
    ca = pick(ca_cert, CA_CERT, "--ca-cert")
    return ServerSettings(
        ca_cert=ca,
        operator_ca=pick(operator_ca, CA_CERT, "--operator-ca") if operator_ca else ca,
        cert=pick(cert, SERVER_CERT, "--cert"),
        key=pick(key, SERVER_KEY, "--key"),
        devices=tuple(p.resolve() for p in keys),
        out=out,
        state_dir=(state_dir or out / "superlink").resolve(),
        federation=federation,
        **rest,
    )


def connect_host(cert: Path, bind_host: str) -> str:
    """The name the local ``flwr`` CLI uses to reach the SuperLink: one the certificate is valid for."""
    san = (
        x509.load_pem_x509_certificate(cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    names = san.get_values_for_type(x509.DNSName)
    if bind_host not in BIND_ALL:
        return bind_host
    for candidate in ("127.0.0.1", "::1", "localhost"):
        if candidate in ips or candidate in names:
            return candidate
    if names or ips:
        return (names or ips)[0]
    raise FedrecError(f"{cert}: the certificate has no subject alternative names")


def _address(host: str, port: int) -> str:
    try:
        return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"
    except ValueError:
        return f"{host}:{port}"


def write_flwr_config(state_dir: Path, port: int, ca_cert: Path) -> Path:
    """The Flower CLI's connection to the loopback SuperLink, TLS verified (``root-certificates``)."""
    home = state_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{_address(LOOPBACK, port)}"\nroot-certificates = "{ca_cert}"\n'
    )
    return home


def tls_ready(host: str, port: int, ca_cert: Path) -> bool:
    """True once the SuperLink answers a verified TLS handshake; a certificate problem fails loudly."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with socket.create_connection((host, port), timeout=2) as sock, context.wrap_socket(sock, server_hostname=host):
            return True
    except ssl.SSLCertVerificationError as exc:
        raise FedrecError(
            f"the SuperLink's certificate does not verify for {host} with {ca_cert}: "
            f"{exc.verify_message} (reissue it with that name in --server-name/--ip)"
        ) from None
    except OSError:
        return False


def flwr(children: Children, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    """One Flower CLI call against our connection (short-lived, so run to completion here)."""
    try:
        return subprocess.run(
            ["flwr", *args], env=children.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise FedrecError(f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s") from None


def _json_tail(stdout: str) -> dict:
    """``--format json`` prints one JSON object last; anything before it is Flower's chatter."""
    start = stdout.rfind("\n{")
    try:
        return json.loads(stdout[start + 1 :] if start >= 0 else stdout)
    except json.JSONDecodeError:
        return {}


def register_devices(children: Children, keys: tuple[Path, ...], say: Say) -> dict[str, str]:
    """Admit each device key; a key that is already registered (a restart) is fine."""
    node_ids: dict[str, str] = {}
    for key in keys:
        name = key.name.removesuffix(DEVICE_PUB_SUFFIX)
        done = flwr(children, ["supernode", "register", str(key), CONNECTION, "--name", name, "--format", "json"])
        reply = _json_tail(done.stdout)
        if reply.get("success"):
            node_ids[name] = str(reply["node-id"])
            say(f"registered device {name}: SuperNode {reply['node-id']}")
        elif "already" in (done.stdout + done.stderr).lower():
            say(f"device {name} was registered before")
        else:
            detail = reply.get("error-message") or (done.stderr or done.stdout).strip().splitlines()[-1:]
            raise FedrecError(f"{key}: registering the device failed: {detail}")
    return node_ids


def record_node_ids(path: Path, node_ids: dict[str, str]) -> None:
    """Device name -> SuperNode id, kept across restarts: what `flwr supernode unregister` needs."""
    known = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**known, **node_ids}, indent=1, sort_keys=True) + "\n")


def online_nodes(children: Children) -> int:
    reply = _json_tail(flwr(children, ["supernode", "list", CONNECTION, "--format", "json"]).stdout)
    return sum(1 for node in reply.get("nodes", []) if node.get("status") == "online")


def run_config_arg(config: Mapping[str, object]) -> str:
    """``k=v`` pairs as ``flwr run --run-config`` parses them (TOML values)."""
    parts = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            if '"' in str(value) or "'" in str(value):
                raise FedrecError(f"run config {key}: quotes are not allowed in values")
            text = f'"{value}"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse_run_config(text: str | None) -> dict[str, object]:
    """Parse ``"k=v k2=v2"`` the way Flower does, so errors surface before anything starts."""
    from flwr.common.config import parse_config_args  # Flower's own parser: one syntax everywhere

    leftover = re.sub(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)", "", text or "").strip()  # Flower skips these
    if leftover:
        raise FedrecError(f"--run-config {text!r}: cannot read {leftover!r}; expected key=value pairs")
    try:
        return dict(parse_config_args([text] if text else None))
    except Exception as exc:  # click.ClickException and tomli errors alike
        raise FedrecError(f"--run-config {text!r}: {getattr(exc, 'message', exc)}") from None


def federation_config(config_file: Path | None, run_config: str | None, rounds: int | None) -> FederationConfig:
    """The ``[federation.*]`` tables of a fedrec TOML config, then ``--run-config`` and ``--rounds``."""
    federation = load_config(config_file).federation
    overrides = parse_run_config(run_config)
    if rounds is not None:
        overrides["server.rounds"] = rounds
    return from_flat(FederationConfig, overrides, "--run-config", complete=False, base=federation)


def stream_run(children: Children, s: ServerSettings, say: Say) -> str | None:
    """Submit the run and echo its log until it ends; returns the run id."""
    app_dir = s.app_dir or write_app(s.state_dir / "app", s.federation)
    argv = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--run-config", run_config_arg(s.run_config)]
    proc = children.start("flwr-run", argv, capture=True, cwd=app_dir)
    run_id = None
    log = (s.state_dir / "run.log").open("a")
    assert proc.stdout is not None  # capture=True: a pipe
    try:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            say(line.rstrip("\n"))
            if run_id is None and "Successfully started run" in line:
                run_id = line.split("Successfully started run", 1)[1].split()[0]
        proc.wait()
    finally:
        log.close()
        children.stop_one("flwr-run")
    if proc.returncode != 0:
        raise FedrecError(f"`flwr run` failed (exit {proc.returncode}); see {s.state_dir / 'run.log'}")
    return run_id


def run_status(children: Children, run_id: str) -> str:
    reply = _json_tail(flwr(children, ["ls", CONNECTION, "--run-id", run_id, "--format", "json"]).stdout)
    runs = reply.get("runs", [])
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def startup_failure(log: Path, what: str, port: int, host: str, flag: str) -> str:
    """Why ``what`` did not come up, in one line, from its log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if "address already in use" in text.lower():
        return f"port {port} on {host} is already in use (another SuperLink?); choose another {flag}"
    errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
    return f"the {what} did not start on port {port}: {errors[-1] if errors else 'no error logged'} (see {log})"


def serve(s: ServerSettings, say: Say) -> None:
    """Start everything, run once, stop everything (also on Ctrl-C / SIGTERM)."""
    writable_dir(s.out, "--out")
    checkpoint = load_checkpoint(s.out, s.federation)  # a damaged or foreign one: refused before any process starts
    s.state_dir.mkdir(parents=True, exist_ok=True)
    s.state_dir.chmod(0o700)  # the SuperLink database, the loopback key, the operator's Flower CLI
    host = connect_host(s.cert, s.host)
    with exclusive(s.state_dir / "server.lock", "fedrec server"):
        for port, flag in ((s.port, "--port"), (s.operator_port, "--operator-port")):
            if port is not None and port_in_use(s.host, port):
                raise FedrecError(
                    f"port {port} on {s.host} is in use (another SuperLink, or one left by a killed "
                    f"server?): stop it or choose another {flag}"
                )
        _serve(s, host, say, resuming=checkpoint is not None)


def superlink_argv(pki: ServerPki, port: int, database: Path) -> list[str]:
    """The SuperLink on loopback only: every API it serves is reachable from this machine alone."""
    return [
        "flower-superlink",
        "--ssl-ca-certfile",
        str(pki.ca_cert),
        "--ssl-certfile",
        str(pki.cert),
        "--ssl-keyfile",
        str(pki.key),
        "--enable-supernode-auth",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
    ]


def door_argv(s: ServerSettings, port: int, upstream: int, upstream_ca: Path, client_ca: Path | None) -> list[str]:
    """A door on the public address: the Fleet API alone, or (``client_ca``) everything for operators."""
    argv = [sys.executable, "-m", "fedrec.server.front", "--host", s.host, "--port", str(port)]
    argv += ["--cert", str(s.cert), "--key", str(s.key), "--upstream", f"{LOOPBACK}:{upstream}"]
    argv += ["--upstream-ca", str(upstream_ca)]
    return argv + (["--client-ca", str(client_ca)] if client_ca else ["--fleet-only"])


@dataclass(frozen=True)
class Listener:
    """One process of ours that listens: where, its log, and the flag that moves it."""

    name: str
    argv: list[str]
    host: str
    port: int
    flag: str
    log: Path


def start_listener(children: Children, it: Listener, ready: Callable[[], bool], timeout: float) -> subprocess.Popen:
    """Start it and wait for its TLS handshake; a failure is one line from its log."""
    proc = children.start(it.name, it.argv, log=it.log)
    try:
        wait_until(ready, timeout, f"{it.name} on port {it.port} (see {it.log})", alive=lambda: proc.poll() is None)
    except FedrecError:
        raise FedrecError(startup_failure(it.log, it.name, it.port, it.host, it.flag)) from None
    return proc


def _serve(s: ServerSettings, host: str, say: Say, resuming: bool) -> None:
    pki = loopback_pki(s.state_dir / "loopback")
    inner = free_port(LOOPBACK)
    children = Children(flower_env(write_flwr_config(s.state_dir, inner, pki.ca_cert)))
    with interrupt_on_signals():
        try:
            argv = superlink_argv(pki, inner, s.state_dir / "superlink.db")
            link = start_listener(
                children,
                Listener("SuperLink", argv, LOOPBACK, inner, "--port", s.state_dir / "superlink.log"),
                lambda: tls_ready(LOOPBACK, inner, pki.ca_cert),
                s.startup_timeout,
            )
            say(
                f"SuperLink (pid {link.pid}) on {_address(LOOPBACK, inner)} only, TLS + SuperNode authentication; "
                f"log {s.state_dir / 'superlink.log'}"
            )
            argv = door_argv(s, s.port, inner, pki.ca_cert, None)
            start_listener(
                children,
                Listener("device door", argv, s.host, s.port, "--port", s.state_dir / "device-door.log"),
                lambda: tls_ready(host, s.port, s.ca_cert),
                s.startup_timeout,
            )
            say(f"devices connect to {_address(s.host, s.port)} (TLS; the Fleet API only, nothing else answers)")
            if (operator_port := s.operator_port) is not None:
                argv = door_argv(s, operator_port, inner, pki.ca_cert, s.operator_ca)
                log = s.state_dir / "operator-door.log"
                start_listener(
                    children,
                    Listener("operator door", argv, s.host, operator_port, "--operator-port", log),
                    lambda: port_in_use(s.host, operator_port),  # a handshake needs the operator's certificate
                    s.startup_timeout,
                )
                say(
                    f"operators connect to {_address(s.host, operator_port)} (mutual TLS: a client certificate "
                    f"from {s.operator_ca}; `fedrec operator`)"
                )
            record_node_ids(s.state_dir / "devices.json", register_devices(children, s.devices, say))
            want = s.wait_for if s.wait_for is not None else len(s.devices)
            if want:
                say(f"waiting for {want} device(s) to connect (fedrec client ... --superlink HOST:{s.port})")
                wait_until(
                    lambda: online_nodes(children) >= want,
                    s.startup_timeout,
                    f"{want} devices online",
                    interval=2.0,
                    alive=lambda: link.poll() is None,
                )
            if resuming:
                say(f"found {s.out / 'checkpoint.pt'}: the run continues from its round")
            say(
                f"starting the run; checkpoints go to {s.out / 'checkpoint.pt'}, "
                f"the final model to {s.out / 'global_model.pt'} (+ model.json)"
            )
            run_id = stream_run(children, s, say)
            status = run_status(children, run_id) if run_id else "unknown"
            if "completed" not in status:
                raise FedrecError(f"run {run_id} ended as {status!r}; see {s.state_dir / 'run.log'}")
            say(f"run {run_id} {status}; final model {s.out / 'global_model.pt'}")
        except Interrupted:
            say("stopping: shutting down the SuperLink (the checkpoint lets a restart continue the run)")
        finally:
            started = time.monotonic()
            children.stop()
            say(f"stopped all server processes ({time.monotonic() - started:.1f} s)")
