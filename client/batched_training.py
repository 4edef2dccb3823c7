"""Many devices of one node trained at once, each exactly as ``train_private`` trains it under Opacus.

Device-by-device Opacus costs about 100 ms per device per round, most of it fixed per-step overhead on a
tiny model. Here a chunk of devices is stacked: each device's trained parameters are one row of a
[devices, P] buffer, the forward runs for every device's sampled examples in one batched pass, and every
device keeps its own Poisson mask, per-example clipping, Gaussian noise stream and optimizer state. Per
device and step the update is Opacus' ghost-clipping one: (sum_i min(1, C / (||g_i|| + 1e-6)) g_i +
N(0, (sigma C)^2)) / B with B = max(1, int(N q)), then the device's own SGD or Adam step; an empty
Poisson batch is a noise-only step, counted like any other.

Per-example gradient norms come from ghost clipping's Gram identities (a linear layer's per-example
gradient sum_j d_j a_j^T has squared norm sum_jk (a_j . a_k)(d_j . d_k) over the example's group), and
the clipped sums from one weighted contraction, so no per-example gradient is ever materialised: with
torch.func's vmap(grad) the per-example gradients of the tower cost more than the rest of the step. An
example's item-table gradient is taken per looked-up row; its norm sums the rows of an item that
repeats within the group, as Opacus' embedding norm sampler does. Opacus stays the accountant (each
device's round records what ``train_private``'s records) and the reference implementation
(``tests/test_batched_training.py`` trains the same devices both ways).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from fedrec.client.local_training import torch_sampler, trained_under_dp
from fedrec.client.round_randomness import stream_seed
from fedrec.client.stacked import ITEM, USER, DeviceTrained, DeviceWork, StackedNeuMF, padded, stacked_optimizer
from fedrec.common.config import LocalTraining
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.model import ModelConfig, NeuMF, is_local

CLIP_EPS = 1e-6  # Opacus' ghost clipping: coefficient = min(1, C / (norm + 1e-6))

ParamFilter = Callable[[str], bool]


class PoissonMasks(Protocol):
    def __call__(self, seed: int, n: int, steps: int, rate: float) -> torch.Tensor:
        """[steps, n] bool: which of a device's n examples each step samples."""


def seeded_masks(seed: int, n: int, steps: int, rate: float) -> torch.Tensor:
    """Each example joins each step with probability ``rate``, from a stream of its own (not the noise's)."""
    return torch.rand(steps, n, generator=torch_sampler(seed)) < rate


class Phases:
    """Seconds spent per phase, summed over chunks and steps (for the benchmark's breakdown)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self.clock()
        yield
        self.seconds[name] += self.clock() - start


@dataclass(frozen=True)
class _Slot:
    name: str
    shape: torch.Size
    offset: int
    size: int


def _layout(model: NeuMF, trains: ParamFilter) -> list[_Slot]:
    """Trained parameters in the model's parameter order: the order Opacus draws their noise in."""
    slots, offset = [], 0
    for name, p in model.named_parameters():
        if trains(name):
            slots.append(_Slot(name, p.shape, offset, p.numel()))
            offset += p.numel()
    if not slots:
        raise FedrecError("batched training: the parameter filter leaves no parameter to train")
    return slots


def _views(flat: torch.Tensor, slots: list[_Slot]) -> dict[str, torch.Tensor]:
    return {s.name: flat[:, s.offset : s.offset + s.size].view(len(flat), *s.shape) for s in slots}


