"""What one device does in a round: open its encrypted store, train or evaluate, write its state back.

The user embedding and the privacy ledger live only in the device store; what this module returns
to the caller is the global parameters (dense) and scalar metrics.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fedrec.client.local_training import LocalOutcome, make_examples, personalize
from fedrec.client.round_randomness import RoundRandomness, SecureRandomness, SimulatedRandomness
from fedrec.client.stacked import DeviceWork
from fedrec.common.config import DeviceConfig
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.mechanisms import DevicePrivacy
from fedrec.common.metrics import ranks_from_scores
from fedrec.common.model import build_model
from fedrec.common.policy import DevicePolicy
from fedrec.common.privacy import LIFETIME, LifetimeLedger, PrivacyLedger, over_budget
from fedrec.common.recommender import Recommender, load_weights
from fedrec.common.store import DeviceStore, Events
from fedrec.common.training import recency_oversample

EMBEDDING, LEDGER, ROUNDS, SERVING = "user_embedding", "privacy_ledger", "rounds", "serving_embedding"
log = logging.getLogger("fedrec.client")


class DeviceState(Protocol):
    """What a device round reads and writes: an encrypted ``DeviceStore``, or the audit's state in memory."""

    @property
    def path(self) -> Path: ...

    def read_events(self, split: str | None = "train") -> Events: ...

    def get_state(self, name: str) -> bytes | None: ...

    def put_states(self, values: Mapping[str, bytes]) -> None: ...

    def __enter__(self) -> DeviceState: ...

    def __exit__(self, *exc: object) -> None: ...


class Device(Protocol):
    """A device a node trains: its id, where its randomness comes from (``DeviceRef.seeded``), its state."""

    @property
    def device_id(self) -> str: ...

    @property
    def seeded(self) -> bool: ...

    def open(self) -> DeviceState: ...


@dataclass(frozen=True)
class DeviceRef:
    device_id: str
    path: Path
    key: bytes
    durable: bool = True  # fsync each commit; a simulated fleet skips it (nothing survives a crash there anyway)
    # A simulated device draws its randomness from seeds of the run config, so runs repeat. Any other device
    # draws it from the operating system: record sampling, negatives and DP noise that the server could
    # recompute from the run config's seed would void the guarantee against it.
    seeded: bool = False

    def open(self) -> DeviceStore:
        return DeviceStore.open(self.path, self.key, durable=self.durable)


def device_seed(seed: int, server_round: int, device_id: str) -> int:
    """Stable per-device, per-round seed (Python's hash() is salted per process)."""
    return zlib.crc32(f"{seed}:{server_round}:{device_id}".encode())


def read_row(store: DeviceState, name: str, dim: int, init_std: float, seed: int) -> torch.Tensor:
    """[1, dim] a row of device state (``name`` with its prefix), or its seeded start before it is first kept."""
    raw = store.get_state(name)
    if raw is None:
        return torch.randn(1, dim, generator=torch.Generator().manual_seed(seed)) * init_std
    row = np.load(io.BytesIO(raw))
    if row.size != dim:
        raise FedrecError(
            f"{store.path}: state {name!r} has {row.size} values but the model's row has {dim}: this store was "
            "trained with another model config (use another state prefix)"
        )
    return torch.from_numpy(row).reshape(1, dim)


def embedding_bytes(weight: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, weight.detach().numpy().astype(np.float32).ravel())
    return buf.getvalue()


def local_model(global_params: Mapping[str, torch.Tensor], user_row: torch.Tensor, device: DeviceConfig) -> Recommender:
    """A fresh model per round (Opacus cannot wrap a module twice) with this device's own user row."""
    model = build_model(1, device.n_items, device.model)
    load_weights(model, {**global_params, "user_emb.weight": user_row})
    return model


def device_model(
    store: DeviceStore, device_id: str, global_params: dict[str, torch.Tensor], device: DeviceConfig
) -> Recommender:
    return local_model(global_params, training_row(store, device_id, device), device)


def training_row(store: DeviceState, device_id: str, device: DeviceConfig) -> torch.Tensor:
    """[1, dim] this device's training user row (a seeded start before its first round)."""
    seed = device_seed(device.seed, 0, device_id)
    return read_row(store, device.state_prefix + EMBEDDING, device.model.embedding_dim, device.model.init_std, seed)


