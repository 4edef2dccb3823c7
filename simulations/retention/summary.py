"""From per-cell simulated metrics to what the report states: means, 95% intervals, paired differences
against the reference arm and popularity, the gap-closed ratio rho, and the checks docs/protocol.md says
must hold. A cell is one (training seed, simulator seed) pair; every arm of a cell shares its draws."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fedrec.simulations.retention.engine import GREEDY, POPULARITY
from fedrec.simulations.stats import mean_ci, ratio_ci

METRICS = ("d1", "d7", "d30", "active_days", "satisfaction")
RETENTION_METRICS = ("d1", "d7", "d30", "active_days")
RHO_METRICS = ("d30", "active_days")
CALIBRATION_TOLERANCE = 0.02
ZERO = "0"

Nested = dict[str, dict[str, dict[str, dict]]]  # arm -> oracle -> beta -> value


def _cells(per_seed: list[Nested]) -> Iterator[tuple[str, str, str]]:
    first = per_seed[0]
    for arm, by_oracle in first.items():
        for oracle, by_beta in by_oracle.items():
            for beta in by_beta:
                yield arm, oracle, beta


def _put(tree: dict, arm: str, oracle: str, beta: str, value: object) -> None:
    tree.setdefault(arm, {}).setdefault(oracle, {})[beta] = value


def intervals(per_seed: list[Nested]) -> Nested:
    out: dict = {}
    for arm, oracle, beta in _cells(per_seed):
        _put(out, arm, oracle, beta, {m: mean_ci([s[arm][oracle][beta][m] for s in per_seed]) for m in METRICS})
    return out


def means(ci: Nested) -> Nested:
    return {
        arm: {o: {b: {m: v["mean"] for m, v in cell.items()} for b, cell in bo.items()} for o, bo in ao.items()}
        for arm, ao in ci.items()
    }


def paired(per_seed: list[Nested], reference: str) -> Nested:
    """Cell-by-cell differences arm - reference: common random numbers make these much tighter than the
    difference of two separate intervals."""
    out: dict = {}
    for arm, oracle, beta in _cells(per_seed):
        if arm in (reference, GREEDY) or reference not in per_seed[0]:
            continue
        _put(
            out,
            arm,
            oracle,
            beta,
            {m: mean_ci([s[arm][oracle][beta][m] - s[reference][oracle][beta][m] for s in per_seed]) for m in METRICS},
        )
    return out


def rho(per_seed: list[Nested], reference: str) -> Nested:
    """(R_arm - R_pop) / (R_ref - R_pop) with Fieller's 95% interval over cells; None where the reference
    is not clearly apart from popularity (the denominator's interval contains 0): noise over noise."""
    out: dict = {}
    if reference not in per_seed[0] or POPULARITY not in per_seed[0] or reference == POPULARITY:
        return out
    for arm, oracle, beta in _cells(per_seed):
        values = {}
        for m in RHO_METRICS:
            pop = [s[POPULARITY][oracle][beta][m] for s in per_seed]
            values[m] = ratio_ci(
                [s[arm][oracle][beta][m] - p for s, p in zip(per_seed, pop)],
                [s[reference][oracle][beta][m] - p for s, p in zip(per_seed, pop)],
            )
        _put(out, arm, oracle, beta, values)
    return out


def _beta_order(by_beta: dict) -> list[str]:
    return sorted(by_beta, key=float)


def check_identical_at_zero(per_seed: list[Nested]) -> dict:
    worst = 0.0
    for s in per_seed:
        for oracle in next(iter(s.values())):
            cells = [s[arm][oracle][ZERO] for arm in s if oracle in s[arm]]
            for m in RETENTION_METRICS:
                values = [c[m] for c in cells]
                worst = max(worst, max(values) - min(values))
    return {"holds": worst == 0.0, "max_abs_diff": worst}


def check_monotone(mean: Nested, s_ref: dict[str, float]) -> dict:
    """Arms better than popularity (mean satisfaction at beta 0 above S_ref) must gain retention with beta."""
    out: dict = {}
    for arm, by_oracle in mean.items():
        if arm == POPULARITY:
            continue
        for oracle, by_beta in by_oracle.items():
            order = _beta_order(by_beta)
            better = by_beta[ZERO]["satisfaction"] > s_ref[oracle]
            series = {m: [by_beta[b][m] for b in order] for m in RHO_METRICS}
            rises = all(np.all(np.diff(v) >= 0) for v in series.values())
            falls = all(np.all(np.diff(v) <= 0) for v in series.values())
            out.setdefault(arm, {})[oracle] = {
                "better_than_popularity": bool(better),
                "rises_with_beta": bool(rises),
                "falls_with_beta": bool(falls),
                "holds": bool(rises or not better),
            }
    return {"holds": all(c["holds"] for ao in out.values() for c in ao.values()), "by_arm": out}


def _why(winner: str, loser: str, first_slate: dict, oracle: str) -> str:
    """A measured reason for an arm expected below (winner) beating one expected above (loser): the first
    slate's expected picks and the share of them liked, which together make its satisfaction."""
    if loser == GREEDY:
        return "greedy serves the oracle's own top items, so it can only lose on ties"
    parts = []
    for arm in (winner, loser):
        c = first_slate.get(arm, {}).get(oracle)
        if c:
            liked = c["liked_picks"] / c["picks"] if c["picks"] > 0 else 0.0
            parts.append(f"{arm}'s first slate holds {c['picks']:.3f} expected picks, {liked:.0%} of them liked")
    return "; ".join(parts) or f"{loser} serves items the oracle rates less likely to be picked and liked"


def check_ordering(mean: Nested, reference: str, first_slate: dict | None = None) -> dict:
    """oracle-greedy >= reference (centralized) >= popularity >= random on mean satisfaction at beta 0."""
    out: dict = {}
    for oracle in mean.get(GREEDY, {}):
        chain = [a for a in (GREEDY, reference, POPULARITY, "random") if a in mean and oracle in mean[a]]
        values = {a: mean[a][oracle][ZERO]["satisfaction"] for a in chain}
        broken = [(hi, lo) for hi, lo in zip(chain, chain[1:]) if values[hi] < values[lo]]
        out[oracle] = {
            "order": chain,
            "satisfaction": values,
            "holds": not broken,
            "why_not": [f"{lo} > {hi}: {_why(lo, hi, first_slate or {}, oracle)}" for hi, lo in broken],
        }
    return out


def check_calibration(mean: Nested, observed: dict) -> dict:
    """At beta 0 every arm has the same retention, so any arm's numbers are the cohort's."""
    cell = next(iter(next(iter(mean.values())).values()))[ZERO]
    out = {}
    for key in ("d1", "d7", "d30"):
        diff = cell[key] - observed[key]
        out[key] = {
            "simulated": cell[key],
            "observed": observed[key],
            "diff": diff,
            "within_tolerance": bool(abs(diff) <= CALIBRATION_TOLERANCE),
        }
    return {"tolerance": CALIBRATION_TOLERANCE, "holds": all(v["within_tolerance"] for v in out.values()), **out}


def summarize(
    per_seed: list[Nested], observed: dict, s_ref: dict[str, float], reference: str, first_slate: dict | None = None
) -> dict:
    ci = intervals(per_seed)
    mean = means(ci)
    return {
        "mean": mean,
        "ci95": ci,
        "paired_vs_reference": paired(per_seed, reference),
        "paired_vs_popularity": paired(per_seed, POPULARITY) if reference != POPULARITY else {},
        "rho": rho(per_seed, reference),
        "checks": {
            "identical_at_beta_0": check_identical_at_zero(per_seed),
            "monotone_in_beta": check_monotone(mean, s_ref),
            "satisfaction_ordering": check_ordering(mean, reference, first_slate),
            "calibration": check_calibration(mean, observed),
        },
    }
