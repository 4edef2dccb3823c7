"""audit.md: the numbers of audit.json, and in plain words what they assume and what they do not cover."""

from __future__ import annotations

from fedrec.common.item_rows import COUNTS
from fedrec.common.replies import SHARED_COUNTS


def _f(x: object, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def status(section: dict) -> str | None:
    """ "skipped (reason)" or "not applicable (reason)" for a section that did not run, else None."""
    if "skipped" in section:
        return f"skipped ({section['skipped']})"
    if "not_applicable" in section:
        return f"not applicable ({section['not_applicable']})"
    return None


def _verdicts(a: dict) -> list[str]:
    lines = ["| check | result |", "| --- | --- |"]
    checks = [
        ("accounting", "accounting: ledgers agree with an independent accountant (within 1%)", "agree"),
        ("wire", "wire: only what the arm's mechanism allows left the devices (section 2)", "ok"),
        ("at_rest", "at rest: no plaintext user data in the stores, key files 0600", "ok"),
    ]
    for name, label, key in checks:
        if name in a:
            lines.append(f"| {label} | {status(a[name]) or _f(a[name].get(key))} |")
    if "canary" in a and status(a["canary"]):
        lines.append(f"| canaries: empirical lower bound below the formal epsilon | {status(a['canary'])} |")
    elif "canary" in a and a["canary"].get("epsilon_formal") is not None:
        c = a["canary"]
        lines.append(
            f"| canaries: empirical lower bound ({_f(c['epsilon_lower_bound'])}) below the formal epsilon "
            f"({_f(c['epsilon_formal'])}) | {_f(c.get('below_formal'))} |"
        )
    return lines


def _accounting(acc: dict) -> list[str]:
    out = ["## 1. What the run spent (accounting)", ""]
    if not acc.get("arms"):
        return out + [acc.get("note", "no ledger"), ""]
    out += [
        "Every device's epsilon from its ledger (Opacus RDP accountant on the device), recomputed from the same "
        "history (noise multiplier, sample rate, steps) by Google's dp_accounting RDP accountant on the same "
        "Renyi orders. A relative gap above 1% on any device, or a report claiming less than the ledgers, "
        "is flagged.",
        "",
        "| arm | devices | delta | epsilon max (ledger) | median | max (recomputed) | largest gap | agree |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, r in acc["arms"].items():
        out.append(
            f"| {arm} | {r['n_devices']} | {r['delta']:g} | {_f(r['epsilon_max'])} | {_f(r['epsilon_median'])} | "
            f"{_f(r['epsilon_recomputed_max'])} | {100 * r['max_relative_gap']:.3f}% | {_f(r['agree'])} |"
        )
        if r["n_flagged"]:
            out.append(f"| | flagged devices ({r['n_flagged']}): {', '.join(r['flagged_devices'])} | | | | | | |")
        s = r.get("against_server")
        if s:
            out.append(
                f"| {arm}, against the server | {s['n_devices']} | {s['delta']:g} | {_f(s['epsilon_max'])} | "
                f"{_f(s['epsilon_median'])} | {_f(s['epsilon_recomputed_max'])} | {100 * s['max_relative_gap']:.3f}% "
                f"| {_f(s['agree'])} |"
            )
    out += [
        "",
        "Each arm's first row is against an observer of the released model; the row *against the server* "
        "recomputes the devices' epsilon from the ledger of what the server sees (`<arm>_server_ledger.csv`, "
        "`Mechanism.server_history`). They agree: records are sampled on the device, and under user-level "
        "DP every device sends a noisy share each round, so the server learns no one's coin.",
    ]
    return out + ["", "![epsilon per device](audit_epsilon.png)", ""]


def _wire(w: dict) -> list[str]:
    out = ["## 2. What leaves a device (wire log)", ""]
    for arm, r in w.get("arms", {}).items():
        out.append(
            f"- {arm}: {r['rounds']} rounds, {r['messages_up']} uploads, {r['bytes_up']:,} bytes up, "
            f"{r['bytes_down']:,} bytes down; clean: {_f(r['ok'])}"
        )
        out += [f"  - {p}" for p in r["problems"][:10]]
    if w.get("arrays"):
        out += [
            "",
            "Allowed: the model's global parameters, each as its full dense table (never a user row, never item "
            "ids); from an arm without DP also the per-row example counts of the item table (`" + COUNTS + "`, "
            "which show the items a device trained on: that arm claims no privacy); under shared noise each "
            "round's item-table gradient sum, or in round 1 the noisy item histogram (`" + SHARED_COUNTS + "`).",
            "",
            "| array | shape | dtype | bytes per message |",
            "| --- | --- | --- | --- |",
        ]
        out += [f"| {n} | {m['shape']} | {m['dtype']} | {m['bytes']} |" for n, m in w["arrays"].items()]
    out += [f"- {p}" for p in w.get("problems", [])]
    return out + [""]


def _at_rest(r: dict) -> list[str]:
    out = ["## 3. What a stolen device file reveals (at rest)", ""]
    if "note" in r:
        return out + [r["note"], ""]
    out += [
        f"- stores scanned: {r['devices_scanned']} in `{r['stores_dir']}`; plaintext findings: "
        f"{r['plaintext_findings']} (encodings searched: {r['encodings']})",
        f"- key files: {len(r['key_files'])}; permission problems: {len(r['key_file_problems'])}",
    ]
    out += [f"  - {p}" for p in r["findings"][:10] + r["key_file_problems"][:10]]
    return out + [""]


def _mia(m: dict) -> list[str]:
    out = ["## 4. What an attacker learns: membership inference", ""]
    setup = m.get("setup")
    if not setup:
        return out + [m.get("note", ""), ""]
    out += [
        f"Members: {setup['members']} pairs, {setup['members_are']}. Non-members: {setup['non_members']} pairs, "
        f"{setup['non_members_are']}. Attacks: loss threshold, and LiRA with {setup['shadows']} shadow trainings "
        f"of the centralized arm ({setup['shadow_epochs']} epochs each) on the other train interactions plus a "
        "random half of the candidates. Headline = the stronger attack per metric. With "
        f"{setup['non_members']} non-members, TPR at 0.1% FPR rests on the top "
        f"{max(1, int(setup['non_members'] * 0.001))} non-member score(s): read it as indicative.",
        "",
        "| arm | AUC | TPR@1%FPR | TPR@0.1%FPR | loss AUC | LiRA AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm, r in m.items():
        if arm == "setup":
            continue
        lira = r["attacks"].get("lira", {}).get("auc")
        out.append(
            f"| {arm} | {_f(r['auc'])} | {_f(r['tpr@1%fpr'])} | {_f(r['tpr@0.1%fpr'])} | "
            f"{_f(r['attacks']['loss']['auc'])} | {_f(lira)} |"
        )
    return out + [
        "",
        "AUC 0.5 and TPR equal to the FPR mean the attack does no better than chance.",
        "",
        "![ROC](audit_mia_roc.png)",
        "",
    ]


def _canary_setup(c: dict) -> str:
    if c["trainer"] == "whitebox":
        return (
            f"Trained `{c['arm']}` with the run's privacy settings through the device code on {c['users']} "
            f"devices for {c['rounds']} rounds, with m = {c['m']} canary records (each on an item of its own, "
            f"included with probability 1/2: {c['included']} were), the auditor being the server the guarantee "
            "is stated against: it reads each device's update (local) or each round's revealed sum "
            "(distributed), sends the model and recipe that show a record most, and scores each canary by its "
            f"item row's movement along its host's direction. It guessed 'included' for the {c['guesses'] // 2} "
            f"highest scores and 'excluded' for the {c['guesses'] // 2} lowest, abstaining on the rest."
        )
    return (
        f"Retrained `{c['arm']}` with the run's settings on {c['users']} users for {c['rounds']} rounds "
        f"({c['trainer']} trainer), with m = {c['m']} canary interactions (each on a fresh item of its own, "
        f"host device drawn at random, included with probability 1/2: {c['included']} were). The auditor guessed "
        f"'included' for the {c['guesses'] // 2} highest-scoring canaries (logit of host user and canary item in "
        f"the final model) and 'excluded' for the {c['guesses'] // 2} lowest, abstaining on the rest."
    )


def _canary(c: dict) -> list[str]:
    out = [
        "## 5. Testing the guarantee: one-run canary audit",
        "",
        _canary_setup(c),
        "",
        "| arm | formal epsilon | guesses | correct | empirical epsilon lower bound | ceiling |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(c["arm"], c)]
    if "control" in c:
        rows.append((f"{c['arm']} (control, budget {c['control']['budget']:g})", c["control"]))
    if "no_dp_contrast" in c:
        rows.append(("federated (no DP)", c["no_dp_contrast"]))
    for name, r in rows:
        out.append(
            f"| {name} | {_f(r['epsilon_formal'])} | {r['guesses']} | {r['correct']} | "
            f"{_f(r['epsilon_lower_bound'])} | {_f(r['ceiling'])} |"
        )
    out += [
        "",
        f"Bound at {100 * c['confidence']:g}% confidence, delta {c['delta']:g} (Steinke, Nasr and Jagielski "
        "2023, Theorem 3.1 with the delta term of their Algorithm 2). The ceiling is the bound if every guess "
        "were right: no attack with this many guesses can certify more. A lower bound near 0 does not show "
        "the run is private; a bound above the formal epsilon would show the accounting or the code is wrong.",
        "",
    ]
    return out


SECTIONS = {
    "accounting": ("## 1. What the run spent (accounting)", _accounting),
    "wire": ("## 2. What leaves a device (wire log)", _wire),
    "at_rest": ("## 3. What a stolen device file reveals (at rest)", _at_rest),
    "mia": ("## 4. What an attacker learns: membership inference", _mia),
    "canary": ("## 5. Testing the guarantee: one-run canary audit", _canary),
}

ASSUMPTIONS = """## Assumptions, in plain words

- **Unit of privacy**: one interaction (a rating event, together with the negatives sampled for it) on one
  device: record-level DP, per device. A user's whole history is *not* protected at this epsilon; for k of a
  user's interactions, group privacy gives roughly k times the epsilon. User-level DP is not claimed.
- **Delta**: the report's delta (above); epsilon is always stated with it. Accountant: RDP (Renyi DP) of the
  Poisson-subsampled Gaussian mechanism, sample rate 1/steps-per-epoch, composed over every step a device
  ever took (the ledger persists across rounds and restarts). Device sampling by the server is not used
  to amplify the guarantee.
- **What the adversary sees**: everything a device sends in every round (the dense global parameters), i.e.
  the server or anyone who can read the messages; and, for membership inference and the canary audit, the
  final model's score for any (user, item) pair *including the user's private embedding* (a stolen or
  compromised device, or a recommendation API). DP covers all of it: every parameter trained on the device
  goes through the one DP optimizer, so the released parameters and the local embedding are post-processing.
- **What the empirical audit means**: membership inference and canaries give lower bounds on the leakage
  of this particular run and attack, not proofs of privacy. The formal guarantee is the accountant's.
  The canary run is smaller than the audited run (fewer users) and reuses its settings and budget.
- **Out of scope**: the training metrics that travel with each update (number of examples, i.e. the
  device's interaction count, train loss, epsilon) and the evaluation metrics (HR@10/NDCG@10 per node) are
  not noised and are not covered by the DP guarantee; who participates and when (timing, participation);
  a malicious server that sends crafted models to a device; the non-private arms (`centralized`,
  `federated`) have no formal guarantee at all; transport security (TLS and device authentication are a
  separate check); the simulation's master key, which opens every simulated store (real devices each hold
  their own key); plaintext encodings other than those listed in section 3.
"""


def render_audit(a: dict, report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# fedrec privacy audit: {meta['dataset']}",
        "",
        f"Run `{a['run']}` (seed {a['seed']}, report commit `{meta.get('git_commit')}`), audited at commit "
        f"`{a['meta']['git_commit']}` in {a['meta']['wall_s']:.0f} s.",
        "",
    ]
    lines += _verdicts(a) + [""]
    for name, (title, section) in SECTIONS.items():
        if name in a:
            said = status(a[name])
            lines += [title, "", said[0].upper() + said[1:] + ".", ""] if said else section(a[name])
    lines.append(ASSUMPTIONS)
    return "\n".join(lines)
