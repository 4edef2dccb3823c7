"""The retention section's first sentence: where the private arm lands at beta 2, under every user model.

The private arm is the default run's (`federated_ddp`) when the run has it, else the most accurate (test HR@10) private arm
present; accuracy picks it, not retention, so the choice does not select on the outcome it reports.
"""

from __future__ import annotations

from fedrec.simulations.arms.table import DEFAULT_PRIVATE_ARM, PRIVATE_ARMS
from fedrec.simulations.retention.engine import POPULARITY

HEADLINE_BETA = "2"
PREFERRED_PRIVATE = DEFAULT_PRIVATE_ARM
FEDERATED = "federated"
HEADLINE_METRICS = ("d30", "active_days")


def private_arms(report_arms: dict, simulated: list[str]) -> list[str]:
    """Arms with a privacy record (or a DP arm's name) among those simulated."""
    return [
        a
        for a in simulated
        if "privacy" in report_arms.get(a, {}) or a in PRIVATE_ARMS or a.startswith(PREFERRED_PRIVATE)
    ]


def _accuracy(report_arms: dict, arm: str) -> float:
    return report_arms.get(arm, {}).get("accuracy", {}).get("hr@10", float("-inf"))


def best_private(report_arms: dict, simulated: list[str]) -> str | None:
    private = private_arms(report_arms, simulated)
    return max(private, key=lambda a: _accuracy(report_arms, a)) if private else None


def headline_arm(report_arms: dict, simulated: list[str]) -> tuple[str | None, str]:
    if PREFERRED_PRIVATE in simulated:
        return PREFERRED_PRIVATE, "the default private arm"
    best = best_private(report_arms, simulated)
    if best:
        return best, f"the most accurate private arm present (no {PREFERRED_PRIVATE} in this run)"
    return None, f"no private arm in this run (arms: {', '.join(simulated)})"


def _cell(tree: dict, arm: str, oracle: str) -> dict:
    return tree.get(arm, {}).get(oracle, {}).get(HEADLINE_BETA, {})


def headline(report_arms: dict, simulated: list[str], summary: dict, reference: str) -> dict:
    """Structured numbers behind the sentence (the report renders them; nothing here is recomputed later)."""
    arm, why = headline_arm(report_arms, simulated)
    shown = arm or reference
    oracles = list(summary["ci95"].get(shown, {}))
    by_oracle = {}
    for oracle in oracles:
        by_oracle[oracle] = {
            **{m: _cell(summary["ci95"], shown, oracle).get(m) for m in HEADLINE_METRICS},
            "vs_reference": {m: _cell(summary["paired_vs_reference"], shown, oracle).get(m) for m in HEADLINE_METRICS},
            "vs_popularity": {
                m: _cell(summary["paired_vs_popularity"], shown, oracle).get(m) for m in HEADLINE_METRICS
            },
        }
    rho_arms = [a for a in dict.fromkeys([FEDERATED, best_private(report_arms, simulated)]) if a in simulated]
    rho = {a: {o: {m: _cell(summary["rho"], a, o).get(m) for m in HEADLINE_METRICS} for o in oracles} for a in rho_arms}
    return {
        "beta": HEADLINE_BETA,
        "arm": arm,
        "chosen_because": why,
        "shown_arm": shown,
        "reference_arm": reference,
        "popularity": POPULARITY,
        "by_oracle": by_oracle,
        "rho": rho,
        "best_private_arm": best_private(report_arms, simulated),
    }
