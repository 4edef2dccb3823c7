"""The device's commands: `fedrec client` (a SuperNode), `fedrec recommend` (on-device top-k), `fedrec store`.

Each command imports what it runs inside its body (marked "lazy: CLI start-up"), so that `fedrec --help` loads
no flwr or torch; none of these imports hides a cycle (tests/test_import_cycles.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedrec.client.store_cli import store_app
from fedrec.common.cli import say
from fedrec.common.errors import FedrecError
from fedrec.common.model_names import canonical
from fedrec.common.policy import DevicePolicy
from fedrec.common.settings import SettingError

app = typer.Typer()
OWNER = DevicePolicy()  # a deployed device's defaults
app.add_typer(store_app, name="store")


@app.command()
def client(
    store: Optional[Path] = typer.Option(None, help="This device's encrypted store."),
    key_file: Optional[Path] = typer.Option(None, help="The store's 32-byte key file."),
    superlink: str = typer.Option(..., help="SuperLink address HOST:PORT."),
    root_cert: Path = typer.Option(..., help="CA certificate that signed the SuperLink's certificate."),
    auth_key: Path = typer.Option(..., help="This device's private authentication key (`fedrec certs device`)."),
    port: Optional[int] = typer.Option(None, help="Local SuperNode runtime port (default: a free one)."),
    max_wait: Optional[float] = typer.Option(None, help="Give up if the SuperLink is unreachable this many seconds."),
    quiet: bool = typer.Option(False, help="Do not echo the SuperNode's log."),
    stores_dir: Optional[Path] = typer.Option(None, help="Gateway: a provisioned dir; serve all its devices."),
    master_key_file: Optional[Path] = typer.Option(None, help="Gateway: the group's master key file."),
    require_secure_aggregation: bool = typer.Option(
        False, help="Answer train requests only under secure aggregation (SecAgg+); refuse plain ones."
    ),
    min_noise_multiplier: float = typer.Option(
        OWNER.min_noise_multiplier, help="Refuse a DP round with less noise (the mechanism's multiplier)."
    ),
    max_epsilon: float = typer.Option(
        OWNER.max_epsilon, help="Lifetime epsilon per unit on this store, over every run: refuse rounds past it."
    ),
    max_delta: float = typer.Option(OWNER.max_delta, help="Refuse a round whose delta is larger."),
    min_devices: int = typer.Option(
        OWNER.min_devices, help="Shared noise: refuse a round whose noise needs fewer devices' shares."
    ),
    min_secagg_threshold: int = typer.Option(
        OWNER.min_secagg_threshold, help="Refuse a SecAgg+ round whose reconstruction threshold is lower."
    ),
    allow_non_private: bool = typer.Option(
        OWNER.allow_non_private, help="Also train without DP (the update then carries this device's records)."
    ),
    allow_model: list[str] = typer.Option(
        [], help="A model of one's own (module:Class or file.py:Class) this device may load; repeat for more."
    ),
) -> None:
    """Run this device (or a gateway for a group of devices) as a Flower SuperNode that trains when asked,
    within its owner's privacy policy (the limits below; the server can only ask for stricter ones)."""
    # lazy: CLI start-up
    from fedrec.client.supernode import ClientSettings, run_client

    try:
        policy = DevicePolicy(
            allow_non_private,
            min_noise_multiplier,
            max_delta,
            max_epsilon,
            min_devices,
            min_secagg_threshold,
            ",".join(canonical(kind) for kind in allow_model),
        )
    except SettingError as exc:
        raise FedrecError(f"fedrec client: --{exc.field.replace('_', '-')}: {exc}") from None

    run_client(
        ClientSettings(
            store,
            key_file,
            superlink,
            root_cert,
            auth_key,
            port,
            max_wait,
            stores_dir,
            master_key_file,
            require_secure_aggregation,
            policy,
        ),
        say,
        echo=not quiet,
    )


@app.command()
def recommend(
    store: Path = typer.Option(..., help="This device's encrypted store."),
    key_file: Path = typer.Option(..., help="The store's key file."),
    model: Path = typer.Option(..., help="global_model.pt (model.json beside it)."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="How many items."),
    manifest: Optional[Path] = typer.Option(
        None, help="Provisioning manifest with the item catalogue (default: found beside the store)."
    ),
    state_prefix: Optional[str] = typer.Option(
        None, help="State-name prefix the device trained under (default: the run's)."
    ),
    allow_model: list[str] = typer.Option(
        [], help="The run's model of one's own (module:Class or file.py:Class), when you installed and trust it."
    ),
) -> None:
    """Top-k unseen items for this device's user, computed on the device."""
    # lazy: CLI start-up
    from fedrec.client.recommend import recommend as top_k

    for rec in top_k(store, key_file, model, k, manifest, state_prefix, ",".join(map(canonical, allow_model))):
        print(f"{rec.rank:>3}  {rec.item_id:>8}  {rec.score:8.3f}  {rec.title or ''}".rstrip())
