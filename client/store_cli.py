"""``fedrec store``: look inside a device store (integrity first, content only on request) and re-key it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from fedrec.common.errors import FedrecError
from fedrec.common.files import writable_dir
from fedrec.common.keys import KeyRecipe, create_key_file, key_id, load_key_file, passphrase_from_env
from fedrec.common.store import DeviceStore, header_recipe, peek_header, rotate_key

store_app = typer.Typer(no_args_is_help=True, help="Inspect and re-key encrypted device stores.")
out = Console()
err = Console(stderr=True)

KEY_FILE_HELP = "Key file (32 bytes, mode 0600): the store key, or the master secret of a provisioned fleet."
PASS_HELP = "Name of an environment variable holding the passphrase (never pass it on the command line)."


class _Keys:
    """Turns the person's secret into each store's key via the store's public recipe; scrypt runs once per salt."""

    def __init__(self, key_file: Optional[Path], passphrase_env: Optional[str]) -> None:
        if key_file is not None and passphrase_env is not None:
            raise FedrecError("give either --key-file or --passphrase-env, not both")
        self.key_file = key_file
        self.passphrase = passphrase_from_env(passphrase_env)
        self._secrets: dict[bytes, bytes] = {}

    def for_store(self, path: Path) -> bytes:
        header = peek_header(path)
        recipe = header_recipe(header, path)
        cache_key = recipe.salt if recipe.source == "passphrase" else b"key-file"
        if cache_key not in self._secrets:
            self._secrets[cache_key] = recipe.secret(key_file=self.key_file, passphrase=self.passphrase)
        return recipe.store_key(self._secrets[cache_key], header["store_id"])


def _say(line: str) -> None:
    """One line per store, never wrapped or styled: paths stay whole for whoever reads or parses them."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def _already_under(new_keys: _Keys, path: Path) -> bool:
    """Whether the store's key already comes from the new secret (its recipe names the new secret's kind
    and the key it gives matches the store's fingerprint)."""
    header = peek_header(path)
    wanted = "key" if new_keys.key_file is not None else "passphrase"
    if header_recipe(header, path).source != wanted:
        return False
    return key_id(new_keys.for_store(path)) == header["key_id"]


@store_app.command("inspect")
def inspect(
    file: Path = typer.Argument(..., help="A device store (.db)."),
    key_file: Optional[Path] = typer.Option(None, help=KEY_FILE_HELP),
    passphrase_env: Optional[str] = typer.Option(None, help=PASS_HELP),
    decrypt: bool = typer.Option(False, help="Also show the events and state sizes (content)."),
    limit: int = typer.Option(20, min=0, help="With --decrypt: events to show (0 = all)."),
    min_generation: int = typer.Option(0, help="Refuse a store older than this generation (a counter you trust)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Schema version, counts and a full integrity check; exits non-zero on any failure."""
    key = _Keys(key_file, passphrase_env).for_store(file)
    with DeviceStore.open(file, key, min_generation=min_generation) as store:
        store.verify()
        info = store.info() | {"integrity": "ok"}
        events = store.read_events(None) if decrypt else None
    if events is not None:
        shown = len(events) if limit == 0 else min(limit, len(events))
        info["events_shown"] = [
            {
                "split": "-" if events.splits is None else str(events.splits[i]),  # a store always has splits
                "event_type": str(events.event_types[i]),
                "item": int(events.items[i]),
                "timestamp": int(events.timestamps[i]),
                "value": None if np.isnan(events.values[i]) else float(events.values[i]),
            }
            for i in range(shown)
        ]
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(title=f"{file}", show_header=False)
    for field in ("store_id", "format", "schema_version", "generation", "chunks", "integrity"):
        table.add_row(field, str(info[field]))
    table.add_row("events", ", ".join(f"{k} {v}" for k, v in info["events"].items()))
    table.add_row("state", ", ".join(f"{k} ({v} B)" for k, v in info["state"].items()) or "-")
    table.add_row("key", json.dumps(info["key_recipe"]))
    out.print(table)
    if events is not None:
        rows = Table(
            "split", "type", "item", "time (UTC)", "value", title=f"{len(info['events_shown'])} of {len(events)} events"
        )
        for e in info["events_shown"]:
            when = dt.datetime.fromtimestamp(e["timestamp"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            rows.add_row(
                e["split"], e["event_type"], str(e["item"]), when, "" if e["value"] is None else f"{e['value']:g}"
            )
        out.print(rows)


@store_app.command("rotate-key")
def rotate(
    files: list[Path] = typer.Argument(..., help="Device stores to re-key (each one atomically)."),
    key_file: Optional[Path] = typer.Option(None, help="Current " + KEY_FILE_HELP[0].lower() + KEY_FILE_HELP[1:]),
    passphrase_env: Optional[str] = typer.Option(None, help="Current passphrase: " + PASS_HELP),
    new_key_file: Optional[Path] = typer.Option(None, help="New key file; created (mode 0600) if missing."),
    new_passphrase_env: Optional[str] = typer.Option(None, help="New passphrase: " + PASS_HELP),
) -> None:
    """Re-encrypt stores under a new key. A crash leaves each store wholly old-key or wholly new-key.

    A store provisioned from a master secret stays per-device: its new key is derived from the new secret
    and its device id, so rotating a fleet's stores with one new key file keeps them under one master.
    Re-running an interrupted rotation with the same arguments resumes it: stores already under the new
    key are recognised and skipped.
    """
    if (new_key_file is None) == (new_passphrase_env is None):
        raise FedrecError("give exactly one of --new-key-file or --new-passphrase-env")
    for folder in sorted({file.parent for file in files if file.parent.is_dir()}):
        writable_dir(folder, "FILES")  # each store is replaced beside itself: checked before a new key is made
    old_keys = _Keys(key_file, passphrase_env)
    new_passphrase = passphrase_from_env(new_passphrase_env)
    if new_key_file is not None:
        new_secret = load_key_file(new_key_file) if new_key_file.exists() else create_key_file(new_key_file)
        base = KeyRecipe(source="key")
    else:
        base = KeyRecipe.for_passphrase()
        new_secret = base.secret(passphrase=new_passphrase)
    new_keys = _Keys(new_key_file, new_passphrase_env)
    for file in files:
        if _already_under(new_keys, file):
            _say(f"skipped {file}: already under the new key (rotated by an earlier run)")
            continue
        old_key = old_keys.for_store(file)
        header = peek_header(file)
        old_recipe = header_recipe(header, file)
        recipe = KeyRecipe(**{**base.__dict__, "per_device": old_recipe.per_device})
        generation = rotate_key(file, old_key, recipe.store_key(new_secret, header["store_id"]), recipe)
        _say(f"rotated {file} (generation {generation})")
