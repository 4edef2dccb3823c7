"""report.md section for the retention simulator: every number in it is labelled "simulated" except
the observed values read from the dataset's timestamps, which stand beside them for comparison."""

from __future__ import annotations

MEANING = (
    "**What these numbers mean.** MovieLens records when people rated films, not whether recommendations "
    "brought them back, so nothing here is measured: it is a projection under a stated user model "
    "(docs/retention.md). Each simulated user has a return propensity and day gaps fitted to the dataset; "
    "an oracle fitted on all data judges each slate of {k} unseen items; beta sets how strongly satisfaction "
    "moves the return probability. At beta 0 satisfaction plays no role, every arm gets the same retention, "
    "and that retention is calibrated to the observed values: a check of the machinery, not a finding. "
    "At beta > 0 the differences between arms follow from the assumed link and from how each oracle judges "
    "slates; they say what would follow if satisfaction drove returns that strongly, not that it does. "
    "The oracles saw every interaction (test items included), and an arm of the same family as an oracle "
    "looks better under it than it would under the other one: compare arms within one oracle and beta, "
    "and trust a difference only when it holds under both oracles."
)


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _with_ci(ci: dict | None, digits: int = 3) -> str:
    if not ci:
        return "—"
    if ci.get("n", 1) > 1:
        lo, hi = ci["ci95"]
        return f"{ci['mean']:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"
    return f"{ci['mean']:.{digits}f}"


def _rows(report: dict) -> list[str]:
    ret = report["retention"]
    names = [a for a in report["arms"] if "retention" in report["arms"][a]]
    return names + [a for a in ret.get("reference_policies", {}) if a not in names]


def oracle_table(report: dict, oracle: str) -> str:
    ret = report["retention"]
    ref = ret["reference_arm"]
    obs = ret["observed"]
    cohort = obs.get("survival_cohort", {})
    lines = [
        f"| beta | arm | d1 | d7 | d30 | active days (60 d) | satisfaction | d30 − {ref} | rho (d30) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| — | **observed** (data; d: {obs['n_users']} users, active days: {cohort.get('n_users', '?')}) | "
        f"{_fmt(obs['d1'])} | {_fmt(obs['d7'])} | {_fmt(obs['d30'])} | {_fmt(cohort.get('active_days'), 2)} | — | — | — |",
    ]
    betas = sorted(next(iter(ret["ci95"].values()))[oracle], key=float)
    for beta in betas:
        for arm in _rows(report):
            cell = ret["ci95"].get(arm, {}).get(oracle, {}).get(beta)
            if not cell:
                continue
            diff = ret["paired_vs_reference"].get(arm, {}).get(oracle, {}).get(beta, {}).get("d30")
            rho = ret["rho"].get(arm, {}).get(oracle, {}).get(beta, {}).get("d30")
            lines.append(
                f"| {beta} | {arm} (simulated) | {_fmt(cell['d1']['mean'])} | {_fmt(cell['d7']['mean'])} | "
                f"{_with_ci(cell['d30'])} | {_with_ci(cell['active_days'], 2)} | {_fmt(cell['satisfaction']['mean'])} | "
                f"{_with_ci(diff)} | {_fmt(rho, 2)} |"
            )
    return "\n".join(lines)


def tables(report: dict, plots: bool = False) -> str:
    """One table per oracle (also what `fedrec retention` prints), each followed by its survival plot if asked."""
    ret = report["retention"]
    parts = []
    for oracle, info in ret["oracles"].items():
        if "skipped" in info:
            parts.append(f"Oracle {oracle}: skipped ({info['skipped']}).\n")
            continue
        parts += [f"### Oracle `{oracle}`: {info['family']}, relevant = {info['relevance_rule']} (simulated)", "",
                  oracle_table(report, oracle), ""]
        if plots and oracle in ret.get("plots", {}):
            parts += [f"![survival curves, oracle {oracle} (simulated)]({ret['plots'][oracle]})", ""]
    return "\n".join(parts)


