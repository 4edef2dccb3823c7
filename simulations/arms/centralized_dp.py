"""Centralized DP NeuMF: the pooled split trained with Opacus DP-SGD, so a report separates what DP costs
from what federation costs.

The unit is the federated arms' unit: one interaction together with the negatives drawn for it. The
negatives are drawn uniformly over the whole catalogue for each sampled record, with fresh randomness, and
a drawn positive is simply kept as a (noisy) negative label. A record's loss therefore depends on that
record alone; drawing "non-positives of the user" would make one record change the negatives of the
user's other records and break the per-example sensitivity bound.

The recipe (docs/dp-search.md) keeps the clipping norm for what personalises: popularity is a fixed logit
offset from a Gaussian-noised item histogram (its release composed with the DP-SGD steps in one RDP
accountant) instead of a learned bias column, the output layer is frozen (it shifts or scales every score
alike), item rows start from public item features, and plain SGD with momentum and a large table learning
rate replaces Adam, whose per-coordinate normalisation turns noise on untouched rows into full-size steps.

Noise is calibrated once for the planned schedule (epochs x batches at sample rate 1/batches), and the
accountant's own epsilon after training is reported. The optional serving refit fits each user's row to
the frozen DP item side on that user's own interactions only; it never feeds training, so other users'
records stay protected by the DP model (the joint-DP view, as on a device).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.client.local_training import make_private_ghost, torch_sampler
from fedrec.common.config import CentralDPConfig, PrivacyConfig
from fedrec.common.dp_recipe import composed_noise as shared_composed_noise
from fedrec.common.dp_recipe import feature_rows, histogram_entry, log_odds_prior, public_item_features
from fedrec.common.errors import FedrecError
from fedrec.common.model import NeuMF
from fedrec.common.privacy import history_epsilon as ledger_epsilon
from fedrec.common.sampling import positive_keys
from fedrec.common.settings import require, to_nested
from fedrec.common.split import Split
from fedrec.common.training import GroupBCE, with_negatives
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter
from fedrec.simulations.arms.centralized import model_scores, torch_threads, train_with_validation

UNIT = "record-level (one interaction with its sampled negatives), pooled"


@dataclass(frozen=True)
class DPRecipe(CentralDPConfig):
    """The arm's settings and the guarantee it is trained to: the federation's epsilon and delta, so both
    arms run at the same budget (``epsilon`` inf = Opacus clipping without noise, 0 = no Opacus at all)."""

    epsilon: float = 8.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.epsilon >= 0, "epsilon", f"must be >= 0, got {self.epsilon}")

    @classmethod
    def at(cls, settings: CentralDPConfig, privacy: PrivacyConfig) -> DPRecipe:
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        return cls(**fields, epsilon=privacy.epsilon, delta=privacy.delta)

    @property
    def private(self) -> bool:
        return self.epsilon > 0


@dataclass(frozen=True)
class DPPrivacy:
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    unit: str = UNIT

    def to_dict(self) -> dict:
        return asdict(self)


def _optimizer(model: nn.Module, recipe: DPRecipe) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    table_lr = recipe.embedding_lr or recipe.lr
    groups = [
        {"params": [p for n, p in named if n.endswith("user_emb.weight")], "lr": table_lr},
        {"params": [p for n, p in named if n.endswith("item_emb.weight")], "lr": table_lr * recipe.item_lr_scale},
        {"params": [p for n, p in named if not n.endswith("_emb.weight")], "lr": recipe.lr},
    ]
    groups = [g for g in groups if g["params"]]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, eps=recipe.adam_eps)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)


def _groups(
    users: torch.Tensor, items: torch.Tensor, n_items: int, negatives: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 1+k] user/item groups, positive first, negatives uniform over the catalogue (record-only)."""
    neg = torch.randint(0, n_items, (len(items), negatives), generator=generator)
    group = torch.cat([items[:, None], neg], dim=1)
    labels = torch.zeros(group.shape)
    labels[:, 0] = 1.0
    return users[:, None].expand_as(group).contiguous(), group, labels


def _histogram(recipe: DPRecipe) -> list[tuple[float, float, int]]:
    return histogram_entry(recipe.count_sigma) if recipe.popularity_prior else []


def history_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    return ledger_epsilon(tuple(history), delta)


def composed_noise(recipe: DPRecipe, q: float, steps: int) -> float:
    """Smallest DP-SGD noise multiplier whose steps, composed with the count histogram, stay within epsilon."""
    sigma = recipe.count_sigma if recipe.popularity_prior else 0.0
    return shared_composed_noise(recipe.epsilon, recipe.delta, sigma, q, steps, "centralized_dp")