class _LazyTableNoise:
    """SGD only: each item row's noise added when the row is next read (and at the end), not every step.

    Under SGD a row that no example reads at a step moves by its noise alone, so after t steps it holds
    the sum of t draws of N(0, s^2), s = lr sigma C / B: one draw of N(0, t s^2) when the row is next
    looked up, or at the end, is the same distribution. Most rows of a device are never read in a
    round, so this skips most of the noise draws. The draws come from one stream per chunk (seeded by
    its devices' seeds), so they are not Opacus' own draws, only their law.
    """

    def __init__(self, table: torch.Tensor, seeds: Sequence[int], std: torch.Tensor):
        self.table, self.std = table, std  # table [D, n_items, cols], std [D]
        self.generator = torch.Generator().manual_seed(stream_seed("lazy", *seeds))
        self.held = torch.zeros(table.shape[:2], dtype=torch.long)  # steps whose noise each row holds

    def catch_up(self, items: torch.Tensor, step: int) -> None:
        """Before step ``step`` reads the rows in ``items`` [D, b, G]: add the noise of its earlier steps."""
        n = self.table.shape[1]
        keys = torch.unique(items + torch.arange(len(items))[:, None, None] * n)
        d, rows = keys // n, keys % n
        pending = step - self.held[d, rows]
        keep = pending > 0
        d, rows, pending = d[keep], rows[keep], pending[keep]
        z = torch.normal(0.0, 1.0, (len(rows), self.table.shape[2]), generator=self.generator)
        self.table[d, rows] += z * (pending.double().sqrt() * self.std[d]).float()[:, None]
        self.held[d, rows] = step

    def finish(self, steps: int) -> None:
        z = torch.normal(0.0, 1.0, self.table.shape, generator=self.generator)
        self.table += z * ((steps - self.held).double().sqrt() * self.std[:, None]).float()[..., None]
        self.held.fill_(steps)

    def dense(self, out: torch.Tensor, std: torch.Tensor) -> None:
        """Every-step noise of a parameter that is read every step: [D, size] draws times ``std`` [D]."""
        out.copy_(torch.normal(0.0, 1.0, out.shape, generator=self.generator) * std[:, None])


