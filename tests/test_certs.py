"""The local PKI: certificates verify the way TLS clients check them, device keys load as Flower loads them."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from fedrec_cli import call_fedrec

from fedrec.common.certs import create_ca, create_device_keys, device_public_keys, issue_server_cert
from fedrec.common.errors import FedrecError


@pytest.fixture()
def pki(tmp_path):
    create_ca(tmp_path)
    return issue_server_cert(tmp_path, ["localhost"], ["127.0.0.1"])


def test_server_certificate_names_and_chain(pki):
    cert = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _handshake(pki, ca_file, server_hostname: str) -> None:
    """A real TLS handshake on loopback with Python's default (strict) client checks."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.cert, pki.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca_file))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            with client_ctx.wrap_socket(sock, server_hostname=server_hostname):
                pass
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_tls_handshake_verifies_for_every_alt_name(pki, name):
    _handshake(pki, pki.ca_cert, name)


def test_tls_refuses_other_ca_and_other_name(pki, tmp_path):
    other = tmp_path / "other"
    create_ca(other)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(pki, other / "ca.crt", "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(pki, pki.ca_cert, "fl.example.org")


def test_device_keys_are_what_supernode_auth_reads(tmp_path):
    keys = create_device_keys(tmp_path, "phone-7")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert device_public_keys(tmp_path) == [keys.public_key]


def test_refusals(tmp_path):
    create_ca(tmp_path)
    with pytest.raises(FedrecError, match="already exists"):
        create_ca(tmp_path)
    with pytest.raises(FedrecError, match="at least one"):
        issue_server_cert(tmp_path, [], [])
    with pytest.raises(FedrecError, match="not an IPv4"):
        issue_server_cert(tmp_path, [], ["300.1.1.1"])
    with pytest.raises(FedrecError, match="plain file name"):
        create_device_keys(tmp_path, "../evil")
    with pytest.raises(FedrecError, match="CA not found"):
        issue_server_cert(tmp_path / "empty", ["localhost"], [])


def test_the_ca_key_never_sits_where_the_server_reads(tmp_path, monkeypatch, capsys):
    out = tmp_path / "pki"
    done = call_fedrec(monkeypatch, capsys, "certs", "init", "--out", str(out), "--server-name", "localhost")
    assert done.code == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "server.crt", "server.pem"]
    key = tmp_path / "pki-ca" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert f"CA key {key} (keep it off the server" in done.stderr
    # signing reads it from there; a key an older init left beside the certificates is refused in one line
    assert call_fedrec(monkeypatch, capsys, "certs", "operator", "--out", str(out)).code == 0
    key.rename(out / "ca.key")
    moved = call_fedrec(monkeypatch, capsys, "certs", "server", "--out", str(out), "--ip", "127.0.0.1")
    assert moved.code == 1 and moved.stderr.strip() == (
        f"error: {out / 'ca.key'}: the CA key sits in the directory the server reads; move it to {key} "
        "(mode 0600, in a directory that never goes to the server)"
    )