def _rare_rows(model: NeuMF, recipe: DPRecipe, released: torch.Tensor | None) -> Callable[[], None]:
    """A hook that puts the rows of items with a released count below ``min_count`` back to their initial
    value after each step: the choice uses only the DP histogram and discarding part of a noisy update is
    post-processing, so shared embeddings are trained only where the data can pay for them."""
    if recipe.min_count <= 0:
        return lambda: None
    if released is None:
        raise FedrecError("centralized_dp: min_count needs popularity_prior (the DP counts it selects by)")
    rare = torch.nonzero(released < recipe.min_count).flatten()
    table = model.item_emb.weight
    initial = table.detach()[rare].clone()

    def keep() -> None:
        with torch.no_grad():
            table[rare] = initial

    return keep


def planned_privacy(n_records: int, recipe: DPRecipe) -> DPPrivacy:
    """Sample rate, steps and noise multiplier for the planned schedule (RDP, Poisson sampling)."""
    batches = max(1, math.ceil(n_records / recipe.batch_size))
    q, steps = 1.0 / batches, recipe.epochs * batches
    if not recipe.private:
        return DPPrivacy(math.inf, recipe.delta, 0.0, q, steps)
    sigma = 0.0 if math.isinf(recipe.epsilon) else composed_noise(recipe, q, steps)
    return DPPrivacy(recipe.epsilon, recipe.delta, sigma, q, steps)


def noisy_counts(items: np.ndarray, n_items: int, recipe: DPRecipe, generator: torch.Generator) -> torch.Tensor:
    """The released histogram: item counts plus N(0, count_sigma^2) each (one record moves one count by 1)."""
    counts = torch.from_numpy(np.bincount(items, minlength=n_items)).double()
    return counts + torch.normal(0.0, recipe.count_sigma, counts.shape, generator=generator, dtype=torch.float64)


def _plain_epoch(
    model: NeuMF,
    optimizer: torch.optim.Optimizer,
    users: torch.Tensor,
    items: torch.Tensor,
    recipe: DPRecipe,
    generator: torch.Generator,
    keep: Callable[[], None],
) -> float:
    loss_fn, total = GroupBCE(), 0.0
    order = torch.randperm(len(users), generator=generator)
    for start in range(0, len(order), recipe.batch_size):
        idx = order[start : start + recipe.batch_size]
        u, i, y = _groups(users[idx], items[idx], model.n_items, recipe.negatives, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(u, i), y)
        loss.backward()
        optimizer.step()
        keep()
        total += float(loss) * len(idx)
    return total / len(order)


