"""Many devices of one node trained at once without DP, each exactly as ``train_plain`` trains it.

``train_plain`` costs a model, an optimizer and eight small steps per device. Here the devices of a chunk
are stacked (each parameter one [devices, *shape] tensor, ``client/stacked.py``'s forward): each device
keeps its own permutation of its examples, its own batches of ceil(N / steps_per_epoch) examples and its
mean group loss, so the gradient of the sum of the devices' losses gives each row exactly its own gradient,
and Adam (elementwise) its own step. A step is taken by every device of a chunk at once, so a chunk holds
devices with the same number of steps.
``tests/test_batched_training.py`` trains the same devices both ways.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch

from fedrec.client.stacked import ITEM, USER, DeviceTrained, DeviceWork, StackedNeuMF, padded, stacked_optimizer
from fedrec.common.config import LocalTraining
from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig, NeuMF


def batch_size(n: int, training: LocalTraining) -> int:
    """``train_plain``'s batch: the examples spread over ``steps_per_epoch`` batches."""
    return max(1, -(-n // training.steps_per_epoch))


def plain_steps(n: int, training: LocalTraining) -> int:
    return training.epochs * -(-n // batch_size(n, training))


def supports_plain_batched(model_cfg: ModelConfig, training: LocalTraining) -> bool:
    """The stacked forward has no dropout, and the rows' L2 term of ``emb_l2`` is not stacked."""
    return model_cfg.dropout == 0 and training.emb_l2 == 0


def _train_chunk(
    net: StackedNeuMF,
    model: NeuMF,
    global_params: Mapping[str, torch.Tensor],
    works: Sequence[DeviceWork],
    training: LocalTraining,
) -> list[DeviceTrained]:
    d = len(works)
    # one [D, *shape] leaf per parameter, not views of one buffer: a view's gradient is a whole buffer
    users = torch.cat([w.user_row for w in works]).unsqueeze(1)
    params = {
        name: torch.nn.Parameter((users if name == USER else global_params[name].expand(d, *p.shape)).clone())
        for name, p in model.named_parameters()
    }
    optimizer = stacked_optimizer(list(params.values()), training)
    items = padded([w.items for w in works], int(max(len(w.items) for w in works)), 0)
    labels = padded([w.labels for w in works], items.shape[1], 0.0)
    sizes = [len(w.items) for w in works]
    batches = [batch_size(n, training) for n in sizes]
    generators = [torch.Generator().manual_seed(w.randomness.order_seed()) for w in works]
    at = torch.arange(d)[:, None]
    loss_sum = torch.zeros(d, dtype=torch.float64)
    for _ in range(training.epochs):
        orders = [torch.randperm(n, generator=g) for n, g in zip(sizes, generators)]
        for step in range(-(-sizes[0] // batches[0])):
            picked = [order[step * b : (step + 1) * b] for order, b in zip(orders, batches)]
            counts = torch.tensor([len(p) for p in picked])
            index = padded(picked, int(counts.max()), 0)
            valid = torch.arange(index.shape[1]) < counts[:, None]
            step_items = items[at, index]
            users_at = params[USER][:, :, None, :].expand(*step_items.shape, -1)
            rows = params[ITEM][at[:, :, None], step_items]
            loss, _, _ = net(params, users_at, rows, labels[at, index])
            per_device = (loss * valid).sum(1) / counts
            optimizer.zero_grad(set_to_none=True)
            per_device.sum().backward()
            optimizer.step()
            loss_sum += per_device.detach().double() * counts
    steps = plain_steps(sizes[0], training)
    results = []
    for i in range(d):
        state = {k: params[k][i].detach().clone() for k in global_params}
        mean_loss = float(loss_sum[i]) / (sizes[i] * training.epochs)
        results.append(DeviceTrained(state, params[USER][i].detach().clone(), sizes[i], mean_loss, steps))
    return results


def train_plain_batched(
    global_params: Mapping[str, torch.Tensor],
    model_cfg: ModelConfig,
    n_items: int,
    devices: Sequence[DeviceWork],
    training: LocalTraining,
    chunk_size: int = 64,
) -> list[DeviceTrained]:
    """Every device's round as ``train_plain`` runs it, in chunks of devices with as many steps and
    similar sizes; results in the order of ``devices``."""
    if not supports_plain_batched(model_cfg, training):
        raise FedrecError("batched training without DP: dropout and emb_l2 must be 0 (use executor per_device)")
    model = NeuMF(1, n_items, model_cfg)
    net = StackedNeuMF(model)
    shared = {k: v for k, v in global_params.items() if k != USER}
    by_steps: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(devices):
        by_steps[plain_steps(len(w.items), training)].append(i)
    results: list[DeviceTrained | None] = [None] * len(devices)
    for i in by_steps.pop(0, []):  # no examples: nothing to train, as in train_plain
        results[i] = DeviceTrained(dict(shared), devices[i].user_row, 0, 0.0, 0)
    for ids in by_steps.values():
        ids.sort(key=lambda i: len(devices[i].items))
        for start in range(0, len(ids), chunk_size):
            chunk = ids[start : start + chunk_size]
            trained = _train_chunk(net, model, shared, [devices[i] for i in chunk], training)
            for i, result in zip(chunk, trained):
                results[i] = result
    return results  # type: ignore[return-value]
