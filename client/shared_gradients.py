"""One device's clipped per-example gradient sums for the ``distributed`` mechanism (one DP-SGD step).

Only the two tables train (the GMF recipe: output layer frozen, the popularity prior a buffer that never
trains). The unit is one record: an interaction with its negatives, so an example's gradient is
that of its group's summed BCE with respect to the user row and the rows its group looks up. torch.func
takes each example's gradient with respect to the looked-up rows; the norm of its item-table gradient sums
the rows of an item that repeats within the group (the table gradient of a repeated item is the sum of
its row gradients), so the clipping bound holds for the gradient of the whole parameter vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedrec.common.model import PRIOR, NeuMF

USER, ITEM = "user_emb.weight", "item_emb.weight"
CLIP_EPS = 1e-6  # Opacus' coefficient min(1, C / (norm + 1e-6))


@dataclass(frozen=True)
class ClippedSums:
    user: torch.Tensor  # [1, dim] sum over the sampled examples of the clipped user-row gradients
    items: torch.Tensor  # [n_items, width] the same for the item table
    examples: int
    norms: torch.Tensor  # [examples] per-example gradient norms before clipping


def per_example_grads(model: NeuMF, items: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, dim] user-row and [B, 1+k, width] looked-up-row gradients of each example's group loss.

    Each example's group runs as a model of 1+k items (slot j = the group's j-th item): its looked-up rows
    stand in for the item table and, when the model has one, their prior for the prior."""
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in (USER, ITEM)}
    fixed.update({k: v.detach() for k, v in model.named_buffers()})
    group = items.shape[1]
    users, slots = torch.zeros(group, dtype=torch.long), torch.arange(group)

    def loss(
        user_row: torch.Tensor, rows: torch.Tensor, looked: dict[str, torch.Tensor], y: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(model, {**fixed, USER: user_row, ITEM: rows, **looked}, (users, slots))
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum")

    user_row = model.user_emb.weight.detach()
    rows = model.item_emb.weight.detach()[items]
    looked = {} if model.item_prior is None else {PRIOR: model.item_prior[items]}
    g_user, g_rows = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, 0, 0, 0))(user_row, rows, looked, labels)
    return g_user.reshape(len(items), -1), g_rows


def clipped_sums(model: NeuMF, items: torch.Tensor, labels: torch.Tensor, clip: float) -> ClippedSums:
    """Sum of the examples' gradients, each scaled to norm at most ``clip`` over both tables together."""
    width = model.item_emb.weight.shape[1]
    if len(items) == 0:
        return ClippedSums(
            torch.zeros_like(model.user_emb.weight), torch.zeros(model.n_items, width), 0, torch.zeros(0)
        )
    g_user, g_rows = per_example_grads(model, items, labels)
    same = (items[:, :, None] == items[:, None, :]).to(g_rows.dtype)
    item_sq = (same * (g_rows @ g_rows.transpose(1, 2))).sum(dim=(1, 2))
    norms = (g_user.square().sum(dim=1) + item_sq).sqrt()
    scale = (clip / (norms + CLIP_EPS)).clamp(max=1.0)
    user = (scale[:, None] * g_user).sum(dim=0, keepdim=True)
    table = torch.zeros(model.n_items, width).index_add_(
        0, items.reshape(-1), (scale[:, None, None] * g_rows).reshape(-1, width)
    )
    return ClippedSums(user, table, len(items), norms)
