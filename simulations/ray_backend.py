"""Which Ray runs Flower's simulation engine: a private one on this machine, or an existing cluster.

Flower's ``RayBackend`` hands ``init_args`` to ``ray.init`` and calls ``ray.shutdown()`` when the run
ends. A private Ray (``address="local"``) is started for the run and ends with it; it never attaches to a
cluster that ``RAY_ADDRESS`` or a ``ray start`` on this machine happens to advertise. On an existing
cluster ``ray.shutdown()`` only disconnects this driver: the cluster's processes keep running, and only
the actors of this run end with it. The cluster owns its resources there, so ``ray.init`` refuses
``num_cpus`` and Flower sizes its actor pool from what the cluster's nodes offer.
"""

from __future__ import annotations

import socket
from typing import Any

from fedrec.common.errors import FedrecError

QUIET = {"logging_level": "error", "log_to_driver": False}
ONE_CPU_PER_ACTOR = {"num_cpus": 1, "num_gpus": 0.0}


def backend_config(nodes: int, ray_address: str = "") -> dict[str, Any]:
    """Flower's ``backend_config`` for ``run_simulation``: one CPU per ClientApp actor."""
    if ray_address:
        init_args = {"address": ray_address, **QUIET}
    else:
        init_args = {"address": "local", "num_cpus": nodes, "include_dashboard": False, **QUIET}
    return {"client_resources": dict(ONE_CPU_PER_ACTOR), "init_args": init_args}


def require_head(ray_address: str, timeout: float = 5.0) -> None:
    """Fail in one line when nothing listens at a host:port address: ray.init would retry forever."""
    if ray_address in ("", "auto"):
        return
    host, _, port = ray_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise FedrecError(f"simulation.ray_address: no Ray head answers at {ray_address} ({exc})") from None
