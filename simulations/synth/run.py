"""``fedrec data synth``: fit to the source dataset, then stream the population to a CSV."""

from __future__ import annotations

from pathlib import Path

from fedrec.common.datasets import load_dataset
from fedrec.simulations.synth.fit import fit_synth
from fedrec.simulations.synth.generate import check_out, check_sizes, write_csv


def synth_csv(
    out: Path, n_users: int, n_items: int, seed: int, source: str = "ml-100k", data_dir: str | None = None
) -> str:
    """Checks the arguments before the fit (seconds), so that a typo fails at once."""
    check_sizes(n_users, n_items)
    check_out(out)
    stats = fit_synth(load_dataset(source, data_dir))
    total = write_csv(stats, n_users, n_items, seed, out)
    return f"wrote {total} interactions ({n_users} users x {n_items} items, seed {seed}, fitted to {stats.source}) to {out}"
