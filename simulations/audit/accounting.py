"""Re-check the ledgers: every device's epsilon recomputed by a second, independent accountant.

The devices account with Opacus' RDP accountant; here Google's dp_accounting recomputes each device's
epsilon from the same history (Poisson-subsampled Gaussian, composed ``steps`` times per entry) on the
same grid of Renyi orders, so the two numbers differ only by implementation. A relative gap above
``TOLERANCE`` on any device, or a report that claims less than its ledger, is flagged.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant

from fedrec.common.errors import DataError

TOLERANCE = 0.01
LEDGER_COLUMNS = ("device_id", "noise_multiplier", "sample_rate", "steps", "epsilon")
ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)  # the grid the devices use; a coarser grid alone moves epsilon

History = tuple[tuple[float, float, int], ...]


@dataclass(frozen=True)
class DeviceLedger:
    device_id: str
    history: History
    epsilon: float  # what the device's ledger claims


def read_ledger(path: Path) -> list[DeviceLedger]:
    """Rows grouped by device, in file order; the claimed epsilon must be the same on every row of a device."""
    try:
        fh = path.open(newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: ledger not found") from None
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in LEDGER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        entries: dict[str, list[tuple[float, float, int]]] = {}
        claimed: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            try:
                entry = (float(row["noise_multiplier"]), float(row["sample_rate"]), int(row["steps"]))
                eps = float(row["epsilon"])
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line}: unparsable number in {row}") from None
            device = row["device_id"]
            if device in claimed and claimed[device] != eps:
                raise DataError(f"{path}:{line}: device {device} has two different epsilon values")
            entries.setdefault(device, []).append(entry)
            claimed[device] = eps
    return [DeviceLedger(d, tuple(h), claimed[d]) for d, h in entries.items()]


@lru_cache(maxsize=4096)
def recompute_epsilon(history: History, delta: float) -> float:
    """dp_accounting's RDP epsilon of one device's history (cached: devices often share a history)."""
    if not history:
        return 0.0
    accountant = RdpAccountant(orders=list(ORDERS))
    for sigma, q, steps in history:
        if steps > 0:
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
            accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def relative_gap(a: float, b: float) -> float:
    if a == b:  # covers 0 == 0 and inf == inf
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def check_ledger(devices: list[DeviceLedger], delta: float, claimed_max: float | None = None) -> dict:
    """Per-arm summary: claimed vs recomputed epsilon, and which devices disagree beyond the tolerance."""
    if not devices:
        raise DataError("ledger holds no device")
    claimed = np.array([d.epsilon for d in devices])
    absl = logging.getLogger("absl")  # dp_accounting logs every fractional order it cannot evaluate
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        recomputed = np.array([recompute_epsilon(d.history, delta) for d in devices])
    finally:
        absl.setLevel(level)
    gaps = np.array([relative_gap(a, b) for a, b in zip(claimed, recomputed)])
    flagged = [d.device_id for d, g in zip(devices, gaps) if g > TOLERANCE]
    report_gap = None if claimed_max is None else relative_gap(claimed_max, float(recomputed.max()))
    agree = not flagged and (report_gap is None or report_gap <= TOLERANCE)
    return {
        "n_devices": len(devices),
        "delta": delta,
        "epsilon_max": float(claimed.max()),
        "epsilon_median": float(np.median(claimed)),
        "epsilon_recomputed_max": float(recomputed.max()),
        "epsilon_recomputed_median": float(np.median(recomputed)),
        "max_relative_gap": float(gaps.max()),
        "report_epsilon_max": claimed_max,
        "report_relative_gap": report_gap,
        "tolerance": TOLERANCE,
        "agree": bool(agree),
        "flagged_devices": flagged[:20],
        "n_flagged": len(flagged),
        "steps_max": int(max(sum(s for _, _, s in d.history) for d in devices)),
        "accountants": ["opacus RDPAccountant (devices)", "dp_accounting RdpAccountant (audit)"],
        "per_device": {"claimed": claimed.tolist(), "recomputed": recomputed.tolist()},
    }
