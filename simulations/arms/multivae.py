"""Mult-VAE (Liang et al., WWW 2018): each user's train row, L2-normalised and with input dropout, is
encoded to a Gaussian, decoded to a softmax over the catalogue, and fitted by the multinomial likelihood
with a KL term annealed up to a cap. The cap and the number of epochs are chosen on validation NDCG@10
(the test item is never looked at); the model's shape is the paper's (600-d hidden layer, 200-d latent)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedrec.common.errors import FedrecError
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter
from fedrec.simulations.arms.centralized import torch_threads


@dataclass(frozen=True)
class VaeSetting:
    hidden: int = 600
    latent: int = 200
    dropout: float = 0.5
    anneal_cap: float = 0.2
    anneal_steps: int = 20_000  # updates until the KL weight reaches the cap (the paper's total_anneal_steps)
    lr: float = 1e-3
    epochs: int = 200
    patience: int = 20
    batch_size: int = 100


GRID = tuple(VaeSetting(anneal_cap=cap) for cap in (0.1, 0.2, 0.4))


class MultVae(nn.Module):
    def __init__(self, n_items: int, s: VaeSetting):
        super().__init__()
        self.latent = s.latent
        self.drop = nn.Dropout(s.dropout)
        self.encoder = nn.Sequential(nn.Linear(n_items, s.hidden), nn.Tanh(), nn.Linear(s.hidden, 2 * s.latent))
        self.decoder = nn.Sequential(nn.Linear(s.latent, s.hidden), nn.Tanh(), nn.Linear(s.hidden, n_items))

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(self.drop(nn.functional.normalize(rows, dim=1)))
        mu, logvar = h[:, : self.latent], h[:, self.latent :]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar


def train_vae(split: Split, seed: int, s: VaeSetting) -> tuple[np.ndarray, float, list[float]]:
    """The best validation epoch's scores, its NDCG@10 and the curve."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(split.train_matrix().toarray().astype(np.float32))
    model = MultVae(split.n_items, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    step, curve = 0, []
    best: tuple[float, np.ndarray | None] = (-1.0, None)
    for _ in range(s.epochs):
        model.train()
        order = rng.permutation(split.n_users)
        for start in range(0, split.n_users, s.batch_size):
            rows = x[order[start : start + s.batch_size]]
            logits, mu, logvar = model(rows)
            nll = -(nn.functional.log_softmax(logits, dim=1) * rows).sum(1).mean()
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
            beta = min(s.anneal_cap, step / s.anneal_steps)
            loss = nll + beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            scores = model(x)[0].numpy()
        _, ndcg = hit_ndcg(full_ranks(scores, split, "validation", seed))
        curve.append(ndcg)
        if ndcg > best[0]:
            best = (ndcg, scores.copy())
        elif len(curve) - 1 - int(np.argmax(curve)) >= s.patience:
            break
    if best[1] is None:
        raise FedrecError("multivae: no epoch was trained")
    return best[1], best[0], curve


def fit_multivae(split: Split, seed: int, grid: tuple[VaeSetting, ...] = GRID) -> ArmResult:
    by_setting: dict[str, float] = {}
    best = None  # (validation NDCG@10, setting, scores, curve) of the best so far; the first of equals
    with torch_threads(1):
        for setting in grid:
            scores, ndcg, curve = train_vae(split, seed, setting)
            by_setting[f"anneal_cap={setting.anneal_cap:g}"] = ndcg
            if best is None or ndcg > best[0]:
                best = (ndcg, setting, scores, curve)
    if best is None:
        raise FedrecError("multivae: no setting to choose from")
    _, setting, scores, curve = best
    info = {
        "anneal_cap": setting.anneal_cap,
        "epochs": int(np.argmax(curve)) + 1,
        "validation_ndcg@10_by_setting": by_setting,
        "validation_curve": curve,
    }
    return ArmResult("multivae", scores.astype(np.float32), info)


def bind_multivae(binding: ArmBinding) -> Fitter:
    return fit_multivae
