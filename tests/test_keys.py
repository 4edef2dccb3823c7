"""Key files, passphrases, per-device keys and recipes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedrec.common.errors import FedrecError
from fedrec.common.keys import (
    KeyFileError,
    KeyRecipe,
    create_key_file,
    derive_device_key,
    key_from_passphrase,
    key_id,
    load_key_file,
    passphrase_from_env,
)


def test_create_and_load_key_file(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    key = create_key_file(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == key
    assert create_key_file(tmp_path / "other.key") != key


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    key = create_key_file(path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_key_file(path)
    assert load_key_file(path) == key


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_key_file(tmp_path / "missing.key")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="31 bytes, expected 32"):
        load_key_file(short)
    loose = tmp_path / "loose.key"
    create_key_file(loose)
    loose.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(loose)
    assert issubclass(KeyFileError, FedrecError)


def test_passphrase_is_deterministic_per_salt() -> None:
    a = key_from_passphrase("correct horse", b"s" * 16, n=2**10)
    assert a == key_from_passphrase("correct horse", b"s" * 16, n=2**10)
    assert a != key_from_passphrase("correct horse", b"t" * 16, n=2**10)
    assert a != key_from_passphrase("correct horsf", b"s" * 16, n=2**10)
    with pytest.raises(KeyFileError):
        key_from_passphrase("", b"s" * 16)


def test_device_keys_differ_and_master_is_checked() -> None:
    master = os.urandom(32)
    one, two = derive_device_key(master, "device-00001"), derive_device_key(master, "device-00002")
    assert len(one) == 32 and one != two and one != master
    assert derive_device_key(master, "device-00001") == one
    with pytest.raises(KeyFileError):
        derive_device_key(b"short", "device-00001")


def test_key_id_is_a_fingerprint_not_the_key() -> None:
    key = os.urandom(32)
    assert key_id(key) == key_id(key) != key_id(os.urandom(32))
    assert key.hex()[:32] != key_id(key)


def test_recipe_round_trip_and_resolution(tmp_path: Path, monkeypatch) -> None:
    recipe = KeyRecipe(source="passphrase", per_device=True, salt=b"\x01" * 16, n=2**10)
    assert KeyRecipe.from_dict(recipe.to_dict()) == recipe
    assert set(recipe.to_dict()) == {"source", "per_device", "salt", "scrypt"}
    monkeypatch.setenv("PW", "pass phrase")
    secret = recipe.secret(passphrase=passphrase_from_env("PW"))
    assert recipe.store_key(secret, "d1") == derive_device_key(secret, "d1")
    with pytest.raises(KeyFileError, match="--passphrase-env"):
        recipe.secret(key_file=tmp_path / "k")
    with pytest.raises(KeyFileError, match="not set"):
        passphrase_from_env("FEDREC_SURELY_UNSET")
    plain = KeyRecipe()
    create_key_file(tmp_path / "k")
    assert plain.store_key(plain.secret(key_file=tmp_path / "k"), "d1") == load_key_file(tmp_path / "k")
    with pytest.raises(KeyFileError):
        KeyRecipe.from_dict({"source": "magic", "per_device": False})