def _checks(report: dict) -> list[str]:
    ret = report["retention"]
    checks = ret["checks"]
    cal = checks["calibration"]
    ident = checks["identical_at_beta_0"]
    mono = checks["monotone_in_beta"]
    lines = [
        "### Checks (protocol.md)",
        "",
        f"- Calibration at beta 0 (tolerance ±{cal['tolerance']}): "
        + ", ".join(f"{k} simulated {cal[k]['simulated']:.3f} vs observed {cal[k]['observed']:.3f}"
                    for k in ("d1", "d7", "d30"))
        + f" — {'holds' if cal['holds'] else 'DOES NOT HOLD'}.",
        f"- Identical retention for every arm at beta 0: {'holds' if ident['holds'] else 'DOES NOT HOLD'} "
        f"(largest difference {ident['max_abs_diff']:.3g}).",
        f"- Retention (d30 and active days) rises with beta for every arm better than popularity: "
        f"{'holds' if mono['holds'] else 'DOES NOT HOLD'} ("
        + "; ".join(f"{arm}/{o} {'better' if c['better_than_popularity'] else 'not better'} than popularity, "
                    + ("rises" if c["rises_with_beta"] else "falls" if c["falls_with_beta"] else "not monotone")
                    for arm, by_o in mono["by_arm"].items() for o, c in by_o.items()) + ").",
    ]
    for oracle, c in checks["satisfaction_ordering"].items():
        expected = " >= ".join(c["order"])
        got = ", ".join(f"{c['satisfaction'][a]:.3f}" for a in c["order"])
        verdict = "holds" if c["holds"] else "does not hold: " + "; ".join(c["why_not"])
        lines.append(f"- Satisfaction ordering at beta 0 under `{oracle}`, expected {expected}: got {got} — {verdict}.")
    return lines + [""]


def _oracle_checks(report: dict) -> list[str]:
    lines = ["### Oracle checks (refit on 90% of interactions, tested on the held-out 10%)", ""]
    for name, info in report["retention"]["oracles"].items():
        c = info.get("checks")
        if not c:
            continue
        if "rmse" in c:
            deciles = ", ".join(f"{d['predicted']:.2f}/{d['observed']:.2f}" for d in c["by_decile"])
            lines.append(
                f"- `{name}`: held-out RMSE {c['rmse']:.3f} (bias-only {c['rmse_bias_only']:.3f}), MAE {c['mae']:.3f}; "
                f"'predicted >= 4' right {c['relevant_precision']:.1%} of the time (base rate {c['relevant_base_rate']:.1%}); "
                f"{info['relevant_share_of_unseen']:.1%} of unseen items relevant. Calibration by decile "
                f"(predicted/observed mean rating): {deciles}.")
        else:
            deciles = ", ".join(f"{d['share_of_heldout']:.3f}" for d in c["by_decile"])
            lines.append(
                f"- `{name}`: {c['heldout_in_top_decile']:.1%} of held-out interactions fall in the user's top score "
                f"decile (random: {c['heldout_in_top_decile_if_random']:.0%}), mean percentile {c['mean_percentile']:.3f}. "
                f"Share of held-out interactions by score decile (lowest to highest): {deciles}.")
    return lines + [""]


def _model(report: dict) -> list[str]:
    ret = report["retention"]
    um = ret["user_model"]
    prior = um["propensity_prior"]
    gaps = um["gap_histograms"]
    s_ref = ", ".join(f"{o} {v:.3f}" for o, v in ret["s_ref"].items())
    return [
        "### User model (fitted to the dataset)",
        "",
        f"- Propensity pi_u ~ Beta(a={prior['a']:.3f}, b={prior['b']:.3f}) (mean {prior['mean']:.3f}), "
        f"{prior['method']}, {prior['n_users']} users.",
        f"- Day gaps: first return from {gaps['first']['n_gaps']} gaps (P(<=1 d) {gaps['first']['p_le_1']:.3f}, "
        f"P(<=30 d) {gaps['first']['p_le_30']:.3f}); later returns from {gaps['later']['n_gaps']} gaps "
        f"(P(<=1 d) {gaps['later']['p_le_1']:.3f}, P(<=30 d) {gaps['later']['p_le_30']:.3f}).",
        f"- Slates of {ret['slate_size']} unseen items; smoothing S~ = {um['smoothing']} S~ + {1 - um['smoothing']:.1f} S; "
        f"S_ref (popularity's mean satisfaction at beta 0): {s_ref}; horizon {um['horizon_days']} days; "
        f"seeds {ret['seeds']}; reference arm for differences and rho: `{ret['reference_arm']}`.",
        "",
    ]


def markdown(report: dict) -> str:
    ret = report.get("retention")
    if not ret:
        return ""
    if "skipped" in ret:
        return f"## Retention (simulated)\n\nSkipped: {ret['skipped']}.\n"
    return "\n".join([
        "## Retention (simulated)",
        "",
        MEANING.format(k=ret["slate_size"]),
        "",
        "d1 = share of users back the day after their first visit; dN = back within N days; active days = mean "
        "number of days with a visit in the 60-day horizon (day 0 included); satisfaction = mean share of a "
        "served slate the oracle deems relevant. Brackets: 95% interval over seeds. rho = (R_arm − R_popularity) / "
        f"(R_{ret['reference_arm']} − R_popularity) on d30.",
        "",
        tables(report, plots=True),
        *_checks(report),
        *_oracle_checks(report),
        *_model(report),
    ])
