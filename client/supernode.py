"""`fedrec client`: this device (or a gateway for a provisioned group) as a Flower SuperNode.

It checks what it can before connecting (the store opens with the key, the auth key is an EC key, the
CA file parses), then runs ``flower-supernode`` with TLS and SuperNode authentication and node config
``store=... key-file=...``, which ``fedrec.client.app`` reads. Flower reports a refused connection as a
multi-line exit message; this module turns the known causes into one line that says what to fix.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedrec.client.secagg_mod import REQUIRE_KEY
from fedrec.client.store_key import store_key
from fedrec.common.errors import FedrecError, Interrupted
from fedrec.common.keys import derive_device_key, load_key_file
from fedrec.common.manifest import load_manifest
from fedrec.common.policy import DevicePolicy
from fedrec.common.processes import Children, flower_env, free_port, interrupt_on_signals
from fedrec.common.store import DeviceStore

Say = Callable[[str], None]


@dataclass(frozen=True)
class ClientSettings:
    """One device (``store`` + ``key_file``) or a gateway serving a provisioned group (``stores_dir`` + ``master_key_file``)."""

    store: Path | None
    key_file: Path | None
    superlink: str  # HOST:PORT of the SuperLink
    root_cert: Path  # the CA that signed the SuperLink's certificate
    auth_key: Path  # this node's OpenSSH EC private key (its public half is registered on the server)
    port: int | None = None  # the SuperNode's local Runtime API port; None picks a free one
    max_wait: float | None = None  # give up connecting after this many seconds (None: keep retrying)
    stores_dir: Path | None = None
    master_key_file: Path | None = None
    require_secure_aggregation: bool = False  # refuse train requests outside SecAgg+ (client/secagg_mod.py)
    policy: DevicePolicy = field(default_factory=DevicePolicy)  # the owner's limits (common/policy.py)

    @property
    def name(self) -> str:
        return f"device {self.store.stem}" if self.store else f"gateway for {self.stores_dir}"


def _check_group(stores_dir: Path, master_key_file: Path) -> None:
    """A gateway's group: the manifest lists its devices; the first store must open with the master."""
    manifest = load_manifest(stores_dir)
    if not manifest.devices:
        raise FedrecError(f"{stores_dir}/manifest.json: no devices")
    first = manifest.devices[0]
    with DeviceStore.open(
        manifest.store_path(first), derive_device_key(load_key_file(master_key_file), first.device_id)
    ):
        pass


def _existing_file(path: Path | None, flag: str) -> Path:
    if path is None or not path.is_file():
        raise FedrecError(f"{path}: file not found ({flag})")
    return path


