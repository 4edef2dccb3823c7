"""On-device evaluation and serving refits for many devices of one node at once.

Each device's serving refit fits only its own user row to the frozen global model, with Adam, on the
mean group loss of its own examples (``client/local_training.py::personalize``). The rows never
interact, so stacking D devices' rows into one [D, dim] parameter and minimising the sum of their mean
losses gives every row exactly its own gradient, and Adam (elementwise) its own update: the same
mathematics as D separate refits, without building D models and D optimizers. Examples, seeds and
store reads and writes are those of ``client/device_round.py`` (the reference path, executor
``per_device``); ``tests/test_batched_serving.py`` checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.client.device_round import (
    KNOWN_BEFORE,
    SERVES_ON,
    SERVING,
    DeviceRef,
    device_seed,
    embedding_bytes,
    heldout_rank,
    serving_examples,
    training_row,
)
from fedrec.common.config import DeviceConfig
from fedrec.common.model import NeuMF
from fedrec.common.store import DeviceStore


@dataclass(frozen=True)
class _Refit:
    items: torch.Tensor  # [N, 1+k] every device's groups, device after device
    labels: torch.Tensor  # [N, 1+k]
    owner: torch.Tensor  # [N] the device (row) each group belongs to
    counts: torch.Tensor  # [D] groups per device


def _examples(
    stores: Sequence[DeviceStore], refs: Sequence[DeviceRef], device: DeviceConfig, known: tuple[str, ...]
) -> _Refit:
    """Each device's ``serving_examples``, concatenated, with the row each group belongs to."""
    groups = [serving_examples(store, ref.device_id, device, known) for store, ref in zip(stores, refs)]
    sizes = torch.tensor([len(items) for items, _ in groups], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(refs)), sizes)
    return _Refit(torch.cat([x for x, _ in groups]), torch.cat([y for _, y in groups]), owner, sizes)


def refit_rows(model: NeuMF, rows: torch.Tensor, refit: _Refit, steps: int, lr: float) -> torch.Tensor:
    """[D, dim] rows after ``steps`` of Adam on each device's mean group loss (``personalize``, stacked)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    user = torch.nn.Parameter(rows.clone())
    optimizer = torch.optim.Adam([user], lr=lr)
    weight = (1.0 / refit.counts.clamp(min=1).float())[refit.owner]
    logits = model.frozen_item_logits()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        per_group = F.binary_cross_entropy_with_logits(
            logits(user, refit.owner, refit.items), refit.labels, reduction="none"
        )
        (per_group.sum(dim=-1) * weight).sum().backward()
        optimizer.step()
    return user.detach().clone()


def _model(global_params: dict[str, torch.Tensor], rows: torch.Tensor, device: DeviceConfig) -> NeuMF:
    model = NeuMF(len(rows), device.n_items, device.model)
    model.load_state_dict({**global_params, "user_emb.weight": rows})
    return model


def _refitted(
    global_params: dict[str, torch.Tensor],
    rows: torch.Tensor,
    stores: Sequence[DeviceStore],
    refs: Sequence[DeviceRef],
    device: DeviceConfig,
    known: tuple[str, ...],
) -> torch.Tensor:
    """The rows after the serving refit on the ``known`` history (unchanged without refit steps)."""
    steps, lr = device.serving.refit_steps, device.serving.refit_lr
    if steps == 0:
        return rows
    return refit_rows(_model(global_params, rows, device), rows, _examples(stores, refs, device, known), steps, lr)


def _keep_serving(stores: Sequence[DeviceStore], serving: torch.Tensor, device: DeviceConfig) -> None:
    for store, row in zip(stores, serving):
        store.put_states({device.state_prefix + SERVING: embedding_bytes(row[None, :])})


def serve_batched(refs: Sequence[DeviceRef], global_params: dict[str, torch.Tensor], device: DeviceConfig) -> None:
    """The final evaluation of a private arm: every device stores its serving row (as ``evaluate_batched``
    with ``keep_serving``) and no rank is computed."""
    with ExitStack() as open_stores:
        stores = [open_stores.enter_context(ref.open()) for ref in refs]
        rows = torch.cat([training_row(store, ref.device_id, device) for store, ref in zip(stores, refs)])
        _keep_serving(stores, _refitted(global_params, rows, stores, refs, device, SERVES_ON), device)


def evaluate_batched(
    refs: Sequence[DeviceRef], global_params: dict[str, torch.Tensor], device: DeviceConfig, keep_serving: bool
) -> list[int | None]:
    """``evaluate_device`` for every device in ``refs``: the rank of each held-out item (None without one)."""
    known = KNOWN_BEFORE[device.eval_stage]
    with ExitStack() as open_stores:
        stores = [open_stores.enter_context(ref.open()) for ref in refs]
        rows = torch.cat([training_row(store, ref.device_id, device) for store, ref in zip(stores, refs)])
        fitted = _refitted(global_params, rows, stores, refs, device, known)
        if keep_serving:
            serving = fitted if known == SERVES_ON else _refitted(global_params, rows, stores, refs, device, SERVES_ON)
            _keep_serving(stores, serving, device)
        targets = [store.read_events(device.eval_stage).items for store in stores]
        excludes = [np.concatenate([store.read_events(part).items for part in known]) for store in stores]
    scores = _model(global_params, fitted, device).score_users(torch.arange(len(refs))).double().numpy()
    return [
        heldout_rank(scores[i], target, seen, device_seed(device.seed, -1, ref.device_id)) if len(target) else None
        for i, (ref, target, seen) in enumerate(zip(refs, targets, excludes))
    ]
