"""One device's local round: NeuMF on its own interactions, under Opacus DP-SGD when noise > 0.

The unit of privacy is one interaction together with the negatives sampled for it: each training
example is a group [positive, k negatives], so per-example clipping bounds what one interaction can
move the model. Every parameter trained here, the local user embedding included, goes through the one
DP optimizer (a second optimizer for the user row would break the guarantee: docs/design.md, "Privacy model"); the user
embedding simply is not uploaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.client.round_randomness import RoundRandomness, SecureRandomness, StreamIntegers, stream_seed
from fedrec.client.secure_opacus import make_private_ghost_streams, poisson_loader
from fedrec.common.config import LocalTraining
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.randomness import NOISE, SAMPLING
from fedrec.common.recommender import Recommender
from fedrec.common.training import GroupBCE, embedding_l2

# Opacus' notices that fire on every device round: secure RNG off (documented in docs/simulate.md) and
# ghost clipping's backward hooks on modules whose inputs need no gradient (the embeddings).
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
# The RDP accountant's note that a larger order might give a tighter bound: the bound it returns holds.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean per-example loss over the steps
    steps: int


@dataclass(frozen=True)
class LocalOutcome:
    """A device's round as it reports it: under DP its epsilon after the round, or that it refused."""

    loss: float
    steps: int
    epsilon: float
    refused: bool = False


# A shift of every logit by the same amount cannot change a ranking, yet its per-example gradient takes
# most of the clipping norm at initialisation (about 1.5 of 2): under DP it stays where it is.
FROZEN_UNDER_DP = ("output.bias",)


def trained_under_dp(name: str) -> bool:
    return name not in FROZEN_UNDER_DP


def make_optimizer(model: nn.Module, training: LocalTraining) -> torch.optim.Optimizer:
    if training.optimizer == "adam":  # fused: one kernel per step instead of a loop over the parameters
        return torch.optim.Adam(model.parameters(), lr=training.lr, fused=True)
    return torch.optim.SGD(model.parameters(), lr=training.lr)


