"""Means with 95% intervals over seeds (Student t), as docs/protocol.md asks where more than one seed runs."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_ci(values: list[float] | np.ndarray, confidence: float = 0.95) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean()) if len(arr) else float("nan")
    if len(arr) < 2:
        return {"mean": mean, "ci95": [mean, mean], "n": int(len(arr))}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": int(len(arr))}


def summarize_runs(per_seed: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, dict]]:
    """Per-key means (the report's headline) and their intervals."""
    keys = per_seed[0].keys()
    detail = {k: mean_ci([run[k] for run in per_seed]) for k in keys}
    return {k: v["mean"] for k, v in detail.items()}, detail


def ratio_ci(
    numerator: list[float] | np.ndarray, denominator: list[float] | np.ndarray, confidence: float = 0.95
) -> dict | None:
    """mean(numerator) / mean(denominator) with Fieller's interval over paired replicates.

    None when the denominator's own interval contains 0: the ratio's interval is then unbounded.
    """
    a, d = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    n = len(a)
    if n < 2 or len(d) != n:
        return None
    t2 = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) ** 2
    ma, md = a.mean(), d.mean()
    cov = np.cov(a, d, ddof=1) / n
    qa = md * md - t2 * cov[1, 1]
    if qa <= 0:
        return None
    qb = ma * md - t2 * cov[0, 1]
    qc = ma * ma - t2 * cov[0, 0]
    root = np.sqrt(max(qb * qb - qa * qc, 0.0))
    return {"mean": float(ma / md), "ci95": [float((qb - root) / qa), float((qb + root) / qa)], "n": n}
