"""A small local PKI for TLS and SuperNode authentication, for tests and small installs.

Flower needs three kinds of key material: a CA certificate that every SuperNode and the ``flwr`` CLI
trust (``--root-certificates``), a server certificate whose subject alternative names cover every
name and address devices use to reach the SuperLink (hostname verification fails otherwise), and
one EC key pair per device in OpenSSH format (``flower-supernode --auth-supernode-private-key``,
``flwr supernode register <public key>``). Production installs bring their own CA instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrec.common.errors import FedrecError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
CA_KEY_DIR_SUFFIX = "-ca"  # the CA's private key lives in <out>-ca/, beside the directory the server reads


def ca_key_dir(out: Path) -> Path:
    """Where the CA key of the certificates in ``out`` is kept: a sibling directory (mode 0700) that never
    goes to the server, so a compromised server cannot mint device-trusted certificates."""
    return out.with_name(out.name + CA_KEY_DIR_SUFFIX)


SERVER_CERT, SERVER_KEY = "server.crt", "server.pem"
DEVICE_KEY_SUFFIX, DEVICE_PUB_SUFFIX = "", ".pub"  # <name> (private, OpenSSH) and <name>.pub
DEVICES_DIR = "devices"
OPERATOR_CERT_SUFFIX, OPERATOR_KEY_SUFFIX = ".crt", ".pem"  # <name>.crt and <name>.pem (private)


@dataclass(frozen=True)
class ServerPki:
    """Paths of the files a SuperLink needs (``--ssl-ca-certfile --ssl-certfile --ssl-keyfile``)."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class OperatorCredential:
    """What ``fedrec operator`` presents: the CA to verify the server, a client certificate and its key."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class DeviceKeys:
    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write atomically; private keys are created 0600 so they are never world-readable, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    return start, start + dt.timedelta(days=days)


def _alt_names(server_names: list[str], ips: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise FedrecError(f"--ip {ip!r} is not an IPv4 or IPv6 address") from None
    if not names:
        raise FedrecError("the server certificate needs at least one --server-name or --ip")
    return names


def create_ca(
    out: Path,
    common_name: str = "fedrec local CA",
    days: int = 3650,
    overwrite: bool = False,
    key_dir: Path | None = None,
) -> tuple[Path, Path]:
    """A self-signed CA that only signs certificates (path length 0: no intermediate CAs): its certificate
    in ``out``, its key in ``key_dir`` (default ``ca_key_dir(out)``).

    An existing CA is kept unless ``overwrite``: replacing it locks out every device that trusts it.
    """
    key_dir = ca_key_dir(out) if key_dir is None else key_dir
    if (out / CA_CERT).exists() and not overwrite:
        raise FedrecError(
            f"{out / CA_CERT} already exists; replacing the CA locks out every device that trusts it "
            f"(pass --force to do it anyway)"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    if key_dir != out:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_dir.chmod(0o700)
    _write(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_dir / CA_KEY, _pem_key(key), private=True)
    return out / CA_CERT, key_dir / CA_KEY


def load_ca(out: Path, key_dir: Path | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_path = (ca_key_dir(out) if key_dir is None else key_dir) / CA_KEY
    if not key_path.exists() and (out / CA_KEY).exists():
        raise FedrecError(
            f"{out / CA_KEY}: the CA key sits in the directory the server reads; move it to {key_path} "
            "(mode 0600, in a directory that never goes to the server)"
        )
    try:
        cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise FedrecError(f"{exc.filename}: CA not found (run `fedrec certs init` first)") from None
    except ValueError as exc:
        raise FedrecError(f"{out / CA_CERT}: cannot read the CA ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedrecError(f"{key_path}: expected an EC private key")
    return cert, key


def _issue(
    out: Path,
    common_name: str,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName],
    days: int,
    key_dir: Path | None = None,
) -> tuple[bytes, bytes]:
    """A leaf certificate and its key (PEM) signed by the CA of ``out`` for one purpose (TLS server or client)."""
    ca_cert, ca_key = load_ca(out, key_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    start, end = _validity(days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue_server_cert(
    out: Path, server_names: list[str], ips: list[str], days: int = 825, key_dir: Path | None = None
) -> ServerPki:
    """A TLS server certificate signed by the CA of ``out``, valid for every given name and address."""
    common_name = server_names[0] if server_names else ips[0] if ips else "fedrec-superlink"
    alt_names = _alt_names(server_names, ips)
    cert, key = _issue(out, common_name, ExtendedKeyUsageOID.SERVER_AUTH, alt_names, days, key_dir)
    _write(out / SERVER_CERT, cert)
    _write(out / SERVER_KEY, key, private=True)
    return ServerPki(out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY)


def issue_operator_cert(out: Path, name: str = "operator", days: int = 365) -> OperatorCredential:
    """A TLS *client* certificate for the operator: what the server's operator door asks for.

    Devices authenticate with SSH keys and hold no certificate from the CA, and the server's own
    certificate is for TLS servers only (extended key usage), so only this one opens the door.
    """
    if not name or "/" in name or name.startswith("."):
        raise FedrecError(f"operator name {name!r} must be a plain file name")
    cert, key = _issue(out, name, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)
    credential = OperatorCredential(
        out / CA_CERT, out / f"{name}{OPERATOR_CERT_SUFFIX}", out / f"{name}{OPERATOR_KEY_SUFFIX}"
    )
    _write(credential.cert, cert)
    _write(credential.key, key, private=True)
    return credential


def loopback_pki(out: Path) -> ServerPki:
    """A throwaway CA and a 127.0.0.1 certificate for the SuperLink behind the doors (fresh each start).

    Flower insists on TLS for SuperNode authentication; this keeps the inner hop independent of the
    public certificate's names. The CA key is deleted once the certificate is issued.
    """
    create_ca(out, common_name="fedrec loopback CA (one server start)", days=30, overwrite=True, key_dir=out)
    pki = issue_server_cert(out, ["localhost"], ["127.0.0.1"], days=30, key_dir=out)
    (out / CA_KEY).unlink()
    return pki


def create_device_keys(out: Path, name: str) -> DeviceKeys:
    """An EC P-384 key pair in OpenSSH format, the form SuperNode authentication reads."""
    if not name or "/" in name or name.startswith("."):
        raise FedrecError(f"device name {name!r} must be a plain file name")
    key = ec.generate_private_key(ec.SECP384R1())
    private = out / DEVICES_DIR / f"{name}{DEVICE_KEY_SUFFIX}"
    public = out / DEVICES_DIR / f"{name}{DEVICE_PUB_SUFFIX}"
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    _write(
        public,
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + f" {name}\n".encode(),
    )
    return DeviceKeys(private, public)


def device_public_keys(out: Path) -> list[Path]:
    """Every device public key created under ``out`` (what the server registers)."""
    return sorted((out / DEVICES_DIR).glob(f"*{DEVICE_PUB_SUFFIX}"))
