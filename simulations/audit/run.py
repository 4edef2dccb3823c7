"""`fedrec audit RUN_DIR`: every check in turn, then audit.json and audit.md in the run dir.

Sections are independent: one whose inputs are missing is recorded as ``{"skipped": reason}`` and one
that does not apply to the run (no DP arm to account for, no federated arm on the wire) as
``{"not_applicable": reason}``; the others still run and the report is written.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from fedrec.common.datasets import load_dataset
from fedrec.common.errors import DataError, FedrecError
from fedrec.common.mechanisms.registry import MECHANISMS
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.table import ARMS, AUDITED_ARMS
from fedrec.simulations.audit import plots
from fedrec.simulations.audit.accounting import check_ledger, read_ledger
from fedrec.simulations.audit.at_rest import audit_stores
from fedrec.simulations.audit.canary import canary_audit
from fedrec.simulations.audit.canary_runs import audited_federation, canary_federation, canary_trainer, run_config_of
from fedrec.simulations.audit.mia import attack_arm, mia_candidates, train_shadows
from fedrec.simulations.audit.report_text import render_audit
from fedrec.simulations.audit.rundata import MIA_ARMS, AuditedRun, open_run
from fedrec.simulations.audit.whitebox import CONTROL_EPSILON, WhiteboxSettings, covers, whitebox_audit
from fedrec.simulations.audit.wire import audit_wire
from fedrec.simulations.progress import progress
from fedrec.simulations.rundir import atomic_write_text, git_commit

SECTIONS = ("accounting", "wire", "at_rest", "mia", "canary")
# The arms the canary audit can retrain, in order of preference (the first one in the run is audited).
CANARY_ARMS = AUDITED_ARMS
PRIMARY_DP_ARM = CANARY_ARMS[0]  # the accounting headline's arm when the run has it


@dataclass
class AuditOptions:
    stores: Path | None = None
    data: str | None = None  # dataset name or CSV path, when the report's cannot be reloaded
    data_dir: str | None = None
    skip: tuple[str, ...] = ()
    shadows: int = 4
    shadow_epochs: int | None = None  # default: the centralized arm's early-stopped epoch count
    mia_users: int | None = None
    canaries: int = 20000  # with 9,500 guesses a side, the ceiling passes 8 at delta 1e-5
    canary_guesses: int = 9500  # per side: k "included" + k "excluded" guesses, fixed in advance
    canary_users: int = 200
    canary_rounds: int | None = None  # default: the run's rounds
    canary_trainer: str = "whitebox"
    # also audit a control (whitebox: the same arm at epsilon CONTROL_EPSILON; otherwise the arm without DP):
    # shows the audit can see a leak
    canary_contrast: bool = True
    confidence: float = 0.95
    show: bool = True


def accounting_section(run: AuditedRun) -> tuple[dict, dict]:
    arms, per_device = {}, {}
    for arm, privacy in run.private_arms().items():
        ledger = run.path / "privacy" / privacy.get("ledger", f"{arm}_ledger.csv")
        result = check_ledger(read_ledger(ledger), float(privacy["delta"]), privacy.get("epsilon_max"))
        per_device[arm] = result.pop("per_device")
        arms[arm] = {
            **result,
            "ledger": str(ledger.relative_to(run.path)),
            "unit": privacy.get("unit"),
            "noise_multiplier": privacy.get("noise_multiplier"),
            "sample_rate": privacy.get("sample_rate"),
        }
        if "server_ledger" in privacy:  # the same devices against the server (Mechanism.server_history)
            server_ledger = run.path / "privacy" / privacy["server_ledger"]
            server = check_ledger(
                read_ledger(server_ledger), float(privacy["delta"]), privacy.get("epsilon_server_max")
            )
            server.pop("per_device")
            arms[arm]["against_server"] = {**server, "ledger": str(server_ledger.relative_to(run.path))}
    if not arms:
        return not_applicable("no DP arm in this run, so no privacy budget was spent or accounted"), per_device
    primary = arms.get(PRIMARY_DP_ARM) or next(iter(arms.values()))
    head = {k: primary[k] for k in ("epsilon_max", "epsilon_median", "epsilon_recomputed_max", "delta", "unit")}
    head["observer"] = RELEASED_MODEL
    agree = all(a["agree"] and a.get("against_server", {}).get("agree", True) for a in arms.values())
    return {**head, "agree": agree, "arms": arms}, per_device


def wire_section(run: AuditedRun) -> dict:
    logs = {}
    for arm in run.report["arms"]:
        directory = run.model_dir(arm)
        if directory is None:
            continue
        if not (directory / "wire.jsonl").exists():
            raise DataError(f"{directory / 'wire.jsonl'}: not found (the {arm} arm's wire log)")
        logs[arm] = (directory / "wire.jsonl", directory / "model.json")
    if not logs:
        return not_applicable("no federated arm in this run: nothing left a device")
    return audit_wire(logs)


def mia_section(run: AuditedRun, opts: AuditOptions, console: Console) -> tuple[dict, dict]:
    if not any(arm in run.report["arms"] for arm in MIA_ARMS):
        return not_applicable(f"none of the attacked arms ({', '.join(MIA_ARMS)}) is in this run"), {}
    arms = run.arms_with_scores()
    if not arms:
        raise DataError(f"{run.path / 'scores'}: no <arm>.npy for {', '.join(MIA_ARMS)}")
    cands = mia_candidates(run.split, run.seed, opts.mia_users)
    shadows = None
    central = run.report["arms"].get("centralized", {}).get("info", {})
    if opts.shadows > 0:
        cfg = run_config_of(run.report)
        epochs = opts.shadow_epochs or int(central.get("best_epoch") or cfg.central.train.epochs)
        console.print(f"LiRA: {opts.shadows} shadow trainings of the centralized arm, {epochs} epochs each")
        with progress(opts.show) as bar:
            task = bar.add_task("shadow models", total=opts.shadows)
            shadows = train_shadows(
                run.split, cands, cfg.central, opts.shadows, epochs, run.seed, on_done=lambda: bar.advance(task)
            )
    out, curves = {}, {}
    for arm in arms:
        out[arm], raw = attack_arm(run.run_dir.read_scores(arm), cands, shadows)
        curves.update({f"{arm} ({attack})": pair for attack, pair in raw.items()})
        console.print(
            f"  MIA {arm}: AUC {out[arm]['auc']:.3f}  TPR@1%FPR {out[arm]['tpr@1%fpr']:.3f}  "
            f"TPR@0.1%FPR {out[arm]['tpr@0.1%fpr']:.3f}"
        )
    out["setup"] = {
        "members": int(cands.member.sum()),
        "non_members": int((~cands.member).sum()),
        "members_are": "one random train interaction per user (seeded)",
        "non_members_are": "each user's test interaction (never trained on by any arm)",
        "shadows": opts.shadows,
        "shadow_epochs": shadows.epochs if shadows else None,
    }
    return out, curves


@contextmanager
def quiet_devices() -> Iterator[None]:
    """The canary fleet's budget refusals are counted in the result, not logged one line per device."""
    logger = logging.getLogger("fedrec.client")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def whitebox_section(run: AuditedRun, opts: AuditOptions, arm: str, console: Console) -> dict:
    """The white-box audit of the arm's mechanism (``whitebox.py``) at the run's settings, and the control."""
    data = load_dataset(
        opts.data or run.report["meta"]["dataset"], opts.data_dir, min(opts.canary_users, run.data.n_users)
    )
    split = temporal_split(data, run.seed)
    audited = audited_federation(run.report, arm, opts.canary_rounds)
    if not covers(audited.privacy):
        return not_applicable(
            f"the white-box audit covers the local and distributed mechanisms, not {arm}'s "
            f"{audited.privacy.mechanism!r}: audit it with --canary-trainer harness"
        )
    settings = WhiteboxSettings(
        users=data.n_users,
        canaries_per_device=max(1, opts.canaries // data.n_users),
        guesses=opts.canary_guesses,
        confidence=opts.confidence,
        seed=run.seed,
    )
    variants = {"audited": audited}
    if opts.canary_contrast:
        variants["control"] = replace(audited, privacy=replace(audited.privacy, epsilon=CONTROL_EPSILON))
    out = {}
    for name, federation in variants.items():
        budget = federation.privacy.epsilon
        console.print(
            f"canary audit (white-box): {arm} at budget {budget:g}, {settings.users} devices x "
            f"{settings.canaries_per_device} canaries, {federation.server.rounds} rounds"
        )
        with progress(opts.show) as bar, quiet_devices():
            task = bar.add_task(f"{arm} ({name}) rounds", total=federation.server.rounds)
            out[name] = whitebox_audit(
                split, federation, settings, lambda done, total: bar.update(task, completed=done)
            )
        r = out[name]
        console.print(
            f"  {name}: {r['correct']}/{r['guesses']} guesses correct -> epsilon >= {r['epsilon_lower_bound']:.3f} "
            f"(ceiling {r['ceiling']:.3f}, formal {r['epsilon_formal']:.3f})"
        )
    head = dict(out["audited"])
    head["arm"], head["trainer"], head["users"] = arm, "whitebox", settings.users
    head["unit"], head["observer"] = MECHANISMS[head["mechanism"]].unit, against_the_server(head["mechanism"])
    head["below_formal"] = head["epsilon_lower_bound"] <= head["epsilon_formal"]
    if "control" in out:
        head["control"] = out["control"]
    return head


def canary_section(run: AuditedRun, opts: AuditOptions, console: Console) -> dict:
    audited_arm = next((a for a in CANARY_ARMS if a in run.report["arms"]), None)
    if audited_arm is None:
        return not_applicable(f"no {' / '.join(CANARY_ARMS)} arm in this run: there is no formal guarantee to test")
    if 2 * opts.canary_guesses > opts.canaries:
        raise FedrecError(
            f"--canary-guesses {opts.canary_guesses} a side needs --canaries of at least {2 * opts.canary_guesses}, "
            f"got {opts.canaries}"
        )
    if opts.canary_trainer == "whitebox":
        return whitebox_section(run, opts, audited_arm, console)
    nodes = run_config_of(run.report).simulation.nodes
    data = load_dataset(
        opts.data or run.report["meta"]["dataset"], opts.data_dir, min(opts.canary_users, run.data.n_users)
    )
    split = temporal_split(data, run.seed)
    out = {}
    variants = [audited_arm] + (["federated"] if opts.canary_contrast else [])
    audited = canary_federation(audited_federation(run.report, audited_arm, opts.canary_rounds))
    rounds, delta = audited.server.rounds, audited.privacy.delta
    for name in variants:
        federation = (
            audited if name == audited_arm else replace(audited, privacy=replace(audited.privacy, mechanism="none"))
        )
        console.print(
            f"canary audit: {name}, {opts.canaries} canaries on {data.n_users} users, {rounds} rounds "
            f"({opts.canary_trainer} trainer)"
        )
        t0 = time.perf_counter()
        train = canary_trainer(opts.canary_trainer, federation, name, nodes, run.path, opts.show)
        result = canary_audit(data, split, train, opts.canaries, opts.canary_guesses, run.seed, delta, opts.confidence)
        result["wall_s"] = time.perf_counter() - t0
        console.print(
            f"  {name}: {result['correct']}/{result['guesses']} guesses correct -> epsilon >= "
            f"{result['epsilon_lower_bound']:.3f} (ceiling {result['ceiling']:.3f}, formal "
            f"{'n/a: no DP' if result['epsilon_formal'] is None else format(result['epsilon_formal'], '.3f')})"
        )
        out[name] = result
    head = dict(out[audited_arm])
    head["arm"], head["unit"], head["observer"] = (
        audited_arm,
        MECHANISMS[ARMS[audited_arm].mechanism].unit,
        RELEASED_MODEL,
    )
    head["trainer"], head["rounds"], head["users"] = opts.canary_trainer, rounds, data.n_users
    head["below_formal"] = head["epsilon_formal"] is not None and head["epsilon_lower_bound"] <= head["epsilon_formal"]
    if "federated" in out:
        head["no_dp_contrast"] = out["federated"]
    return head


def _plain(obj: object) -> object:
    """numpy scalars and paths in audit.json."""
    return obj.item() if hasattr(obj, "item") else str(obj)


def not_applicable(reason: str) -> dict:
    return {"not_applicable": reason}


def _at_rest_section(run: AuditedRun, opts: AuditOptions, console: Console) -> dict:
    stores = opts.stores or run.path / "stores"
    if opts.stores is None and not any(run.model_dir(arm) for arm in run.report["arms"]):
        return not_applicable("no federated arm in this run, so no device stores; --stores DIR scans others")
    console.print(f"  scanning {stores}")
    if not (stores / "manifest.json").exists():
        raise DataError(f"{stores}/manifest.json: not found, no stores to scan (--stores DIR)")
    return audit_stores(stores, run.data, run.split)


def _accounting_with_plot(run: AuditedRun) -> dict:
    section, per_device = accounting_section(run)
    if per_device:
        plots.epsilon_histogram(per_device, run.path / "audit_epsilon.png")
    return section


def _mia_with_plot(run: AuditedRun, opts: AuditOptions, console: Console) -> dict:
    section, curves = mia_section(run, opts, console)
    if curves:
        plots.roc_curves(curves, run.path / "audit_mia_roc.png")
    return section


def run_section(name: str, compute: Callable[[], dict], console: Console) -> dict:
    """One section; missing or unusable inputs make only this section "skipped (reason)"."""
    try:
        return compute()
    except FedrecError as exc:
        reason = str(exc)
    except OSError as exc:
        reason = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    console.print(f"  {name} skipped: {reason}", markup=False, highlight=False)
    return {"skipped": reason}


def audit(path: Path, opts: AuditOptions) -> dict:
    console = Console(stderr=True, quiet=not opts.show)
    t0 = time.perf_counter()
    unknown = sorted(set(opts.skip) - set(SECTIONS))
    if unknown:
        raise DataError(f"--skip: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    run = open_run(path, opts.data, opts.data_dir)
    result: dict = {"run": str(run.path), "dataset": run.report["meta"]["dataset"], "seed": run.seed}
    steps = {
        "accounting": (
            "[bold]accounting[/bold]: ledgers recomputed with dp_accounting",
            lambda: _accounting_with_plot(run),
        ),
        "wire": ("[bold]wire[/bold]: wire logs against the model's global parameters", lambda: wire_section(run)),
        "at_rest": (
            "[bold]at rest[/bold]: plaintext scan of the device stores",
            lambda: _at_rest_section(run, opts, console),
        ),
        "mia": ("[bold]membership inference[/bold]", lambda: _mia_with_plot(run, opts, console)),
        "canary": (
            "[bold]canary audit[/bold] (one run, Steinke et al. 2023)",
            lambda: canary_section(run, opts, console),
        ),
    }
    for name in SECTIONS:
        if name not in opts.skip:
            title, compute = steps[name]
            console.print(title)
            result[name] = run_section(name, compute, console)
    result["meta"] = {"git_commit": git_commit(), "wall_s": time.perf_counter() - t0, "options": vars(opts)}
    atomic_write_text(run.path / "audit.json", json.dumps(result, indent=2, default=_plain) + "\n")
    atomic_write_text(run.path / "audit.md", render_audit(result, run.report))
    return result


RELEASED_MODEL = "anyone holding the released model"  # whom the accounting's epsilon is against


def against_the_server(mechanism: str) -> str:
    """Whom the white-box canary audit's epsilon is against: the server, reading what the mechanism sends it."""
    return f"the server, which sees {MECHANISMS[mechanism].server_sees}"


# Every epsilon on the terminal comes with its delta, its unit and whom it is against.
HEADLINE = {
    "accounting": ("epsilon_max", "epsilon_median", "epsilon_recomputed_max", "delta", "unit", "observer", "agree"),
    "canary": (
        "epsilon_lower_bound",
        "epsilon_formal",
        "delta",
        "unit",
        "observer",
        "confidence",
        "m",
        "guesses",
        "correct",
        "ceiling",
    ),
    "wire": ("ok",),
    "at_rest": ("ok", "devices_scanned", "plaintext_findings"),
}


def headline(result: dict) -> dict:
    """The headline fields of audit.json, for the terminal."""
    out = {}
    for section, keys in HEADLINE.items():
        if section in result:
            status = {k: result[section][k] for k in ("skipped", "not_applicable") if k in result[section]}
            out[section] = status or {k: result[section].get(k) for k in keys}
    if "control" in result.get("canary", {}):
        out["canary"]["control_epsilon_lower_bound"] = result["canary"]["control"]["epsilon_lower_bound"]
    if "no_dp_contrast" in result.get("canary", {}):
        contrast = result["canary"]["no_dp_contrast"]
        out["canary"]["no_dp_epsilon_lower_bound"] = contrast["epsilon_lower_bound"]
    if "mia" in result:
        mia = result["mia"]
        out["mia"] = {k: mia[k] for k in ("skipped", "not_applicable") if k in mia} or {
            arm: {k: r[k] for k in ("auc", "tpr@1%fpr", "tpr@0.1%fpr")}
            for arm, r in mia.items()
            if arm != "setup" and "auc" in r
        }
    return out
