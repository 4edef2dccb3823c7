"""What one device does in a round: open its encrypted store, train or evaluate, write its state back.

The user embedding and the privacy ledger live only in the device store; what this module returns
to the caller is the global parameters (dense) and scalar metrics.
"""

from __future__ import annotations

import io
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrec.client.local_training import LocalOutcome, make_examples, personalize, train_local
from fedrec.common.config import DeviceConfig
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.item_rows import example_counts
from fedrec.common.metrics import ranks_from_scores
from fedrec.common.model import NeuMF, global_state
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.store import DeviceStore
from fedrec.common.training import recency_oversample

EMBEDDING, LEDGER, ROUNDS, SERVING = "user_embedding", "privacy_ledger", "rounds", "serving_embedding"


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


@dataclass(frozen=True)
class TrainResult:
    state: dict[str, torch.Tensor]  # global parameters after local training
    num_examples: int
    outcome: LocalOutcome
    item_counts: torch.Tensor | None = None  # examples per item row (training without DP only)


def device_seed(seed: int, server_round: int, device_id: str) -> int:
    """Stable per-device, per-round seed (Python's hash() is salted per process)."""
    return zlib.crc32(f"{seed}:{server_round}:{device_id}".encode())


def stream_seed(purpose: str, *seeds: int) -> int:
    """The seed of one random stream of a round (noise, record sampling) from the round seeds it serves. A
    simulated round's seeds fit in 32 bits and get their 32-bit hash (runs repeat); an operating-system
    seed also keeps its high bits, so the stream is not narrowed to 32 bits an adversary could search."""
    high = 0
    for seed in seeds:
        high ^= seed >> 32
    return zlib.crc32(f"{purpose}:{','.join(map(str, seeds))}".encode()) | high << 32


def load_user_row(store: DeviceStore, prefix: str, dim: int, seed: int) -> torch.Tensor:
    raw = store.get_state(prefix + EMBEDDING)
    if raw is None:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(1, dim, generator=gen) * 0.01
    row = np.load(io.BytesIO(raw))
    if row.size != dim:
        raise FedrecError(
            f"{store.path}: state {prefix + EMBEDDING!r} has {row.size} values but the model's user row "
            f"has {dim}: this store was trained with another model config (use another state prefix)"
        )
    return torch.from_numpy(row).reshape(1, dim)


def embedding_bytes(weight: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, weight.detach().numpy().astype(np.float32).ravel())
    return buf.getvalue()


def device_model(
    store: DeviceStore, device_id: str, global_params: dict[str, torch.Tensor], device: DeviceConfig
) -> NeuMF:
    """A fresh model per round (Opacus cannot wrap a module twice) with this device's own user row."""
    model = NeuMF(1, device.n_items, device.model)
    model.load_state_dict({**global_params, "user_emb.weight": training_row(store, device_id, device)})
    return model


def training_row(store: DeviceStore, device_id: str, device: DeviceConfig) -> torch.Tensor:
    """[1, dim] this device's training user row (a seeded start before its first round)."""
    return load_user_row(store, device.state_prefix, device.model.embedding_dim, device_seed(device.seed, 0, device_id))


def round_seed_of(ref: DeviceRef, task: DeviceInstructions) -> int:
    """The seed of everything random in this device's round (see ``DeviceRef.seeded``). Without DP nothing
    rests on the randomness being secret, so it repeats from the run config there too."""
    if ref.seeded or not task.privacy.private:
        return device_seed(task.device.seed, task.round.number, ref.device_id)
    return secrets.randbits(63)


def round_examples(store: DeviceStore, task: DeviceInstructions, round_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    items, labels = make_examples(
        positives, avoid, task.device.n_items, training.negatives, np.random.default_rng(round_seed)
    )
    return items, labels


def read_ledger(store: DeviceStore, prefix: str) -> PrivacyLedger:
    return PrivacyLedger.from_json(store.get_state(prefix + LEDGER))


def write_round(store: DeviceStore, prefix: str, user_row: torch.Tensor, ledger: PrivacyLedger) -> None:
    """One transaction: the user row, the ledger and the round counter move together."""
    rounds = int(store.get_state(prefix + ROUNDS) or b"0") + 1
    store.put_states(
        {
            prefix + EMBEDDING: embedding_bytes(user_row),
            prefix + LEDGER: ledger.to_json(),
            prefix + ROUNDS: str(rounds).encode(),
        }
    )


def train_device(ref: DeviceRef, global_params: dict[str, torch.Tensor], task: DeviceInstructions) -> TrainResult:
    """The reference path: one device, Opacus (or plain training without DP)."""
    prefix = task.device.state_prefix
    with ref.open() as store:
        ledger = read_ledger(store, prefix)
        model = device_model(store, ref.device_id, global_params, task.device)
        round_seed = round_seed_of(ref, task)
        items, labels = round_examples(store, task, round_seed)
        outcome = train_local(model, items, labels, task.device.training, task.privacy, ledger, round_seed)
        if not outcome.refused:
            write_round(store, prefix, model.user_emb.weight, ledger)
    counts = None if task.privacy.private else example_counts(items, task.device.n_items)
    return TrainResult(global_state(model), 0 if outcome.refused else len(items), outcome, counts)


def serving_model(
    store: DeviceStore,
    device_id: str,
    global_params: dict[str, torch.Tensor],
    device: DeviceConfig,
    known: tuple[str, ...] = ("train",),
) -> NeuMF:
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
) -> NeuMF:
    """Personalize for serving and keep the serving row in the store (separate from the training row)."""
    model = serving_model(store, ref.device_id, global_params, device, SERVES_ON)
    store.put_states({device.state_prefix + SERVING: embedding_bytes(model.user_emb.weight)})
    return model


def _served(ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig) -> NeuMF:
    with ref.open() as store:
        return _store_serving(store, ref, global_params, device)


def holds_heldout(ref: DeviceRef, stage: str) -> bool:
    with ref.open() as store:
        return len(store.read_events(stage).items) > 0


def serve_private(ref: DeviceRef, global_params: dict[str, torch.Tensor], device: DeviceConfig) -> bool:
    """A private arm's final evaluation on one device: store the serving row and say whether the device
    holds an item of its evaluation stage (all its reply counts), in one opening of the store."""
    with ref.open() as store:
        _store_serving(store, ref, global_params, device)
        return len(store.read_events(device.eval_stage).items) > 0


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
