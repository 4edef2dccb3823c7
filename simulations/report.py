"""report.md from report.json: one renderer, sections appear when the report carries their data."""

from __future__ import annotations

import json

from fedrec.common.mechanisms.registry import MECHANISMS
from fedrec.common.metrics import ACC_KEYS, LIKED_KEYS, LIKED_RATING
from fedrec.simulations import federated_report, retention_report
from fedrec.simulations.arms.table import ARMS, PRIVATE_ARMS

# Sections owned by other stages: each returns "" when the report lacks its data, so one renderer serves a
# baseline run, a simulate run and a run re-read by ``fedrec retention``.
EXTRA_SECTIONS = (federated_report.markdown, retention_report.markdown)


def _fmt_ci(arm: dict, key: str) -> str:
    mean = arm["accuracy"][key]
    ci = arm.get("accuracy_ci95", {}).get(key, {})
    if ci.get("n", 1) > 1:
        lo, hi = ci["ci95"]
        return f"{mean:.4f} ({lo:.4f}–{hi:.4f})"
    return f"{mean:.4f}"


def accuracy_section(report: dict) -> str:
    meta = report["meta"]
    seeds = meta.get("seeds", [meta.get("seed")])
    lines = [
        "## Accuracy (test)",
        "",
        f"Protocol: docs/protocol.md in fedrec at commit `{meta['git_commit']}`. Mean over seeds {seeds}; 95% interval in brackets where more than one seed ran. Full ranking is "
        "primary; sampled-99 numbers are only for comparing with NCF-style papers.",
        "",
        "| arm | HR@10 | NDCG@10 | HR@10 sampled | NDCG@10 sampled |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, arm in report["arms"].items():
        if "accuracy" in arm:
            lines.append(f"| {name} | " + " | ".join(_fmt_ci(arm, k) for k in ACC_KEYS) + " |")
    lines += ["", "![accuracy](accuracy.png)", ""]
    return "\n".join(lines) + liked_section(report)


def liked_section(report: dict) -> str:
    """How often each arm ranks a held-out item the user *liked* (only with a rated dataset)."""
    rated = {name: arm for name, arm in report["arms"].items() if LIKED_KEYS[0] in arm.get("accuracy", {})}
    if not rated:
        return ""
    share = next(iter(rated.values()))["accuracy"]["liked_share"]
    lines = [
        "## Liked items (test)",
        "",
        f"The held-out item counts only when the user rated it {LIKED_RATING:g} or more ({share:.1%} of the users "
        "with a held-out item did); over every user with one, so each number is at most its column above.",
        "",
        "| arm | liked HR@10 | liked NDCG@10 |",
        "| --- | --- | --- |",
    ]
    for name, arm in rated.items():
        lines.append(f"| {name} | " + " | ".join(_fmt_ci(arm, k) for k in LIKED_KEYS[:2]) + " |")
    return "\n".join(lines + [""])


def _private_epsilon(name: str, arm: dict) -> str:
    """The budget, the first word of the unit the arm's ledger states and whom its mechanism trusts:
    "epsilon E, delta D, record-level, trusting ..."."""
    privacy = arm.get("info", {}).get("privacy") or arm.get("privacy") or {}
    eps = privacy.get("epsilon_budget", privacy.get("epsilon"))
    unit = str(privacy.get("unit", "record-level")).split(" ")[0]
    arm_entry = ARMS.get(name)
    trust = (arm_entry.trust or MECHANISMS[arm_entry.mechanism].trust) if arm_entry else ""
    budget = f"epsilon {eps:g}, delta {privacy.get('delta', 0):g}, {unit}" if eps is not None else "DP"
    return f"{budget}, {trust}" if trust else budget


def headline(report: dict) -> str:
    """One sentence: how the private arms compare with popularity and centralized (test NDCG@10)."""
    arms = report["arms"]
    private = [name for name in PRIVATE_ARMS if "accuracy" in arms.get(name, {})]
    if not private:
        return ""
    refs = {ref: arms[ref]["accuracy"]["ndcg@10"] for ref in ("popularity", "centralized") if ref in arms}
    parts = []
    for name in private:
        value = arms[name]["accuracy"]["ndcg@10"]
        against = ", ".join(f"{value / ref:.2f}x {label} ({ref:.4f})" for label, ref in refs.items() if ref > 0)
        parts.append(
            f"{name} ({_private_epsilon(name, arms[name])}) NDCG@10 {_fmt_ci(arms[name], 'ndcg@10')}"
            + (f": {against}" if against else "")
        )
    return "**Private recommendation:** " + "; ".join(parts) + " (test, full ranking, means over the seeds)."


def header_section(report: dict) -> str:
    meta = report["meta"]
    top = headline(report)
    return "\n".join(
        [
            f"# fedrec report: {meta['dataset']}",
            "",
            *([top, ""] if top else []),
            f"- users {meta['n_users']}, items {meta['n_items']}, interactions {meta.get('n_interactions', '?')}"
            f" (repeated user-item rows merged into their latest: {meta.get('duplicates_merged', 0)})",
            f"- seed {meta['seed']} (all seeds: {meta.get('seeds', [meta['seed']])}), commit `{meta['git_commit']}`, "
            f"wall time {meta['wall_s']:.1f} s",
            f"- command: `{meta.get('command', '')}`",
            "",
            "<details><summary>config</summary>",
            "",
            "```json",
            json.dumps(meta.get("config", {}), indent=2),
            "```",
            "</details>",
            "",
        ]
    )


def render(report: dict) -> str:
    parts = [header_section(report), accuracy_section(report)]
    for section in EXTRA_SECTIONS:
        text = section(report)
        if text:
            parts.append(text)
    return "\n".join(parts) + "\n"
