"""Item rows averaged over the examples that used them (federated training without DP).

FedAvg moves an item row by the mean of every device's change, most of which are zero: a row's step
shrinks to the share of examples held by the devices whose training touched it (a few percent for a
median item). Here each reply also carries, per item row, how many of its examples used that row;
the row becomes the mean over those examples only, and a row nobody used keeps its value: for a row,
what the centralized arm's gradient would average over. A private reply never carries the counts
(they would say which items a history holds), so this applies to the arm without DP alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

ITEM_TABLE = "item_emb.weight"
COUNTS = ITEM_TABLE + ":counts"  # the reply array with the per-row example counts


def example_counts(items: torch.Tensor, n_items: int) -> torch.Tensor:
    """[n_items] how many training examples (a positive or a negative) used each item row."""
    return torch.bincount(items.reshape(-1), minlength=n_items).double()


class RowMean:
    """The mean of devices' item tables, row by row, weighted by their per-row example counts."""

    def __init__(self, global_rows: torch.Tensor):
        self.global_rows = global_rows
        self.sums = torch.zeros_like(global_rows, dtype=torch.float64)
        self.counts = torch.zeros(global_rows.shape[0], dtype=torch.float64)

    def add(self, rows: torch.Tensor, counts: torch.Tensor) -> None:
        self.sums += rows.double() * counts[:, None]
        self.counts += counts

    def mean(self) -> torch.Tensor:
        used = self.counts > 0
        rows = self.global_rows.double().clone()
        rows[used] = self.sums[used] / self.counts[used, None]
        return rows.to(self.global_rows.dtype)


def for_weighted_mean(
    replies: list[Mapping[str, np.ndarray]], weights: list[float], global_rows: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """Replies rewritten so that their ``weights``-weighted mean (what a FedAvg-family strategy computes)
    gives each item row the count-weighted mean, and untouched rows their global value.

    Reply n's rows r_n become g + (W / w_n) (c_n / C) (r_n - g), with W the sum of weights and C the
    summed counts: the weighted mean is then g + sum_n (c_n / C)(r_n - g). The counts are dropped."""
    total_weight = float(sum(weights))
    total_counts = np.sum([r[COUNTS] for r in replies], axis=0)
    share = np.divide(1.0, total_counts, out=np.zeros_like(total_counts), where=total_counts > 0)
    out = []
    for reply, weight in zip(replies, weights):
        scale = (total_weight / weight) * reply[COUNTS] * share
        rows = global_rows + scale[:, None] * (reply[ITEM_TABLE] - global_rows)
        out.append(
            {**{k: v for k, v in reply.items() if k != COUNTS}, ITEM_TABLE: rows.astype(reply[ITEM_TABLE].dtype)}
        )
    return out