class _Chunk:
    """Devices trained together: parameters, optimizer state and noise streams stacked along dim 0."""

    def __init__(
        self,
        net: StackedNeuMF,
        slots: list[_Slot],
        global_params: Mapping[str, torch.Tensor],
        works: Sequence[DeviceWork],
        training: LocalTraining,
        privacy: DevicePrivacy,
        masks: PoissonMasks,
        phases: Phases,
        lazy_noise: bool = False,
    ):
        self.net, self.slots, self.training, self.privacy, self.phases = net, slots, training, privacy, phases
        self.trained = {s.name for s in slots}
        d = len(works)
        self.flat = torch.nn.Parameter(torch.empty(d, sum(s.size for s in slots)))
        users = torch.cat([w.user_row for w in works]).unsqueeze(1)  # [D, 1, dim]
        with torch.no_grad():
            for name, view in _views(self.flat, slots).items():
                view.copy_(users if name == USER else global_params[name])
        trained = _views(self.flat.detach(), slots)
        # frozen parameters are the same for every device: expanded views, no copies
        self.params = {k: trained.get(k, v.expand(d, *v.shape)) for k, v in global_params.items()}
        self.params[USER] = trained.get(USER, users)
        self.items = padded([w.items for w in works], int(max(len(w.items) for w in works)), 0)
        self.labels = padded([w.labels for w in works], self.items.shape[1], 0.0)
        with phases("Poisson masks"):
            self.masks = torch.zeros(d, training.steps, self.items.shape[1], dtype=torch.bool)
            for i, w in enumerate(works):
                self.masks[i, :, : len(w.items)] = masks(
                    w.randomness.torch_seed(), len(w.items), training.steps, training.sample_rate
                )
        self.expected_batch = torch.tensor(
            [max(1, int(len(w.items) * training.sample_rate)) for w in works], dtype=torch.float32
        )
        self.generators = [torch.Generator().manual_seed(w.randomness.torch_seed()) for w in works]
        self.optimizer = stacked_optimizer([self.flat], training)
        self.grad = torch.empty(self.flat.shape)  # reused every step: a fresh [D, P] costs page faults
        self.lazy = None
        if lazy_noise and ITEM in self.trained and privacy.noise_multiplier > 0:
            std = training.lr * privacy.noise_multiplier * privacy.max_grad_norm / self.expected_batch
            self.lazy = _LazyTableNoise(self.params[ITEM], [w.randomness.torch_seed() for w in works], std)
        self.loss_sum = torch.zeros(d, dtype=torch.float64)
        self.count = torch.zeros(d, dtype=torch.long)

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled example indices [D, b] (sampled ones first, in index order), their validity, counts."""
        mask = self.masks[:, step]
        counts = mask.sum(dim=1)
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]
        valid = torch.arange(order.shape[1]) < counts[:, None]
        return order, valid, counts

    def _per_example(
        self, order: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """The step's examples, their losses and the loss gradients at every looked-up row and layer output."""
        at = torch.arange(len(order))[:, None]
        items, labels = self.items[at, order], self.labels[at, order]  # [D, b, G]
        table = self.params[ITEM]
        rows = table[at[:, :, None], items].requires_grad_()
        users = self.params[USER][:, :, None, :].expand(*items.shape, -1).contiguous().requires_grad_()
        loss, inputs, outputs = self.net(self.params, users, rows, labels)
        grads = torch.autograd.grad(loss.sum(), [users, rows, *outputs])
        self.loss_sum += (loss.detach() * valid).sum(1).double()
        self.count += counts
        return items, valid, inputs, grads

    def _add_clipped_sum(self, total: torch.Tensor, step: int) -> None:
        """Add to ``total`` [D, P] each device's sum of clipped per-example gradients over B (ghost clipping:
        per-example norms from Gram matrices within each example's group, never a per-example gradient)."""
        if not self.masks[:, step].any():
            return
        order, valid, counts = self._batch(step)
        if self.lazy is not None:
            with self.phases("noise"):
                self.lazy.catch_up(self.items[torch.arange(len(order))[:, None], order], step)
        with self.phases("forward + backward"):
            items, valid, inputs, (d_users, d_rows, *d_outputs) = self._per_example(order, valid, counts)
        with self.phases("ghost norms"):
            d, b, g = items.shape
            group = lambda t: t.reshape(d, b, g, -1)  # noqa: E731
            sq = torch.zeros(d, b)
            for name, a, delta in zip(self.net.linears, inputs, d_outputs):
                a, delta = group(a), group(delta)
                if name + ".weight" in self.trained:
                    sq += ((a @ a.transpose(-1, -2)) * (delta @ delta.transpose(-1, -2))).sum((-2, -1))
                if name + ".bias" in self.trained:
                    sq += delta.sum(2).pow(2).sum(-1)
            if USER in self.trained:
                sq += d_users.sum(2).pow(2).sum(-1)
            if ITEM in self.trained:  # rows of an item repeated within a group add up before the norm
                same = (items[..., :, None] == items[..., None, :]).to(d_rows.dtype)
                sq += (same * (d_rows @ d_rows.transpose(-1, -2))).sum((-2, -1))
            # divided by the expected batch here, so that the noise can be drawn at its final scale
            coef = (
                (self.privacy.max_grad_norm / (sq.sqrt() + CLIP_EPS)).clamp(max=1.0)
                * valid
                / self.expected_batch[:, None]
            )
        with self.phases("clipped sums"):
            sums = _views(total, self.slots)
            per_row = coef[:, :, None].expand(d, b, g).reshape(d, b * g, 1)
            for name, a, delta in zip(self.net.linears, inputs, d_outputs):
                delta = delta.reshape(d, b * g, -1) * per_row
                if name + ".weight" in self.trained:
                    sums[name + ".weight"] += delta.transpose(1, 2) @ a
                if name + ".bias" in self.trained:
                    sums[name + ".bias"] += delta.sum(1)
            if USER in self.trained:
                sums[USER] += (d_users * coef[..., None, None]).sum((1, 2))[:, None, :]
            if ITEM in self.trained:
                at = torch.arange(d)[:, None, None].expand_as(items)
                sums[ITEM].index_put_((at, items), d_rows * coef[..., None, None], accumulate=True)

    def _noise(self) -> torch.Tensor:
        """[D, P] N(0, (sigma C / B)^2) per device, drawn parameter by parameter from the device's generator
        in the model's parameter order, as Opacus draws its N(0, (sigma C)^2) before dividing by B (lazy
        noise: the chunk's stream, item table left to ``_LazyTableNoise``)."""
        std = self.privacy.noise_multiplier * self.privacy.max_grad_norm
        if std == 0:
            return self.grad.zero_()
        if self.lazy is not None:  # the item table's noise comes when its rows are read
            for s in self.slots:
                out = self.grad[:, s.offset : s.offset + s.size]
                if s.name == ITEM:
                    out.zero_()
                else:
                    self.lazy.dense(out, std / self.expected_batch)
            return self.grad
        for d, generator in enumerate(self.generators):
            row = self.grad[d]
            for s in self.slots:
                torch.normal(
                    0.0,
                    std / float(self.expected_batch[d]),
                    s.shape,
                    generator=generator,
                    out=row[s.offset : s.offset + s.size].view(s.shape),
                )
        return self.grad

    def train(self) -> None:
        for step in range(self.training.steps):
            with self.phases("noise"):
                grad = self._noise()
            self._add_clipped_sum(grad, step)
            with self.phases("optimizer step"):
                self.flat.grad = grad
                self.optimizer.step()
        if self.lazy is not None:
            with self.phases("noise"):
                self.lazy.finish(self.training.steps)

    def results(self, works: Sequence[DeviceWork], global_params: Mapping[str, torch.Tensor]) -> list[DeviceTrained]:
        out = []
        for d, w in enumerate(works):
            state = {k: (self.params[k][d] if k in self.trained else v) for k, v in global_params.items()}
            user_row = self.params[USER][d] if USER in self.trained else w.user_row
            loss = float(self.loss_sum[d] / max(int(self.count[d]), 1))
            out.append(DeviceTrained(state, user_row, len(w.items), loss, self.training.steps))
        return out


