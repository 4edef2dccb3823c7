"""Epsilon of the shared-noise arms of a run when the server colludes with some of the devices.

    python -m bench.collusion_epsilon RUN_DIR [--fractions 0,0.1,0.25,0.5]

Under ``distributed`` and ``user`` each device adds 1/sqrt((1 - t) m_min) of the noise, t the arm's
``device.shared_noise.tolerated_collusion``, and the sum of m >= m_min shares carries sigma C / sqrt(1 - t).
Colluding devices can tell the server their own shares, which it then subtracts: with a fraction f of the m
devices colluding, what is left of the noise is sigma C sqrt((1 - f) m / ((1 - t) m_min)). This prints, for
the worst case m = m_min (the default: every device of the fleet), each arm's epsilon from its ledger
(``privacy/<arm>_ledger.csv``: the history every device shares) with every noise multiplier scaled by
sqrt((1 - f) / (1 - t)), capped at 1 (colluders below t leave the noise the ledger counts).
Accountant: Opacus RDP, as the devices use.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedrec.common.privacy import history_epsilon
from fedrec.simulations.audit.accounting import read_ledger

SHARED = ("federated_ddp", "federated_user_dp")


def colluded(
    history: tuple[tuple[float, float, int], ...], fraction: float, tolerated: float
) -> tuple[tuple[float, float, int], ...]:
    """The history whose noise the honest devices alone carry when ``fraction`` of them collude and the shares
    were sized for ``tolerated``."""
    scale = min(1.0, math.sqrt((1.0 - fraction) / (1.0 - tolerated)))
    return tuple((sigma * scale, q, steps) for sigma, q, steps in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--fractions", default="0,0.1,0.25,0.5")
    args = parser.parse_args()
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise SystemExit(f"--fractions: comma-separated numbers in [0, 1), got {args.fractions!r}") from None
    path = args.run_dir / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: not a finished run's report ({exc.__class__.__name__}: {exc})") from None
    table = Table(title=f"epsilon against a server colluding with a fraction f of the devices ({args.run_dir})")
    table.add_column("arm")
    table.add_column("tolerated")
    table.add_column("delta")
    for f in fractions:
        table.add_column(f"f = {f:g}", justify="right")
    for arm in SHARED:
        privacy = report["arms"].get(arm, {}).get("privacy")
        if privacy is None:
            continue
        devices = read_ledger(args.run_dir / "privacy" / privacy["ledger"])
        history = max((d.history for d in devices), key=lambda h: sum(s for *_, s in h))
        delta = float(privacy["delta"])
        shared = report["arms"][arm]["info"]["federation"]["device"]["shared_noise"]
        tolerated = float(shared.get("tolerated_collusion", 0.0))
        row = (f"{history_epsilon(colluded(history, f, tolerated), delta):.2f}" for f in fractions)
        table.add_row(arm, f"{tolerated:g}", f"{delta:g}", *row)
    Console().print(table)


if __name__ == "__main__":
    main()