def round_randomness(ref: Device, task: DeviceInstructions) -> RoundRandomness:
    """Where everything random in this device's round comes from (see ``DeviceRef.seeded``). Without DP
    nothing rests on the randomness being secret, so it repeats from the run config there too."""
    if ref.seeded or not task.privacy.private:
        return SimulatedRandomness(device_seed(task.device.seed, task.round.number, ref.device_id))
    return SecureRandomness()


def round_examples(
    store: DeviceState, task: DeviceInstructions, randomness: RoundRandomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """This round's training examples. Training never reads the held-out items; under DP the negatives
    depend on nothing but their own record."""
    events = store.read_events("train")
    train = np.asarray(events.items, dtype=np.int64)
    training = task.device.training
    if task.privacy.private:  # each record once, negatives from the record alone
        positives, avoid = train, None
    else:
        users = np.zeros(len(train), dtype=np.int64)
        positives = train[recency_oversample(users, events.timestamps, training.recent_last, training.recent_repeats)]
        avoid = train
    items, labels = make_examples(positives, avoid, task.device.n_items, training.negatives, randomness.negatives())
    return items, labels


def read_ledger(store: DeviceState, prefix: str) -> PrivacyLedger:
    return PrivacyLedger.from_json(store.get_state(prefix + LEDGER))


def write_round(
    store: DeviceState,
    prefix: str,
    ledger: PrivacyLedger,
    rows: Mapping[str, torch.Tensor],
    lifetime: LifetimeLedger | None = None,
) -> None:
    """One transaction: the rows of device state, the ledgers and the round counter move together."""
    rounds = int(store.get_state(prefix + ROUNDS) or b"0") + 1
    states = {prefix + LEDGER: ledger.to_json(), prefix + ROUNDS: str(rounds).encode()}
    if lifetime is not None:
        states[LIFETIME] = lifetime.to_json()
    states.update({prefix + name: embedding_bytes(row) for name, row in rows.items()})
    store.put_states(states)


@dataclass(frozen=True)
class Trained:
    """What a mechanism's device step gives back for one device."""

    arrays: dict[str, torch.Tensor]  # what the device contributes: its global parameters, or its share
    rows: dict[str, torch.Tensor]  # device state to keep (names without the prefix); never sent
    num_examples: int
    loss: float = 0.0
    steps: int = 0
    item_counts: torch.Tensor | None = None  # examples per item row (training without DP only)


@dataclass(frozen=True)
class RoundResult:
    """One device's round as its node sees it; a refusing device (budget spent) contributes nothing."""

    arrays: dict[str, torch.Tensor]
    num_examples: int
    outcome: LocalOutcome
    item_counts: torch.Tensor | None = None


class DeviceStep(Protocol):
    """What a mechanism's device does with its round's inputs (``client/app.py`` picks one per mechanism)."""

    @property
    def block(self) -> int:
        """Devices prepared and trained together (stores held open at once)."""

    @property
    def rows(self) -> tuple[str, ...]:
        """Device state beyond the user row that the step reads and keeps."""

    def train(self, works: Sequence[DeviceWork]) -> list[Trained]: ...


STORES_OPEN = 256  # stores a stacked step holds open at once (file handles, one block's results in memory)


def device_rounds(
    refs: Sequence[Device], task: DeviceInstructions, step: DeviceStep, policy: DevicePolicy
) -> Iterator[RoundResult]:
    """Every device's round, one skeleton for every mechanism and executor: check the instructions against
    the owner's ``policy``, open the store, read the ledgers and check the budgets (the run's and the
    lifetime's, with the ledger's one tolerance), build the examples, train through the mechanism's
    ``step``, commit the device's rows, ledgers and round counter in one transaction."""
    device, privacy, prefix = task.device, task.privacy, task.device.state_prefix
    reason = policy.refusal(privacy, device, task.mechanism.shared)
    if reason is not None:
        log.warning("refused round %d: %s", task.round.number, reason)
        yield from (RoundResult({}, 0, LocalOutcome(0.0, 0, 0.0, True)) for _ in refs)
        return
    for start in range(0, len(refs), step.block):
        block = refs[start : start + step.block]
        with ExitStack() as open_stores:
            stores = [open_stores.enter_context(ref.open()) for ref in block]
            ledgers = [_round_ledgers(store, task) for store in stores]
            allowed = []
            for i, (ref, ledger) in enumerate(zip(block, ledgers)):
                why = ledger.refusal(privacy, policy)
                if why is None:
                    allowed.append(i)
                else:
                    log.warning("%s refused round %d: %s", ref.device_id, task.round.number, why)
            works = {i: round_work(stores[i], block[i], task, step.rows) for i in allowed}
            trained = dict(zip(allowed, step.train([works[i] for i in allowed])))
            results = []
            for i, (store, ledger) in enumerate(zip(stores, ledgers)):
                if i not in trained:
                    results.append(RoundResult({}, 0, LocalOutcome(0.0, 0, ledger.before.epsilon(privacy.delta), True)))
                    continue
                done = trained[i]
                write_round(store, prefix, ledger.after, done.rows, ledger.lifetime if privacy.private else None)
                epsilon = ledger.after.epsilon(privacy.delta) if privacy.private else 0.0
                outcome = LocalOutcome(done.loss, done.steps, epsilon)
                results.append(RoundResult(done.arrays, done.num_examples, outcome, done.item_counts))
        yield from results


@dataclass(frozen=True)
class RoundLedgers:
    """A device's ledgers around this round: the run's (under the state prefix the server named) before
    and after, and the store's lifetime ledger after (which no server-named prefix resets)."""

    before: PrivacyLedger
    after: PrivacyLedger
    lifetime: LifetimeLedger
    unit: str

    def refusal(self, privacy: DevicePrivacy, policy: DevicePolicy) -> str | None:
        """Why this round would take the device past the run's budget or its owner's lifetime one, if it would."""
        if not privacy.private:
            return None
        run = self.after.epsilon(privacy.delta)
        if over_budget(run, privacy.budget):
            return f"the run's epsilon would reach {run:.3g}, past its budget {privacy.budget:.3g}"
        lifetime = self.lifetime.epsilon(self.unit, privacy.delta)
        if over_budget(lifetime, policy.max_epsilon):
            return (
                f"the lifetime epsilon per {self.unit} would reach {lifetime:.3g}, "
                f"past this device's maximum {policy.max_epsilon:.3g}"
            )
        return None


def _round_ledgers(store: DeviceState, task: DeviceInstructions) -> RoundLedgers:
    device, privacy, mechanism, number = task.device, task.privacy, task.mechanism, task.round.number
    before, after = mechanism.ledgers(read_ledger(store, device.state_prefix), device, privacy, number)
    if not privacy.private:  # nothing is spent: the lifetime ledger is neither read nor written
        return RoundLedgers(before, after, LifetimeLedger(), mechanism.lifetime_unit)
    lifetime = LifetimeLedger.from_json(store.get_state(LIFETIME))
    counted = lifetime.counted.get(device.state_prefix, 0)
    new = lifetime.after(mechanism.lifetime_unit, mechanism.new_entries(device, privacy, number, counted))
    new.counted[device.state_prefix] = number
    return RoundLedgers(before, after, new, mechanism.lifetime_unit)


def refuses(ledger: PrivacyLedger, privacy: DevicePrivacy) -> bool:
    """Would this ledger take the device past its budget? (Then it sits the round out.)"""
    return over_budget(ledger.epsilon(privacy.delta), privacy.budget)


def round_work(store: DeviceState, ref: Device, task: DeviceInstructions, rows: tuple[str, ...]) -> DeviceWork:
    """A device's round inputs: its examples, its training user row, the other rows its step keeps, its seed.
    A row other than the user row starts at zero."""
    randomness = round_randomness(ref, task)
    items, labels = round_examples(store, task, randomness)
    dim = task.device.model.embedding_dim
    kept = {name: read_row(store, task.device.state_prefix + name, dim, 0.0, 0) for name in rows}
    return DeviceWork(items, labels, training_row(store, ref.device_id, task.device), randomness, kept)


def serving_model(
    store: DeviceStore,
    device_id: str,
    global_params: dict[str, torch.Tensor],
    device: DeviceConfig,
    known: tuple[str, ...] = ("train",),
) -> Recommender:
    """The model this device serves with: the global model plus its user row refitted on-device on the
    ``known`` part of its history (never uploaded, never fed into training, so it needs no DP)."""
    model = device_model(store, device_id, global_params, device)
    serving = device.serving
    if serving.refit_steps > 0:
        items, labels = serving_examples(store, device_id, device, known)
        personalize(model, items, labels, serving.refit_steps, serving.refit_lr)
    return model


def serving_examples(
    store: DeviceStore, device_id: str, device: DeviceConfig, known: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The groups a serving refit fits: the ``known`` history, negatives avoiding it, from a seeded stream."""
    positives = np.concatenate([store.read_events(stage).items for stage in known]).astype(np.int64)
    rng = np.random.default_rng(device_seed(device.seed, -2, device_id))
    return make_examples(positives, positives, device.n_items, device.training.negatives, rng)


# What a device knows when it serves: after training, its whole history up to now (the next item it
# picks is the one it is being served for). Validating against its validation item uses the train part.
SERVES_ON = ("train", "validation")
KNOWN_BEFORE = {"validation": ("train",), "test": SERVES_ON}


def _store_serving(
    store: DeviceStore, ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig
) -> Recommender:
    """Personalize for serving and keep the serving row in the store (separate from the training row)."""
    model = serving_model(store, ref.device_id, global_params, device, SERVES_ON)
    store.put_states({device.state_prefix + SERVING: embedding_bytes(model.user_emb.weight)})
    return model


def _served(ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig) -> Recommender:
    with ref.open() as store:
        return _store_serving(store, ref, global_params, device)


def serve_private(ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig) -> None:
    """A private arm's final evaluation on one device: store the serving row (it replies nothing of its own)."""
    with ref.open() as store:
        _store_serving(store, ref, global_params, device)


def serve_device(ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig) -> np.ndarray:
    """The device's serving user row (for the harness, which scores every device in one matrix)."""
    return _served(ref, global_params, device).user_emb.weight.numpy().ravel()


def device_scores(ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig) -> np.ndarray:
    """[n_items] scores of this device's user: computed on the device, never sent."""
    model = _served(ref, global_params, device)
    return model.score_users(torch.zeros(1, dtype=torch.long))[0].numpy()


def evaluate_device(
    ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig, keep_serving: bool = False
) -> int | None:
    """0-based rank of the device's held-out item among its unseen items (None if it has none), served
    with the user row refitted on what the device knew before that item.

    ``keep_serving`` (the final evaluation) also stores the serving row refitted on everything the device
    knows, for the next step (``fedrec recommend``, the harness's test ranking)."""
    stage = device.eval_stage
    known = KNOWN_BEFORE[stage]
    with ref.open() as store:
        target = store.read_events(stage).items
        exclude = [store.read_events(part).items for part in known]
        model = serving_model(store, ref.device_id, global_params, device, known)
        if keep_serving:
            serving = (
                model if known == SERVES_ON else serving_model(store, ref.device_id, global_params, device, SERVES_ON)
            )
            store.put_states({device.state_prefix + SERVING: embedding_bytes(serving.user_emb.weight)})
    if len(target) == 0:
        return None
    scores = model.score_users(torch.zeros(1, dtype=torch.long))[0].double().numpy()
    return heldout_rank(scores, target, np.concatenate(exclude), device_seed(device.seed, -1, ref.device_id))


def heldout_rank(scores: np.ndarray, target: np.ndarray, seen: np.ndarray, seed: int) -> int:
    """0-based rank of the last ``target`` item among the items not ``seen`` (ties broken by ``seed``)."""
    scores = scores.copy()
    tgt = int(target[-1])
    target_score = scores[tgt]
    scores[seen.astype(np.int64)] = -np.inf
    scores[tgt] = target_score
    rng = np.random.default_rng(seed)
    return int(ranks_from_scores(scores[None, :], np.array([target_score]), rng)[0])


def serving_row(ref: DeviceRef, prefix: str) -> np.ndarray | None:
    """The serving row the device stored at the final evaluation (None if it has not stored one)."""
    with ref.open() as store:
        raw = store.get_state(prefix + SERVING)
    return None if raw is None else np.load(io.BytesIO(raw))


def ledger_of(ref: DeviceRef, prefix: str) -> PrivacyLedger:
    with ref.open() as store:
        return PrivacyLedger.from_json(store.get_state(prefix + LEDGER))