def train_dp(
    n_users: int,
    n_items: int,
    users: np.ndarray,
    items: np.ndarray,
    recipe: DPRecipe,
    seed: int,
    noise_seed: int | None = None,
    features: np.ndarray | None = None,
    on_epoch: Callable[[int, NeuMF, float], None] | None = None,
) -> tuple[NeuMF, DPPrivacy]:
    """NeuMF trained on the given positives with Opacus DP-SGD (ghost clipping, Poisson sampling); with
    ``popularity_prior`` its fixed prior holds the log-odds of the released item histogram."""
    torch.manual_seed(seed)
    model = NeuMF(n_users, n_items, dataclasses.replace(recipe.model, prior=recipe.popularity_prior))
    if recipe.feature_init:
        if features is None:
            raise FedrecError("centralized_dp: feature_init needs the public item features")
        dim = recipe.model.embedding_dim
        with torch.no_grad():
            model.item_emb.weight[:, :dim] = feature_rows(features, dim, recipe.model.init_std, seed)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(recipe.frozen))
    noise = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
    released = None
    if recipe.popularity_prior:
        exact = not recipe.private or math.isinf(recipe.epsilon)  # no budget to protect: counts as they are
        counted = dataclasses.replace(recipe, count_sigma=0.0) if exact else recipe
        released = noisy_counts(items, n_items, counted, noise)
        model.set_prior(log_odds_prior(released, recipe.negatives))
    keep = _rare_rows(model, recipe, released)
    optimizer = _optimizer(model, recipe)
    generator = torch.Generator().manual_seed(seed + 1)  # negatives and the plain arm's shuffling
    u_t, i_t = torch.from_numpy(users.astype(np.int64)), torch.from_numpy(items.astype(np.int64))
    plan = planned_privacy(len(u_t), recipe)
    if not recipe.private:
        for epoch in range(1, recipe.epochs + 1):
            loss = _plain_epoch(model, optimizer, u_t, i_t, recipe, generator, keep)
            if on_epoch:
                on_epoch(epoch, model, loss)
        return model, plan
    engine = PrivacyEngine(accountant="rdp")
    batches = round(1.0 / plan.sample_rate)
    loader = DataLoader(TensorDataset(u_t, i_t), batch_size=math.ceil(len(u_t) / batches))
    module, optimizer, criterion, loader = make_private_ghost(
        engine, model, optimizer, loader, plan.noise_multiplier, recipe.max_grad_norm, noise, torch_sampler(seed)
    )
    empty = 0
    for epoch in range(1, recipe.epochs + 1):
        total, count = 0.0, 0
        for bu, bi in loader:
            if len(bu) == 0:  # ghost clipping cannot run on an empty Poisson batch: release pure noise
                _noise_step(optimizer, plan, recipe, noise)
                empty += 1
                continue
            u, i, y = _groups(bu, bi, n_items, recipe.negatives, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(module(u, i), y)
            loss.backward()
            optimizer.step()
            keep()
            total, count = total + float(loss.detach()) * len(bu), count + len(bu)
        if on_epoch:
            on_epoch(epoch, model, total / max(count, 1))
    steps = sum(n for _, _, n in engine.accountant.history) + empty
    history = _histogram(recipe) + [(plan.noise_multiplier, plan.sample_rate, steps)]
    spent = DPPrivacy(
        history_epsilon(history, recipe.delta) if plan.noise_multiplier > 0 else math.inf,
        recipe.delta,
        plan.noise_multiplier,
        plan.sample_rate,
        steps,
    )
    module._close()
    return model, spent


def _noise_step(optimizer: DPOptimizer, plan: DPPrivacy, recipe: DPRecipe, generator: torch.Generator) -> None:
    std = plan.noise_multiplier * recipe.max_grad_norm / max(1, optimizer.expected_batch_size)
    for p in optimizer.params:
        p.grad = torch.normal(0.0, std, p.shape, generator=generator)
    optimizer.original_optimizer.step()
    for p in optimizer.params:
        p.grad = None


def serving_refit(model: NeuMF, users: np.ndarray, items: np.ndarray, epochs: int, lr: float, seed: int) -> None:
    """Each user row fitted to the frozen item side on that user's own positives (never fed to training)."""
    if epochs <= 0:
        return
    for p in model.parameters():
        p.requires_grad_(False)
    model.user_emb.weight.requires_grad_(True)
    optimizer = torch.optim.Adam([model.user_emb.weight], lr=lr)
    keys = positive_keys(users, items, model.n_items)
    rng = np.random.default_rng(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        u, i, y = with_negatives(users, items, keys, model.n_items, 4, rng)
        order = rng.permutation(len(u))
        ut, it, yt = (torch.from_numpy(a[order]) for a in (u, i, y))
        for start in range(0, len(ut), 1024):
            sl = slice(start, start + 1024)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(ut[sl], it[sl]), yt[sl]).backward()
            optimizer.step()
    model.user_emb.weight.requires_grad_(False)


def public_features(recipe: DPRecipe, split: Split) -> np.ndarray:
    """The public item features, in the split's item order (dense index = sorted original id)."""
    return public_item_features(recipe.item_features, split.n_items, "centralized_dp")


def fit_centralized_dp(split: Split, seed: int, recipe: DPRecipe = DPRecipe(), show: bool = True) -> ArmResult:
    """DP-SGD NeuMF on the pooled data (train, plus validation when ``include_validation``), fixed schedule."""
    t0 = time.perf_counter()
    if recipe.include_validation:
        users, items, _ = train_with_validation(split)
    else:
        users, items = split.train_users, split.train_items
    features = public_features(recipe, split) if recipe.feature_init else None
    with torch_threads(recipe.threads):
        model, spent = train_dp(split.n_users, split.n_items, users, items, recipe, seed, features=features)
        serving_refit(model, users, items, recipe.serving_refit_epochs, recipe.serving_refit_lr, seed)
        scores = model_scores(model)
    info = {"recipe": to_nested(recipe), "privacy": spent.to_dict(), "train_s": time.perf_counter() - t0}
    result = ArmResult("centralized_dp", scores, info)
    result.model = model  # type: ignore[attr-defined]
    return result


def bind(binding: ArmBinding) -> Fitter:
    """The recipe at the arm's budget; a partial of a module-level function, so that it pickles."""
    return partial(fit_centralized_dp, recipe=DPRecipe.at(binding.settings, binding.budget), show=binding.show)
