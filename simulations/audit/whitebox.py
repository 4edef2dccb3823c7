"""The one-run canary audit (Steinke, Nasr and Jagielski 2023) through the code a device runs, scored on
what the party the guarantee is stated against receives.

``local`` (federated_dp) promises record-level DP against a server that receives each device's update;
``distributed`` (federated_ddp) against a server that sees each round's revealed sum. So this audit does
not score a final model (its serving refit and user rows lie outside the mechanism): it reads those
messages. Each canary is one record on its host device on an item of its own, included with probability
1/2. Its score is what the messages show of that item's row, summed over the rounds and projected on the
direction its host's canaries share (``along_host_direction``), plus under ``distributed`` the row's
count in the released histogram.

The auditor is that server, and a device's guarantee must hold whatever model and recipe the server
sends, so it sends the ones that show a record most (``Adversary``), keeping the audited privacy settings
(noise multiplier, clipping norm, sample rate, steps, budget, delta): each round it sets the GMF half of
the output layer to a large gain and every item's GMF row to zero, and asks for one negative per record,
so a canary's clipped gradient lies on its item's row and its negative's (norm C / sqrt 2 each); and it
asks for plain SGD at a tiny learning rate, so what a device sends is linear in its noisy gradients and
the device's own user row (the gradient's direction) stays put from round to round. Scores are
standardised within the group that shares a noise scale (a device's own updates under ``local``, the
whole sum under ``distributed``) by median and MAD, and ``simulations.audit.bound`` turns the k highest
and k lowest into a lower bound. Devices train through ``fedrec.client.fleet.train_fleet`` (Opacus per
device, or the stacked trainer) and ``fedrec.client.shared_noise.train_fleet_shared``, their state in
memory (``MemoryDevice``); the server's step is the mechanism's own ``ServerStep``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedrec.client.device_round import Device, RoundResult, read_ledger
from fedrec.client.fleet import train_fleet
from fedrec.client.shared_noise import train_fleet_shared
from fedrec.common.config import FederationConfig, ModelConfig, PrivacyConfig
from fedrec.common.dp_recipe import log_odds_prior
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, RoundInfo
from fedrec.common.item_rows import ITEM_TABLE
from fedrec.common.mechanisms import DevicePrivacy, Trainer, mechanism_for
from fedrec.common.model import PRIOR
from fedrec.common.policy import SIMULATED
from fedrec.common.replies import SHARED_COUNTS
from fedrec.common.split import Split
from fedrec.common.store import Events
from fedrec.server.federation import resolve_min_devices
from fedrec.simulations.audit.bound import ceiling, epsilon_lower_bound
from fedrec.simulations.audit.canary import guesses
from fedrec.simulations.audit.canary_runs import canary_federation
from fedrec.simulations.audit.inprocess import MemoryDevice, memory_devices

Progress = Callable[[int, int], None]  # (rounds done, rounds)
OUTPUT = "output.weight"
MAD_TO_STD = 1.4826
# The control's budget: noise so small (multiplier ~0.1) that the audit must find most canaries
CONTROL_EPSILON = 1000.0  # the MAD of a normal times this is its standard deviation


@dataclass(frozen=True)
class CanaryLayout:
    """Canary j sits on device ``hosts[j]`` (its index in the fleet) as a record of item ``items[j]``."""

    hosts: np.ndarray
    items: np.ndarray
    included: np.ndarray
    n_base_items: int

    @property
    def m(self) -> int:
        return len(self.hosts)


def plan_layout(devices: int, per_device: int, n_base_items: int, seed: int) -> CanaryLayout:
    """Every canary on an item of its own (drawn as another record's negative now and then: noise for the
    auditor, never a confound, since inclusion is a fair coin)."""
    hosts = np.repeat(np.arange(devices), per_device)
    items = n_base_items + np.arange(len(hosts))
    included = np.random.default_rng(seed).random(len(hosts)) < 0.5
    return CanaryLayout(hosts, items, included, n_base_items)


def canary_fleet(split: Split, users: int, layout: CanaryLayout) -> list[MemoryDevice]:
    """The first ``users`` devices with train data, each holding its train events and, at its first
    timestamp, its included canaries."""
    devices = [d for d in memory_devices(split) if len(d.events.items)][:users]
    out = []
    for i, device in enumerate(devices):
        own = layout.items[(layout.hosts == i) & layout.included]
        ev = device.events
        n = len(own)
        events = Events(
            np.concatenate([own.astype(np.int64), ev.items]),
            np.concatenate([np.full(n, ev.timestamps.min(), dtype=np.int64), ev.timestamps]),
            np.concatenate([np.full(n, "rating", dtype=object), ev.event_types.astype(object)]),
            np.concatenate([np.full(n, np.nan, dtype=np.float32), ev.values]),
        )
        out.append(MemoryDevice(device.device_id, events))
    return out


@dataclass(frozen=True)
class Adversary:
    """What the auditing server sends beyond the audited privacy settings."""

    gain: float = 1000.0  # the GMF half of the output layer: a record's gradient outgrows the clipping norm
    lr: float = 1e-6  # the devices' SGD rate (local) or table rate (distributed): rows stay where they are

    def instruct(self, federation: FederationConfig) -> FederationConfig:
        device = federation.device
        training = replace(device.training, optimizer="sgd", lr=self.lr, negatives=1)
        shared = replace(device.shared_noise, table_lr=self.lr, momentum=0.0)
        return replace(federation, device=replace(device, training=training, shared_noise=shared))

    def craft(self, params: dict[str, torch.Tensor], config: ModelConfig) -> None:
        """In place: the output's GMF weights at ``gain`` and every item's GMF row at zero, so no logit
        saturates, a record's gradient is its items' rows (its user row gets none: the rows it would
        multiply are zero) and it outgrows the clipping norm."""
        g = config.gmf_dim
        params[OUTPUT][0, -g:] = self.gain
        params[ITEM_TABLE][:, :g] = 0.0


@dataclass
class Observed:
    """What the audit's adversary has seen of each canary's row, summed over the rounds."""

    rows: np.ndarray  # [m, width] the row's part of the messages
    counts: np.ndarray  # [m] the row's released histogram count (distributed), else zeros
    refused: int  # device rounds refused (a budget the noise calibration's quantile leaves short)


def robust_z(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    for g in np.unique(groups):
        at = groups == g
        med = np.median(x[at])
        mad = MAD_TO_STD * np.median(np.abs(x[at] - med))
        out[at] = (x[at] - med) / (mad if mad > 0 else 1.0)
    return out


def along_host_direction(rows: np.ndarray, hosts: np.ndarray) -> np.ndarray:
    """Each canary's row projected on its host's direction: every canary of a host moves its row along the
    same unknown vector (its positive gradient is the host's user row times the output weights), so the
    top singular vector of the host's canary rows estimates it, oriented so that the mean projection is
    positive (the included half moves along it, the excluded half not at all)."""
    out = np.zeros(len(rows))
    for h in np.unique(hosts):
        at = hosts == h
        _, _, vt = np.linalg.svd(rows[at], full_matrices=False)
        proj = rows[at] @ vt[0]
        out[at] = proj if proj.mean() >= 0 else -proj
    return out


def canary_scores(seen: Observed, layout: CanaryLayout) -> np.ndarray:
    """Standardised within each host (a device's noise scale is its own under ``local``), plus the
    released count's, standardised over all canaries (one noise scale)."""
    score = robust_z(along_host_direction(seen.rows, layout.hosts), layout.hosts)
    if np.any(seen.counts):
        score = score + robust_z(seen.counts, np.zeros(layout.m, dtype=np.int64))
    return score


@dataclass(frozen=True)
class AuditRun:
    """One canary run: the fleet with its canaries, the audited settings as instructed, the adversary."""

    fleet: list[MemoryDevice]
    layout: CanaryLayout
    federation: FederationConfig
    privacy: DevicePrivacy
    adversary: Adversary
    progress: Progress


def _observe_local(run: AuditRun) -> Observed:
    fleet, layout, federation, privacy, adversary = run.fleet, run.layout, run.federation, run.privacy, run.adversary
    device = federation.device
    params = mechanism_for(privacy).initial_state(device)
    index = {d.device_id: i for i, d in enumerate(fleet)}
    at = {i: np.flatnonzero(layout.hosts == i) for i in range(len(fleet))}
    g = device.model.gmf_dim
    rows = np.zeros((layout.m, g))
    rounds, refused = federation.server.rounds, 0
    for rnd in range(1, rounds + 1):
        adversary.craft(params, device.model)
        before = params[ITEM_TABLE][:, :g].clone()

        def tap(ref: Device, result: RoundResult) -> None:
            if result.outcome.refused:
                return
            j = at[index[ref.device_id]]
            sent = result.arrays[ITEM_TABLE][layout.items[j], :g]
            rows[j] += (sent - before[layout.items[j]]).double().numpy()

        mean, metrics = train_fleet(fleet, params, DeviceInstructions(device, privacy, RoundInfo(rnd)), SIMULATED, tap)
        params = {k: mean[k] for k in params}  # the server's FedAvg of one-weight devices
        refused += int(metrics["refused"])
        run.progress(rnd, rounds)
    return Observed(rows, np.zeros(layout.m), refused)


def _observe_shared(run: AuditRun) -> Observed:
    fleet, layout, federation, privacy, adversary = run.fleet, run.layout, run.federation, run.privacy, run.adversary
    device = federation.device
    mechanism = mechanism_for(privacy)
    params = mechanism.initial_state(device)
    step = mechanism.server_step(federation)
    if step is None:
        raise FedrecError(f"{mechanism.name!r} has no server step to apply to its sums")
    buffers: dict[str, torch.Tensor] = {}
    g = device.model.gmf_dim
    rows, counts = np.zeros((layout.m, g)), np.zeros(layout.m)
    rounds, refused = federation.server.rounds, 0
    for rnd in range(1, rounds + 1):
        adversary.craft(params, device.model)
        task = DeviceInstructions(device, privacy, RoundInfo(rnd))
        total, metrics = train_fleet_shared(fleet, params, task, SIMULATED)
        refused += int(metrics["refused"])
        if metrics["devices"] >= device.shared_noise.min_devices:  # the server's rule: fewer is dropped
            if SHARED_COUNTS in total:
                counts += total[SHARED_COUNTS][layout.items].numpy()
                params[PRIOR] = log_odds_prior(total[SHARED_COUNTS], device.training.negatives)
            else:
                rows += total[ITEM_TABLE][layout.items, :g].numpy()
                step.apply(params, {ITEM_TABLE: total[ITEM_TABLE]}, privacy.expected_batch, buffers)
        run.progress(rnd, rounds)
    return Observed(rows, counts, refused)


def covers(privacy: PrivacyConfig) -> bool:
    """Per-record mechanisms whose messages carry item rows: local and distributed."""
    mechanism = mechanism_for(privacy)
    return mechanism.private and mechanism.trainer in (Trainer.LOCAL, Trainer.SHARED_GRADIENTS)


@dataclass(frozen=True)
class WhiteboxSettings:
    users: int = 200  # host devices (the first users with train data)
    canaries_per_device: int = 100
    guesses: int = 9500  # per side: "included" for the k highest scores, "excluded" for the k lowest
    confidence: float = 0.95
    seed: int = 0
    adversary: Adversary = Adversary()
    padding_items: int = 0  # catalogue items no record holds (fewer negatives land on canary rows)


def whitebox_audit(
    split: Split,
    federation: FederationConfig,
    settings: WhiteboxSettings,
    progress: Progress = lambda done, total: None,
) -> dict:
    """Plan, train once through the device code, score what the server receives, bound. ``federation``
    is the audited arm's (its ``device.n_items`` is set here, its ``server.rounds`` is the run's length)."""
    t0 = time.perf_counter()
    mechanism = mechanism_for(federation.privacy)
    if not covers(federation.privacy):
        raise FedrecError(
            f"the white-box canary audit covers the local and distributed mechanisms, not {mechanism.name!r}"
        )
    shared = mechanism.trainer is Trainer.SHARED_GRADIENTS
    users = min(settings.users, int(np.count_nonzero(np.bincount(split.train_users))))
    if not federation.device.model.uses_gmf:
        raise FedrecError("the white-box canary audit crafts the GMF half of the model: the audited model has none")
    base = split.n_items + settings.padding_items
    layout = plan_layout(users, settings.canaries_per_device, base, settings.seed)
    if 2 * settings.guesses > layout.m:
        raise FedrecError(
            f"{settings.guesses} guesses a side need at least {2 * settings.guesses} canaries, and "
            f"{users} devices x {settings.canaries_per_device} give {layout.m}: fewer guesses, or more canaries"
        )
    fleet = canary_fleet(split, users, layout)
    n_items = base + layout.m
    records = sum(len(d.events.items) for d in fleet)
    fleet_cfg = replace(federation.device.fleet, devices=len(fleet), train_records=records)
    federation = canary_federation(federation)  # m_min of the canary fleet, item rows at random
    device = replace(federation.device, n_items=n_items, seed=settings.seed, fleet=fleet_cfg)
    if shared:
        device = resolve_min_devices(device)
    federation = settings.adversary.instruct(replace(federation, device=device))
    rounds = federation.server.rounds
    privacy = mechanism.plan(federation.privacy, device, rounds, records, len(fleet))
    observe = _observe_shared if shared else _observe_local
    seen = observe(AuditRun(fleet, layout, federation, privacy, settings.adversary, progress))
    scores = canary_scores(seen, layout)
    g = guesses(scores, settings.guesses)
    truth = np.where(layout.included, 1, -1)
    r, v = int(np.count_nonzero(g)), int(np.sum(g == truth))
    delta = privacy.delta
    epsilons = [read_ledger(d, device.state_prefix).epsilon(delta) for d in fleet]
    formal = float(max(epsilons))
    bound = epsilon_lower_bound(layout.m, r, v, delta, settings.confidence)
    return {
        "mechanism": mechanism.name,
        "budget": federation.privacy.epsilon,
        "executor": device.executor,
        "epsilon_lower_bound": bound,
        "epsilon_formal": formal,
        "flagged": bound > formal,
        "ceiling": ceiling(layout.m, r, delta, settings.confidence),
        "m": layout.m,
        "included": int(layout.included.sum()),
        "guesses": r,
        "correct": v,
        "confidence": settings.confidence,
        "delta": delta,
        "noise_multiplier": privacy.noise_multiplier,
        "devices": len(fleet),
        "refused_device_rounds": seen.refused,
        "rounds": rounds,
        "n_items": n_items,
        "wall_s": time.perf_counter() - t0,
    }
