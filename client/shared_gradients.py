"""The clipped per-record gradient sums of the ``distributed`` mechanism for a stack of devices at once: the
simulation's fast path, tested equal to the Opacus path each device runs (``fedrec.client.shared_opacus``).

The unit is one record: an interaction with its negatives, so a record's gradient is that of its group's
summed BCE. It is clipped per group (``GroupClips``): the rows (the device's user row and the item rows its
group looks up) to ``rows``, the dense layers (tower and output) to ``dense`` apart, so the tower cannot take
the rows' clipping budget. torch.func takes each record's gradient with respect to the looked-up rows; the
norm of its item-table gradient sums the rows of an item that repeats within the group (the table gradient
of a repeated item is the sum of its row gradients), as Opacus' embedding gradient does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedrec.client.round_randomness import Draws
from fedrec.common.model import PRIOR, NeuMF, is_dense

USER, ITEM = "user_emb.weight", "item_emb.weight"
CLIP_EPS = 1e-6  # Opacus' coefficient min(1, C / (norm + 1e-6))
CHUNK = 4096  # records whose per-record gradients are held at once


@dataclass(frozen=True)
class GroupClips:
    """Per-record clipping norms: the rows', and the dense layers' (0 = the dense layers do not train)."""

    rows: float
    dense: float = 0.0

    @property
    def total(self) -> float:
        """The L2 sensitivity of one record's clipped gradient over every trained parameter."""
        return math.hypot(self.rows, self.dense)


def trained_names(model: NeuMF, clips: GroupClips) -> list[str]:
    """The parameters a shared-noise step trains, in the order their noise is drawn: what leaves the device
    (the item table, then the dense layers in the model's order) first, the device's own user row last."""
    shared = [n for n, _ in model.named_parameters() if n == ITEM or (clips.dense > 0 and is_dense(n))]
    return [*shared, USER]


def noise_stds(names: Sequence[str], user_std: float, share_std: float) -> dict[str, float]:
    """Each trained parameter's noise std: the whole on the device's own row (never aggregated), the
    device's share on what it sends."""
    return {n: user_std if n == USER else share_std for n in names}


def noisy(sums: ClippedSums, stds: Mapping[str, float], draws: Draws) -> dict[str, torch.Tensor]:
    """The stacked path's noise: each parameter's sum plus its noise, drawn in the order Opacus' path draws
    it (``shared_opacus.SplitNoiseDPOptimizer.add_noise``)."""
    return {n: s + (draws.normal(tuple(s.shape), stds[n]) if stds[n] > 0 else 0) for n, s in sums.sums.items()}


@dataclass(frozen=True)
class ClippedSums:
    """One device's sums over its sampled records of the clipped gradients, per trained parameter."""

    sums: dict[str, torch.Tensor]
    examples: int


def stacked_clipped_sums(
    model: NeuMF,
    user_rows: torch.Tensor,
    items: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    clips: GroupClips,
) -> list[ClippedSums]:
    """Device d's clipped sums, for devices whose user rows are ``user_rows`` [D, dim] and whose sampled
    records are ``items[d]`` / ``labels[d]`` ([n_d, 1+k]); ``model`` holds the shared parameters (its own
    user table is ignored)."""
    if not items:
        return []
    names = trained_names(model, clips)
    dense = [n for n in names if is_dense(n)]
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in (USER, ITEM, *dense)}
    fixed.update({k: v.detach() for k, v in model.named_buffers() if k != PRIOR})
    params = {k: v.detach() for k, v in model.named_parameters() if k in dense}
    has_prior = model.item_prior is not None
    width = model.item_emb.weight.shape[1]
    d = len(items)
    counts = [len(i) for i in items]
    all_items, all_labels = torch.cat(list(items)), torch.cat(list(labels))
    owner = torch.repeat_interleave(torch.arange(d), torch.tensor(counts))
    group = all_items.shape[1]
    slot_users, slots = torch.zeros(group, dtype=torch.long), torch.arange(group)

    def loss(
        d_params: dict[str, torch.Tensor],
        user_row: torch.Tensor,
        rows: torch.Tensor,
        prior: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        looked = {PRIOR: prior} if has_prior else {}
        values = {**fixed, **d_params, USER: user_row, ITEM: rows, **looked}
        logits = functional_call(model, values, (slot_users, slots))
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum")

    per_record = vmap(grad(loss, argnums=(0, 1, 2)), in_dims=(None, 0, 0, 0, 0))
    user_sum = torch.zeros(d, user_rows.shape[1])
    item_sum = torch.zeros(d * model.n_items, width)
    dense_sum = {k: torch.zeros(d, *v.shape) for k, v in params.items()}
    table, prior = model.item_emb.weight.detach(), model.item_prior
    for start in range(0, len(all_items), CHUNK):
        it, y, own = (t[start : start + CHUNK] for t in (all_items, all_labels, owner))
        looked_prior = prior[it] if prior is not None else torch.zeros(it.shape)
        g_dense, g_user, g_rows = per_record(params, user_rows[own][:, None, :], table[it], looked_prior, y)
        g_user = g_user.reshape(len(it), -1)
        same = (it[:, :, None] == it[:, None, :]).to(g_rows.dtype)
        row_sq = g_user.square().sum(1) + (same * (g_rows @ g_rows.transpose(1, 2))).sum(dim=(1, 2))
        dense_sq = sum((g.reshape(len(it), -1).square().sum(1) for g in g_dense.values()), torch.zeros(len(it)))
        scale_rows = (clips.rows / (row_sq.sqrt() + CLIP_EPS)).clamp(max=1.0)
        scale_dense = (clips.dense / (dense_sq.sqrt() + CLIP_EPS)).clamp(max=1.0)
        user_sum.index_add_(0, own, scale_rows[:, None] * g_user)
        slot_rows = (own[:, None] * model.n_items + it).reshape(-1)
        item_sum.index_add_(0, slot_rows, (scale_rows[:, None, None] * g_rows).reshape(-1, width))
        for k, g in g_dense.items():
            dense_sum[k].index_add_(0, own, scale_dense.reshape(-1, *([1] * (g.dim() - 1))) * g)
    item_sum = item_sum.reshape(d, model.n_items, width)
    out = []
    for i in range(d):
        sums = {USER: user_sum[i : i + 1], ITEM: item_sum[i], **{k: v[i] for k, v in dense_sum.items()}}
        out.append(ClippedSums({n: sums[n] for n in names}, counts[i]))
    return out