def make_examples(
    positives: np.ndarray,
    avoid: np.ndarray | None,
    n_items: int,
    negatives: int,
    rng: np.random.Generator | StreamIntegers,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 1+k] item groups (positive first) and their 0/1 labels.

    ``avoid`` None draws negatives uniformly over the whole catalogue: each example then depends on its
    own record alone (a drawn positive simply stays a noisy 0 label), which record-level DP needs, since
    removing one record must not change the other examples. Otherwise negatives avoid those items."""
    if avoid is None:
        neg = rng.integers(0, n_items, size=(len(positives), negatives))
    else:
        mask = np.ones(n_items, dtype=bool)
        mask[avoid] = False
        candidates = np.flatnonzero(mask)
        neg = candidates[rng.integers(0, len(candidates), size=(len(positives), negatives))]
    items = np.concatenate([positives[:, None], neg], axis=1)
    labels = np.zeros(items.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    return torch.from_numpy(items.astype(np.int64)), torch.from_numpy(labels)


def _loader(items: torch.Tensor, labels: torch.Tensor, steps_per_epoch: int) -> DataLoader:
    """A loader of exactly ``steps_per_epoch`` batches, so Opacus derives sample rate 1/steps_per_epoch
    and Poisson-samples from the whole dataset at that rate."""
    batch = max(1, -(-len(items) // steps_per_epoch))
    sampler = [list(range(i, min(i + batch, len(items)))) for i in range(0, batch * steps_per_epoch, batch)]
    return DataLoader(TensorDataset(items, labels), batch_sampler=sampler)


def uniform_sampler(loader: DataLoader, generator: torch.Generator) -> UniformWithReplacementSampler:
    """Opacus' Poisson sampler for ``loader``'s batches (rate 1/len(loader)) on ``generator`` alone."""
    steps = len(loader)
    return UniformWithReplacementSampler(
        num_samples=len(loader.dataset),  # type: ignore[arg-type]
        sample_rate=1 / steps,
        steps=steps,
        generator=generator,
    )


def torch_sampler(seed: int) -> torch.Generator:
    """The simulated Poisson sampler's generator: a stream of its own (the stacked trainer's masks)."""
    return torch.Generator().manual_seed(stream_seed("poisson", seed))


def _noise_only_step(optimizer: DPOptimizer, privacy: DevicePrivacy, generator: torch.Generator) -> None:
    """An empty Poisson batch still releases a noisy step (ghost clipping cannot run on it): the wrapped
    optimizer steps on pure noise, scaled as Opacus scales it for a batch of the expected size."""
    std = privacy.noise_multiplier * privacy.max_grad_norm / optimizer.expected_batch_size
    saved = [p.grad for p in optimizer.params]  # Opacus' own bookkeeping expects them back untouched
    for p in optimizer.params:
        p.grad = torch.normal(0.0, std, p.shape, generator=generator)
    optimizer.original_optimizer.step()
    for p, grad in zip(optimizer.params, saved):
        p.grad = grad


def make_private_ghost(
    engine: PrivacyEngine,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator,
    sampler: torch.Generator,
) -> tuple:
    """Opacus' DP-SGD as every simulated fedrec arm runs it: Poisson sampling (Opacus' sampler on
    ``sampler``), ghost clipping (one loss per example, the group BCE of a positive and its negatives), the
    noise drawn from ``generator``: two streams, so the noise does not depend on the sample."""
    return engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=poisson_loader(loader, uniform_sampler(loader, sampler)),
        criterion=GroupBCE(),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,  # the loader already samples
        grad_sample_mode="ghost",
        noise_generator=generator,
    )


def train_private(
    model: Recommender,
    items: torch.Tensor,
    labels: torch.Tensor,
    training: LocalTraining,
    privacy: DevicePrivacy,
    randomness: RoundRandomness,
) -> TrainStats:
    """DP-SGD with Opacus (Poisson sampling, ghost clipping): ``training.steps`` noisy steps, the round the
    mechanism's ledger entry accounts for (the device round checks the budget before). A simulated round
    samples and noises from two seeded torch generators (the stacked trainer's draws); a deployed one from
    two OS-keyed streams (``client/secure_opacus.py``)."""
    for name, param in model.named_parameters():
        if name in FROZEN_UNDER_DP:
            param.requires_grad_(False)
    engine = PrivacyEngine(accountant="rdp")
    optimizer = make_optimizer(model, training)
    loader = _loader(items, labels, training.steps_per_epoch)
    sigma, clip = privacy.noise_multiplier, privacy.max_grad_norm
    noise_only: Callable[[], None]
    if isinstance(randomness, SecureRandomness):
        module, optimizer, criterion, loader = make_private_ghost_streams(
            engine,
            model,
            optimizer,
            loader,
            sampling=randomness.source.stream(SAMPLING),
            noise=randomness.source.stream(NOISE),
            noise_multiplier=sigma,
            max_grad_norm=clip,
        )
        noise_only = optimizer.noise_only_step
    else:
        seed = randomness.torch_seed()
        generator, sampler = torch.Generator().manual_seed(seed), torch_sampler(seed)
        module, optimizer, criterion, loader = make_private_ghost(
            engine, model, optimizer, loader, sigma, clip, generator, sampler
        )
        noise_only = partial(_noise_only_step, optimizer, privacy, generator)
    # Opacus scales by int(N * q), which is 0 on a device with fewer examples than steps per epoch; the
    # scale is post-processing (it multiplies clipped sum and noise alike), so any constant >= 1 is safe.
    optimizer.expected_batch_size = max(1, optimizer.expected_batch_size)
    users = torch.zeros(1, dtype=torch.long)
    total, count, empty = 0.0, 0, 0
    for _ in range(training.epochs):
        for batch_items, batch_labels in loader:
            if len(batch_items) == 0:
                noise_only()
                empty += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(module(users.expand_as(batch_items), batch_items), batch_labels)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch_items)
            count += len(batch_items)
    steps = sum(n for _, _, n in engine.accountant.history) + empty
    module._close()
    return TrainStats(total / max(count, 1), steps)


def train_plain(
    model: Recommender, items: torch.Tensor, labels: torch.Tensor, training: LocalTraining, seed: int
) -> TrainStats:
    """The non-private arm: same examples, same number of steps, plain minibatch training, with the
    centralized recipe's L2 on the rows each example uses."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, training)
    criterion = GroupBCE()
    batch = max(1, -(-len(items) // training.steps_per_epoch))
    users = torch.zeros(1, dtype=torch.long)
    total, count, steps = 0.0, 0, 0
    for _ in range(training.epochs):
        order = torch.randperm(len(items), generator=generator)
        for start in range(0, len(items), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            batch_users = users.expand(len(idx), items.shape[1])
            loss = criterion(model(batch_users, items[idx]), labels[idx])
            if training.emb_l2 > 0:
                loss = loss + training.emb_l2 * embedding_l2(model, batch_users, items[idx]).sum(-1).mean()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            steps += 1
    return TrainStats(total / max(count, 1), steps)


def train_local(
    model: Recommender,
    items: torch.Tensor,
    labels: torch.Tensor,
    training: LocalTraining,
    privacy: DevicePrivacy,
    randomness: RoundRandomness,
) -> TrainStats:
    if privacy.private:
        return train_private(model, items, labels, training, privacy, randomness)
    return train_plain(model, items, labels, training, randomness.order_seed())


def personalize(model: Recommender, items: torch.Tensor, labels: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Fit only the user row to the (frozen) global model, on the device, for serving.

    The result is never uploaded and never feeds a later training round (it lives under its own state
    name), so it needs no DP: what leaves the device is still only the DP-trained shared update.
    Without it a device serves with a user row fitted to an older global model (stale after averaging).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    user = model.user_emb.weight
    user.requires_grad_(True)
    optimizer = torch.optim.Adam([user], lr=lr)
    criterion = GroupBCE()
    users = torch.zeros(items.shape, dtype=torch.long)
    model.eval()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        criterion(model(users, items), labels).backward()
        optimizer.step()
    user.requires_grad_(False)
    return user.detach().clone()