def check_inputs(s: ClientSettings) -> dict[str, Path]:
    """Fail before any network traffic, naming the file that is wrong; return the node config's checked paths."""
    single = (s.store, s.key_file) != (None, None)
    if single == ((s.stores_dir, s.master_key_file) != (None, None)):
        raise FedrecError("give --store and --key-file (one device) or --stores-dir and --master-key-file (a gateway)")
    _existing_file(s.root_cert, "--root-cert")
    _existing_file(s.auth_key, "--auth-key")
    paths: dict[str, Path]
    if single:
        store, key_file = _existing_file(s.store, "--store"), _existing_file(s.key_file, "--key-file")
        with DeviceStore.open(store, store_key(store, key_file)):
            pass  # wrong key or a damaged store fails here with the store's own message
        paths = {"store": store, "key-file": key_file}
    else:
        master_key_file = _existing_file(s.master_key_file, "--master-key-file")
        if s.stores_dir is None:
            raise FedrecError("a gateway needs --stores-dir with --master-key-file")
        _check_group(s.stores_dir, master_key_file)
        paths = {"stores-dir": s.stores_dir, "master-key-file": master_key_file}
    try:
        key = load_ssh_private_key(s.auth_key.read_bytes(), None)
    except (ValueError, UnsupportedAlgorithm):
        raise FedrecError(f"{s.auth_key}: not an OpenSSH private key (--auth-key; see `fedrec certs device`)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedrecError(f"{s.auth_key}: SuperNode authentication needs an EC (NIST curve) key")
    try:
        x509.load_pem_x509_certificates(s.root_cert.read_bytes())
    except ValueError:
        raise FedrecError(f"{s.root_cert}: not a PEM certificate (--root-cert)") from None
    if ":" not in s.superlink:
        raise FedrecError(f"--superlink {s.superlink!r}: expected HOST:PORT")
    return paths


def supernode_argv(s: ClientSettings, port: int, paths: dict[str, Path]) -> list[str]:
    """``paths``: the node config's files, as `check_inputs` returns them."""
    node_config = " ".join(f'{key}="{path.resolve()}"' for key, path in paths.items())
    if s.require_secure_aggregation:
        node_config += f' {REQUIRE_KEY}="required"'
    node_config += " " + s.policy.to_node_config()
    argv = [
        "flower-supernode",
        "--superlink",
        s.superlink,
        "--root-certificates",
        str(s.root_cert.resolve()),
        "--auth-supernode-private-key",
        str(s.auth_key.resolve()),
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]
    if s.max_wait is not None:
        argv += ["--max-wait-time", str(s.max_wait)]
    return argv


# Known refusals in Flower's exit message -> what the device owner should do. First match wins.
REFUSALS: tuple[tuple[re.Pattern, str], ...] = (
    (
        re.compile(r"Hostname mismatch|IP address mismatch|doesn't match", re.I),
        "the SuperLink's TLS certificate is not valid for {host} (not in its subject alternative names): "
        "connect with a name it was issued for, or reissue it with `fedrec certs init --server-name/--ip`",
    ),
    (
        re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", re.I),
        "TLS refused: the SuperLink at {superlink} presents a certificate not signed by the CA in {root_cert} "
        "(wrong --root-cert?)",
    ),
    (
        re.compile(r"code: 2004|Failed to activate SuperNode|No SuperNode found", re.I),
        "the SuperLink refused this device: the public key of {auth_key} is not registered there "
        "(ask the operator to register {auth_key}.pub, e.g. `fedrec server --devices {auth_key}.pub`)",
    ),
    (
        re.compile(r"401|Unauthorized|Invalid SuperNode authentication", re.I),
        "the SuperLink rejected this device's authentication (key not registered, revoked, or clock skew)",
    ),
    (re.compile(r"Unable to parse the private key", re.I), "{auth_key}: not a usable SuperNode private key"),
    (
        re.compile(r"Connection refused|ConnectError|Name or service not known|Giving up", re.I),
        "cannot reach the SuperLink at {superlink} (is `fedrec server` running and the port open?)",
    ),
)


def explain_exit(output: list[str], s: ClientSettings, code: int) -> str:
    """One line for a SuperNode that exited with ``code``: the known cause, else Flower's own last error."""
    text = "\n".join(output)
    fields = {
        "host": s.superlink.rsplit(":", 1)[0],
        "superlink": s.superlink,
        "root_cert": s.root_cert,
        "auth_key": s.auth_key,
    }
    for pattern, message in REFUSALS:
        if pattern.search(text):
            return message.format(**fields)
    errors = [line.strip() for line in output if line.strip() and "ERROR" in line or "Exit Code" in line]
    return f"the SuperNode exited with code {code}: {(errors or output or ['no output'])[-1].strip()}"


def run_client(s: ClientSettings, say: Say, echo: bool = True) -> None:
    """Run the SuperNode until it stops; Ctrl-C / SIGTERM end it and its helpers."""
    paths = check_inputs(s)
    port = s.port or free_port()
    children = Children(flower_env())
    tail: deque[str] = deque(maxlen=200)
    say(
        f"{s.name}: SuperNode -> {s.superlink} (TLS, CA {s.root_cert}; auth key {s.auth_key}); "
        f"local runtime port {port}"
    )

    def pump(stream: Iterable[str]) -> None:  # the SuperNode's helpers share the pipe: read it apart from waiting
        try:
            for line in stream:
                tail.append(line.rstrip("\n"))
                if echo:
                    say(line.rstrip("\n"))
        except (ValueError, OSError):  # children.stop() closed the pipe under the reader: the output has ended
            return

    with interrupt_on_signals():
        try:
            proc = children.start("supernode", supernode_argv(s, port, paths), capture=True)
            reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
            reader.start()
            code = proc.wait()
        except Interrupted:
            say("stopping the SuperNode")
            return
        finally:
            children.stop()  # also ends helpers the SuperNode left behind, which closes the pipe
    reader.join(timeout=5)
    if code == 0:  # a SuperNode only stops by itself when the SuperLink shuts it out (HTTP 401)
        raise FedrecError(
            "the SuperLink stopped accepting this device while it was connected "
            "(its key was unregistered or revoked); ask the operator"
        )
    raise FedrecError(explain_exit(list(tail), s, code))
