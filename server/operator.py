"""`fedrec operator`: the ``flwr`` CLI through the server's operator door, with the operator certificate.

The ``flwr`` CLI cannot present a TLS client certificate, and the operator door admits nobody without
one. So this command opens a relay on this machine's loopback for the duration of one ``flwr`` call:
``flwr`` speaks plain HTTP to 127.0.0.1 (never leaving this machine), the relay carries the bytes
over mutual TLS (the operator's certificate, the server's verified against the CA) to the door,
which relays them to the SuperLink. Every ``flwr`` command (``ls``, ``supernode register``, ``run``,
``stop``, ...) then works unchanged against the connection named ``fedrec``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedrec.common.certs import OperatorCredential
from fedrec.common.errors import FedrecError
from fedrec.common.processes import flower_env

CONNECTION = "fedrec"


@dataclass(frozen=True)
class OperatorSettings:
    server: str  # HOST:PORT of the operator door (`fedrec server --operator-port`)
    credential: OperatorCredential

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.server.rpartition(":")
        if not host or not port.isdigit():
            raise FedrecError(f"--server {self.server!r}: expected HOST:PORT of the operator door")
        return host.strip("[]"), int(port)


def client_context(credential: OperatorCredential) -> ssl.SSLContext:
    for path, flag in ((credential.ca_cert, "--ca-cert"), (credential.cert, "--cert"), (credential.key, "--key")):
        if not path.is_file():
            raise FedrecError(f"{path}: file not found ({flag})")
    context = ssl.create_default_context(cafile=str(credential.ca_cert))
    try:
        context.load_cert_chain(str(credential.cert), str(credential.key))
    except ssl.SSLError as exc:
        raise FedrecError(f"{credential.cert}: cannot use it with {credential.key} ({exc.reason})") from None
    return context


def probe(s: OperatorSettings, context: ssl.SSLContext) -> None:
    """One request through the door, so a refused certificate is one line here, not a ``flwr`` retry loop."""
    host, port = s.host_port
    why = "it closed the connection"
    try:
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = tls.recv(64)
    except ssl.SSLCertVerificationError as exc:
        raise FedrecError(f"{s.server}: the server's certificate does not verify ({exc.verify_message})") from None
    except (ssl.SSLError, ConnectionResetError) as exc:
        answer, why = b"", getattr(exc, "reason", None) or str(exc)
    except OSError as exc:
        raise FedrecError(f"cannot reach the operator door at {s.server} ({exc.strerror or exc})") from None
    # TLS 1.3 reports a refused client certificate only when reading: an alert, or a plain close.
    if not answer.startswith(b"HTTP/1.1"):
        raise FedrecError(
            f"{s.server}: the operator door refused {s.credential.cert} ({why}); "
            f"is it an operator certificate from the server's operator CA?"
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@contextmanager
def relay(s: OperatorSettings, context: ssl.SSLContext) -> Iterator[int]:
    """A loopback listener whose connections are carried over mutual TLS to the door; yields its port."""
    host, port = s.host_port
    loop = asyncio.new_event_loop()

    async def carry(local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter) -> None:
        try:
            remote_reader, remote_writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        except (OSError, ssl.SSLError):
            local_writer.close()
            return
        await asyncio.gather(_pipe(local_reader, remote_writer), _pipe(remote_reader, local_writer))

    server = loop.run_until_complete(asyncio.start_server(carry, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def run_flwr(s: OperatorSettings, args: list[str]) -> int:
    """``flwr ARGS`` against the server through the relay; returns flwr's exit code."""
    context = client_context(s.credential)
    probe(s, context)
    with relay(s, context) as port, tempfile.TemporaryDirectory(prefix="fedrec-operator-") as home:
        Path(home, "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        os.chmod(home, 0o700)
        return subprocess.run(["flwr", *args], env=flower_env(Path(home)), stdin=subprocess.DEVNULL).returncode
