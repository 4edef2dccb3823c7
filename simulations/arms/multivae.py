"""Mult-VAE (Liang et al., WWW 2018): each user's train row, L2-normalised and with input dropout, is
encoded to a Gaussian, decoded to a softmax over the catalogue, and fitted by the multinomial likelihood
with a KL term annealed up to a cap. The cap and the number of epochs are chosen on validation NDCG@10
(the test item is never looked at); the model's shape is the paper's (600-d hidden layer, 200-d latent)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter
from fedrec.simulations.arms.validation import EarlyStopping, choose_on_validation


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


def train_vae(split: Split, seed: int, s: VaeSetting) -> EarlyStopping:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(split.train_matrix().toarray().astype(np.float32))
    model = MultVae(split.n_items, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    stopping = EarlyStopping(split, seed, s.patience)
    step = 0
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
        if stopping.stop_after(scores):
            break
    return stopping


def fit_multivae(split: Split, seed: int, grid: tuple[VaeSetting, ...] = GRID) -> ArmResult:
    return choose_on_validation(
        "multivae",
        grid,
        lambda setting: train_vae(split, seed, setting),
        lambda setting: f"anneal_cap={setting.anneal_cap:g}",
        lambda setting: {"anneal_cap": setting.anneal_cap},
    )


def bind_multivae(binding: ArmBinding) -> Fitter:
    return fit_multivae
