"""report.md section for the retention simulator: every number in it is labelled "simulated" except
the observed values read from the dataset's timestamps, which stand beside them for comparison."""

from __future__ import annotations

MEANING = (
    "**What these numbers mean.** MovieLens records when people rated films, not whether recommendations "
    "brought them back, so nothing here is measured: it is a projection under a stated user model "
    "(docs/retention.md in fedrec). Each simulated user has a return propensity and day gaps fitted to the dataset. "
    "A two-part user model judges each slate of {k} unseen items: P(pick | shown) from an implicit-feedback "
    "model and P(like | picked) from a rating model, both fitted on all data and calibrated on held-out data; "
    "a slate's satisfaction is its expected number of liked picks. beta sets how strongly satisfaction "
    "moves the return probability. At beta 0 satisfaction plays no role, every arm gets the same retention, "
    "and that retention is calibrated to the observed values: a check of the machinery, not a finding. "
    "At beta > 0 the differences between arms follow from the assumed link and from the user model; they "
    "say what would follow if satisfaction drove returns that strongly, not that it does. The user models "
    "saw every interaction (test items included), and an arm of the same family as a user model looks "
    "better under it: compare arms within one user model and beta, and trust a difference only when it "
    "holds under every user model."
)


def _fmt(value: float | None, digits: int = 3) -> str:
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
                f"{_with_ci(diff)} | {_fmt(rho['mean'] if rho else None, 2)} |"
            )
    return "\n".join(lines)


def tables(report: dict, plots: bool = False) -> str:
    """One table per user model (also what `fedrec retention` prints), each followed by its survival plot if asked."""
    ret = report["retention"]
    parts = []
    for oracle, info in ret["oracles"].items():
        parts += [
            f"### User model `{oracle}`: pick = {info['pick_family']}; like = {info['like_family']} (simulated)",
            "",
            oracle_table(report, oracle),
            "",
        ]
        if plots and oracle in ret.get("plots", {}):
            parts += [f"![survival curves, user model {oracle} (simulated)]({ret['plots'][oracle]})", ""]
    return "\n".join(parts)


def _checks(report: dict) -> list[str]:
    ret = report["retention"]
    checks = ret["checks"]
    cal = checks["calibration"]
    ident = checks["identical_at_beta_0"]
    mono = checks["monotone_in_beta"]
    lines = [
        "### Checks (docs/protocol.md in fedrec, section 4)",
        "",
        f"- Calibration at beta 0 (tolerance ±{cal['tolerance']}): "
        + ", ".join(
            f"{k} simulated {cal[k]['simulated']:.3f} vs observed {cal[k]['observed']:.3f}" for k in ("d1", "d7", "d30")
        )
        + f" — {'holds' if cal['holds'] else 'DOES NOT HOLD'}.",
        f"- Identical retention for every arm at beta 0: {'holds' if ident['holds'] else 'DOES NOT HOLD'} "
        f"(largest difference {ident['max_abs_diff']:.3g}).",
        f"- Retention (d30 and active days) rises with beta for every arm better than popularity: "
        f"{'holds' if mono['holds'] else 'DOES NOT HOLD'} ("
        + "; ".join(
            f"{arm}/{o} {'better' if c['better_than_popularity'] else 'not better'} than popularity, "
            + ("rises" if c["rises_with_beta"] else "falls" if c["falls_with_beta"] else "not monotone")
            for arm, by_o in mono["by_arm"].items()
            for o, c in by_o.items()
        )
        + ").",
    ]
    for oracle, c in checks["satisfaction_ordering"].items():
        expected = " >= ".join(c["order"])
        got = ", ".join(f"{c['satisfaction'][a]:.3f}" for a in c["order"])
        verdict = "holds" if c["holds"] else "does not hold: " + "; ".join(c["why_not"])
        lines.append(f"- Satisfaction ordering at beta 0 under `{oracle}`, expected {expected}: got {got} — {verdict}.")
    return lines + [""]


def _pick_check(name: str, info: dict) -> str:
    c = info["checks"]
    bands = ", ".join(
        f"{b['ranks'][0]}–{b['ranks'][1]}: {b['predicted']:.4f}/{b['observed']:.4f}" for b in c["by_rank_band"]
    )
    return (
        f"- pick `{name}` ({info['family']}; held out: {c['held_out']}; map fitted on {c['fit_users']} users, "
        f"checked on the other {c['check_users']}): expected held-out picks in the top 10 "
        f"{c['top10_predicted_picks']:.3f} predicted vs {c['top10_observed_picks']:.3f} observed "
        f"(a random ranking: {c['top10_picks_if_random']:.3f}). P(pick) by rank band, predicted/observed: {bands}."
    )


