"""One device's step of the ``distributed`` mechanism through Opacus: ``GradSampleModule`` takes each record's
gradient, ``SplitNoiseDPOptimizer`` (Opacus' ``DPOptimizer``, subclassed) clips it per group and adds the
mechanism's noise, split: the full sigma C on the device's own user row, which is never aggregated, and the
device's share of sigma C on the shared parameters, whose sum over the fleet carries the whole of it.

The noise comes from the device's ``Draws`` (a secure stream on a deployed device), never from Opacus'
generator; the records were Poisson-sampled from another stream before this module sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from fedrec.client.round_randomness import Draws
from fedrec.client.shared_gradients import CLIP_EPS, ClippedSums, GroupClips, trained_names
from fedrec.common.model import NeuMF, is_dense


class SplitNoiseDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with per-group clipping (each record's gradient scaled to norm ``clips.rows`` over
    the embedding tables it reaches and to ``clips.dense`` over the dense layers, ``dense[i]`` saying which
    group parameter i is in) and a noise std per parameter drawn from ``draws`` in parameter order. It is
    never stepped: ``clip_and_accumulate`` and ``add_noise`` leave the noisy sums in ``p.grad``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        dense: Sequence[bool],
        clips: GroupClips,
        stds: Sequence[float],
        draws: Draws,
        noise_multiplier: float,
        expected_batch_size: int,
    ):
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=clips.total,
            expected_batch_size=expected_batch_size,
            loss_reduction="sum",
        )
        if not len(dense) == len(stds) == len(self.params):
            raise ValueError("one group and one noise std per parameter")
        self.groups, self.clips, self.stds, self.draws = (
            [int(d) for d in dense],
            (clips.rows, clips.dense),
            list(stds),
            draws,
        )

    def clip_and_accumulate(self) -> None:
        """Opacus' ``clip_and_accumulate`` with one clip factor per group of parameters."""
        samples = self.grad_samples
        per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in samples]
        factors = []
        for group, clip in enumerate(self.clips):
            norms = [n for n, g in zip(per_param, self.groups) if g == group]
            norm = torch.stack(norms, dim=1).norm(2, dim=1) if norms else torch.zeros(len(samples[0]))
            factors.append((clip / (norm + CLIP_EPS)).clamp(max=1.0))
        for p, group in zip(self.params, self.groups):
            _check_processed_flag(p.grad_sample)
            grad = torch.einsum("i,i...", factors[group].to(p.dtype), self._get_flat_grad_sample(p).to(p.dtype))
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        """Each parameter's sum plus N(0, std^2) per coordinate, drawn in parameter order."""
        for p, std in zip(self.params, self.stds):
            _check_processed_flag(p.summed_grad)
            noise = self.draws.normal(tuple(p.shape), std) if std > 0 else torch.zeros(p.shape)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


def opacus_noisy_sums(
    model: NeuMF,
    items: torch.Tensor,
    labels: torch.Tensor,
    clips: GroupClips,
    stds: Mapping[str, float],
    draws: Draws,
) -> ClippedSums:
    """One device's noisy sums: its sampled records' gradients (``items``/``labels`` [n, 1+k]) clipped per
    group, plus noise of std ``stds[name]`` on each trained parameter (``shared_gradients.noise_stds``)."""
    names = trained_names(model, clips)
    named = dict(model.named_parameters())
    for name, p in named.items():
        p.requires_grad_(name in names)
    params = [named[n] for n in names]
    module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    optimizer = SplitNoiseDPOptimizer(
        torch.optim.SGD(params, lr=0.0),
        dense=[is_dense(n) for n in names],
        clips=clips,
        stds=[stds[n] for n in names],
        draws=draws,
        noise_multiplier=1.0,  # Opacus' own noise is never drawn: add_noise uses ``stds``
        expected_batch_size=max(1, len(items)),
    )
    try:
        if len(items):
            logits = module(torch.zeros_like(items), items)
            F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").backward()
            optimizer.clip_and_accumulate()
        else:  # no record sampled: the sums are zero, the noise is drawn all the same
            for p in params:
                p.summed_grad = torch.zeros_like(p)  # type: ignore[attr-defined]  # Opacus' own attribute
        optimizer.add_noise()
        sums = {n: _grad(p) for n, p in zip(names, params)}
    finally:
        module._close()
    return ClippedSums(sums, len(items))


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None  # add_noise set it
    return p.grad.detach().clone()