def train_private_batched(
    global_params: Mapping[str, torch.Tensor],
    model_cfg: ModelConfig,
    n_items: int,
    devices: Sequence[DeviceWork],
    training: LocalTraining,
    privacy: DevicePrivacy,
    trains: ParamFilter = trained_under_dp,
    masks: PoissonMasks = seeded_masks,
    chunk_size: int = 64,
    phases: Phases | None = None,
    lazy_noise: bool = False,
) -> list[DeviceTrained]:
    """Train every device's round (what ``train_private`` does for one), in chunks of similar size.

    ``global_params`` are the global parameters every device starts from (no ``user_emb.*``); ``trains``
    names the parameters trained (by default those ``train_private`` trains); results come back in the order of ``devices``.
    ``lazy_noise`` (SGD only) draws each item row's noise when the row is next read: the same
    distribution, far fewer draws, but not Opacus' own draws (see ``_LazyTableNoise``). The
    budget is the device round's to check (``fedrec.client.device_round.device_rounds``), before this runs.
    """
    if model_cfg.dropout > 0:
        raise FedrecError("batched training: dropout > 0 is not supported (its masks would differ from Opacus')")
    if chunk_size < 1:
        raise FedrecError(f"batched training: chunk_size must be >= 1, not {chunk_size}")
    if lazy_noise and training.optimizer != "sgd":
        raise FedrecError(f"batched training: lazy noise needs a linear update (sgd), not {training.optimizer!r}")
    phases = phases or Phases()
    model = NeuMF(1, n_items, model_cfg)
    slots, net = _layout(model, trains), StackedNeuMF(model)
    results: list[DeviceTrained | None] = [None] * len(devices)
    todo = list(range(len(devices)))
    todo.sort(key=lambda i: len(devices[i].items))  # similar sizes per chunk: little padding
    shared = {k: v for k, v in global_params.items() if not is_local(k)}
    for start in range(0, len(todo), chunk_size):
        ids = todo[start : start + chunk_size]
        works = [devices[i] for i in ids]
        chunk = _Chunk(net, slots, shared, works, training, privacy, masks, phases, lazy_noise)
        chunk.train()
        for i, result in zip(ids, chunk.results(works, shared)):
            results[i] = result
    return results  # type: ignore[return-value]