def _like_check(name: str, info: dict) -> str:
    c = info["checks"]
    if "skipped" in c:
        return f"- like `{name}`: {info['family']}."
    deciles = ", ".join(f"{d['predicted']:.2f}/{d['observed']:.2f}" for d in c["by_decile"])
    return (
        f"- like `{name}` ({info['family']}; held out: {c['held_out']}; map fitted on half, checked on the "
        f"other half): rating RMSE {c['rmse']:.3f}; Brier {c['brier']:.4f} (base rate {c['liked_base_rate']:.3f} "
        f"alone: {c['brier_base_rate']:.4f}). P(like) by decile, predicted/observed: {deciles}."
    )


def _oracle_checks(report: dict) -> list[str]:
    parts = report["retention"]["user_model_parts"]
    lines = ["### Calibration of the user model parts (held-out data)", ""]
    lines += [_pick_check(n, i) for n, i in parts["pick"].items()]
    lines += [_like_check(n, i) for n, i in parts["like"].items()]
    first = report["retention"].get("first_slate", {})
    greedy = ", ".join(
        f"{o} {i['greedy_first_slate_liked_picks']:.3f}" for o, i in report["retention"]["oracles"].items()
    )
    lines.append(f"- Expected liked picks in oracle-greedy's first slate: {greedy}.")
    if first:
        rows = "; ".join(
            f"{arm}: " + ", ".join(f"{o} {c['picks']:.3f}/{c['liked_picks']:.3f}" for o, c in by_o.items())
            for arm, by_o in first.items()
        )
        lines.append(f"- First slate, expected picks / expected liked picks (mean over users): {rows}.")
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
        f"simulator seeds {ret['seeds']} x training seeds {ret.get('training_seeds', [])} = "
        f"{len(ret.get('cells', ret['seeds']))} cells; reference arm for differences and rho: `{ret['reference_arm']}`.",
        "",
    ]


def _diff(ci: dict | None, digits: int) -> str:
    if not ci:
        return "—"
    lo, hi = ci["ci95"]
    return f"{ci['mean']:+.{digits}f} ({lo:+.{digits}f} to {hi:+.{digits}f})"


def _rho_text(value: dict | None) -> str:
    if not value:
        return "— (reference not clearly apart from popularity)"
    lo, hi = value["ci95"]
    return f"{value['mean']:.2f} ({lo:.2f} to {hi:.2f})"


def _versus(c: dict, metric: str, digits: int, ref: str, pop: str) -> str:
    out = []
    for key, name in (("vs_reference", ref), ("vs_popularity", pop)):
        if c[key].get(metric):
            out.append(f"{_diff(c[key][metric], digits)} vs {name}")
    return (", " + ", ".join(out)) if out else ""


def headline_lines(report: dict) -> list[str]:
    ret = report["retention"]
    h = ret.get("headline")
    if not h:
        return []
    arm, ref, pop = h["shown_arm"], h["reference_arm"], h["popularity"]
    n_cells = len(ret.get("cells", ret["seeds"]))
    who = (
        f"`{arm}` ({h['chosen_because']})"
        if h["arm"]
        else f"{h['chosen_because'][:1].upper()}{h['chosen_because'][1:]}; shown instead: `{arm}`"
    )
    lines = [
        f"**Headline (simulated, beta {h['beta']}).** {who}, under each user model: d30 and active days, then "
        f"paired differences against `{ref}` and `{pop}`; 95% intervals over {n_cells} cells (training x "
        "simulator seeds).",
        "",
    ]
    for oracle, c in h["by_oracle"].items():
        lines.append(
            f"- `{oracle}`: d30 {_with_ci(c['d30'])}{_versus(c, 'd30', 3, ref, pop)}; active days "
            f"{_with_ci(c['active_days'], 2)}{_versus(c, 'active_days', 2, ref, pop)}."
        )
    for arm_name, by_oracle in h["rho"].items():
        rows = "; ".join(
            f"`{o}` d30 {_rho_text(v['d30'])}, active days {_rho_text(v['active_days'])}" for o, v in by_oracle.items()
        )
        label = " (best private arm by HR@10)" if arm_name == h["best_private_arm"] else ""
        lines.append(
            f"- Gap closed, rho = (R − R_{pop}) / (R_{ref} − R_{pop}), of `{arm_name}`{label} at beta "
            f"{h['beta']} (Fieller 95% intervals): {rows}."
        )
    return lines + [""]


def markdown(report: dict) -> str:
    ret = report.get("retention")
    if not ret:
        return ""
    if "skipped" in ret:
        return f"## Retention (simulated)\n\nSkipped: {ret['skipped']}.\n"
    return "\n".join(
        [
            "## Retention (simulated)",
            "",
            *headline_lines(report),
            MEANING.format(k=ret["slate_size"]),
            "",
            "d1 = share of users back the day after their first visit; dN = back within N days; active days = mean "
            "number of days with a visit in the 60-day horizon (day 0 included); satisfaction = mean expected number of "
            "liked picks per served slate. Brackets: 95% interval over cells. rho = (R_arm − R_popularity) / "
            f"(R_{ret['reference_arm']} − R_popularity) on d30, with Fieller's interval.",
            "",
            tables(report, plots=True),
            *_checks(report),
            *_oracle_checks(report),
            *_model(report),
        ]
    )
