"""A one-line refusal, before the work starts, of an allocation this machine cannot hold."""

from __future__ import annotations

from pathlib import Path

from fedrec.common.errors import FedrecError

MEMINFO = Path("/proc/meminfo")


def available_bytes() -> int | None:
    """The kernel's estimate of the memory a new allocation can get (MemAvailable); None off Linux."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def require_memory(needed: float, what: str) -> None:
    """Refuse ``what`` when its estimated ``needed`` bytes exceed what the machine has available."""
    available = available_bytes()
    if available is not None and needed > available:
        raise FedrecError(f"{what} needs about {gib(needed)} of memory; this machine has {gib(available)} available")
