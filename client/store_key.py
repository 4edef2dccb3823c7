"""A device's store key from its key file, via the public key recipe in the store's header."""

from __future__ import annotations

from pathlib import Path

from fedrec.common.errors import FedrecError
from fedrec.common.keys import load_key_file
from fedrec.common.store import header_recipe, peek_header


def store_key(store: Path, key_file: Path) -> bytes:
    """The store key from the device's key file, via the store's public recipe.

    A provisioned store derives its key from a secret and its device id; handing a device its own
    secret is ``fedrec store rotate-key STORE --key-file master.key --new-key-file device.key``.
    """
    header = peek_header(store)
    recipe = header_recipe(header, store)
    if recipe.source != "key":
        raise FedrecError(
            f"{store}: protected by a passphrase; a device needs a key file "
            f"(fedrec store rotate-key {store} --passphrase-env VAR --new-key-file FILE)"
        )
    return recipe.store_key(load_key_file(key_file), header["store_id"])
