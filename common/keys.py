"""Where device-store keys come from: 32-byte key files, passphrases (scrypt) and per-device HKDF.

Every store is encrypted under one 32-byte *store key*. A ``KeyRecipe`` (public, kept in the store's
plaintext header) says how a person's secret turns into that key, so that ``fedrec store inspect
FILE --key-file F`` works on any store without knowing how it was provisioned:

- ``source="key"``: the secret is a 32-byte key (a key file);
- ``source="passphrase"``: the secret is scrypt(passphrase, salt) with the recorded salt and cost;
- ``per_device=True``: the store key is HKDF(secret, info=device id). Simulation provisioning uses
  this so one master secret opens a whole simulated fleet; real devices generate their own key
  (``create_key_file``) and never share a master.
Recipes hold no secret: salts and costs are public by design.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedrec.common.errors import FedrecError

KEY_BYTES = 32
SALT_BYTES = 16
# scrypt cost: 2**15 * 8 * 128 B = 32 MiB and ~0.1 s per derivation, the interactive setting
# recommended for scrypt; recorded in each recipe so that it can be raised later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_DEVICE_SALT = b"fedrec/device-key/v1"


class KeyFileError(FedrecError):
    """A key file is missing, has the wrong size, or is readable by others."""


def create_key_file(path: str | Path) -> bytes:
    """Write 32 fresh random bytes to ``path`` with mode 0600; refuse to overwrite an existing file."""
    path = Path(path)
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: key file already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create key file ({exc.strerror})") from None
    try:
        os.fchmod(fd, 0o600)  # umask may only have narrowed it, but be explicit
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_key_file(path: str | Path) -> bytes:
    """Read a 32-byte key file. Too-open permissions are an error (like ssh): a key others can read protects nothing."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path}: key file is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: key file mode is {stat.S_IMODE(info.st_mode):04o}, readable by others; run: chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: key file holds {len(key)} bytes, expected {KEY_BYTES}")
    return key


def key_from_passphrase(passphrase: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> bytes:
    """A 32-byte key from a passphrase with scrypt (the salt is stored, never the key)."""
    if not passphrase:
        raise KeyFileError("empty passphrase")
    return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    """One 32-byte sub-key per purpose, so no key is ever used for two jobs."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(key)


def derive_device_key(master: bytes, device_id: str) -> bytes:
    """Per-device key from one master secret (simulation only; real devices create their own key)."""
    if len(master) != KEY_BYTES:
        raise KeyFileError(f"master key must be {KEY_BYTES} bytes, got {len(master)}")
    return hkdf(master, b"device:" + device_id.encode("utf-8"), salt=_DEVICE_SALT)


def key_id(key: bytes) -> str:
    """A public fingerprint of a key (HKDF output, reveals nothing about the key) to say "wrong key" clearly."""
    return hkdf(key, b"fedrec/key-id/v1")[:16].hex()


@dataclass(frozen=True)
class KeyRecipe:
    """How a person's secret becomes a store key; public, stored in plaintext next to what it protects."""

    source: str = "key"  # "key": a 32-byte key file; "passphrase": scrypt(passphrase, salt)
    per_device: bool = False  # store key = HKDF(secret, device id)
    salt: bytes = b""
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def for_passphrase(cls, per_device: bool = False) -> KeyRecipe:
        return cls(source="passphrase", per_device=per_device, salt=os.urandom(SALT_BYTES))

    def secret(self, key_file: str | Path | None = None, passphrase: str | None = None) -> bytes:
        """The 32-byte secret (master when ``per_device``) from whatever the recipe expects."""
        if self.source == "passphrase":
            if passphrase is None:
                raise KeyFileError("this store is protected by a passphrase: give --passphrase-env VAR")
            return key_from_passphrase(passphrase, self.salt, self.n, self.r, self.p)
        if key_file is None:
            raise KeyFileError("this store is protected by a key file: give --key-file F")
        return load_key_file(key_file)

    def store_key(self, secret: bytes, device_id: str) -> bytes:
        return derive_device_key(secret, device_id) if self.per_device else secret

    def to_dict(self) -> dict:
        out: dict = {"source": self.source, "per_device": self.per_device}
        if self.source == "passphrase":
            out.update(salt=self.salt.hex(), scrypt={"n": self.n, "r": self.r, "p": self.p})
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> KeyRecipe:
        try:
            source = raw["source"]
            if source not in ("key", "passphrase"):
                raise ValueError(source)
            cost = raw.get("scrypt", {})
            return cls(
                source=source,
                per_device=bool(raw["per_device"]),
                salt=bytes.fromhex(raw.get("salt", "")),
                n=int(cost.get("n", SCRYPT_N)),
                r=int(cost.get("r", SCRYPT_R)),
                p=int(cost.get("p", SCRYPT_P)),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyFileError(f"unreadable key recipe {raw!r}") from None


def passphrase_from_env(var: str | None) -> str | None:
    """A passphrase from an environment variable (never from the command line, where ``ps`` would show it)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise KeyFileError(f"environment variable {var} is not set or empty (it should hold the passphrase)")
    return value
