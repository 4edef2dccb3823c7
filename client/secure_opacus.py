"""Opacus' DP-SGD (ghost clipping, Poisson sampling) with its randomness from ``RandomStream``s.

Opacus draws the noise from a ``torch.Generator`` and its Poisson sampler from the global one: MT19937,
seeded with 64 bits of which 32 count, and in fedrec both seeded alike, so the noise was a function of
the sample. Here the noise comes from one stream and the sampling from another (common/randomness.py):
``make_private_ghost_streams`` is ``make_private_ghost`` with the two streams in place of the generator.

``PrivacyEngine.make_private`` takes neither an optimizer class nor a sampler (it picks them by
``get_optimizer_class`` and ``DPDataLoader``), so this module assembles its ghost-clipping path from the
same Opacus parts: ``prepare_module``, the optimizer (subclassed for the noise), the accountant's step
hook, ``DPLossFastGradientClipping``, and a loader over the stream's sampler with Opacus' empty-batch
collate. The privacy engine's accountant counts the steps, as with ``make_private``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.grad_sample import prepare_module
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, Sampler

from fedrec.common.randomness import RandomStream
from fedrec.common.training import GroupBCE


class StreamDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer with the noise drawn from ``noise``; otherwise Opacus' own: noise
    of std noise_multiplier * max_grad_norm on the summed clipped gradient, then ``scale_grad`` divides
    by the expected batch size. The sum is snapped to the noise grid first (``RandomStream.add_normal``),
    which moves it by at most 2**-21 of the noise std per coordinate."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise: RandomStream,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        loss_reduction: str = "mean",
    ):
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction,
        )
        self.noise = noise
        self._summed = torch.empty(0)  # every summed_grad is a view of it (``accumulate``)

    def accumulate(self) -> None:
        """Opacus' ``accumulate`` (summed_grad = grad, or += grad), the sums kept as views of one flat
        tensor, which ``add_noise`` noises in one draw (Opacus deep-copies each grad: the same values)."""
        params = self.params
        parts = [p.grad.detach() if p.summed_grad is None else p.summed_grad + p.grad for p in params]
        self._summed = torch.cat([part.reshape(-1) for part in parts])
        for p, view in zip(params, self._summed.split([p.numel() for p in params])):
            p.summed_grad = view.view_as(p)

    def add_noise(self) -> None:
        """Mirrors ``DPOptimizerFastGradientClipping.add_noise`` (adaptive clipping's adjusted multiplier
        included); the noise and the addition are the stream's, one draw for all parameters (the
        stream's cost is per pass over memory, not per coordinate)."""
        multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        params = self.params
        for p in params:
            _check_processed_flag(p.summed_grad)
            if p.summed_grad._base is not self._summed:
                raise RuntimeError("a summed gradient was set outside accumulate(): its noise would be missing")
        noisy = self.noise.add_normal(self._summed, multiplier * self.max_grad_norm)
        for p, grad in zip(params, noisy.split([p.numel() for p in params])):
            p.grad = grad.view_as(p)
            _mark_as_processed(p.summed_grad)

    def noise_only_step(self) -> None:
        """A step on an empty Poisson batch (ghost clipping cannot run on none): the wrapped optimizer steps
        on pure noise, scaled as ``scale_grad`` scales it. Not counted by the accountant's hook, as in
        ``train_private``, which counts these steps itself."""
        std = self.noise_multiplier * self.max_grad_norm
        saved = [p.grad for p in self.params]  # Opacus' bookkeeping expects them back untouched
        for p in self.params:
            p.grad = self.noise.normal(p.shape, std, p.dtype).div_(self.expected_batch_size)
        self.original_optimizer.step()
        for p, grad in zip(self.params, saved):
            p.grad = grad


class StreamPoissonSampler(Sampler[list[int]]):
    """Opacus' ``UniformWithReplacementSampler`` on a stream: ``steps`` batches, each record in each batch
    independently with probability ``sample_rate`` (empty batches happen)."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int, stream: RandomStream):
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        self.num_samples, self.sample_rate, self.steps, self.stream = num_samples, sample_rate, steps, stream

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield self.stream.bernoulli(self.num_samples, self.sample_rate).nonzero().reshape(-1).tolist()


def poisson_loader(loader: DataLoader, sampler: Sampler[list[int]]) -> DataLoader:
    """``DPDataLoader.from_data_loader`` with its batches from ``sampler`` (a Poisson sampler of
    ``len(loader)`` batches at rate 1/len(loader)), which alone draws from its random stream: Opacus' own
    hands its generator to the DataLoader too, which takes a worker seed from it before every epoch.
    Worker and pinning settings are not carried over (fedrec's loaders use none)."""
    dataset: Any = loader.dataset
    first = dataset[0]
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=wrap_collate_with_empty(
            collate_fn=loader.collate_fn,
            sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
            dtypes=[dtype_safe(x) for x in first],
        ),
    )


def make_private_ghost_streams(
    engine: PrivacyEngine,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    sampling: RandomStream,
    noise: RandomStream,
    noise_multiplier: float,
    max_grad_norm: float,
) -> tuple[Any, StreamDPOptimizer, DPLossFastGradientClipping, DataLoader]:
    """``make_private_ghost`` (Poisson sampling, ghost clipping, group BCE) with the records sampled from
    ``sampling`` and the noise drawn from ``noise``: what ``PrivacyEngine.make_private`` does on that path,
    step for step, with the stream-backed optimizer and sampler in place of Opacus' own. The rest is
    keyword-only, as in ``make_private``: two streams of one type must not be swapped unnoticed."""
    engine.validate(module=model, optimizer=optimizer, data_loader=loader)
    owned = set(model.parameters())
    if any(p not in owned for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("Module parameters are different than optimizer Parameters")
    module = prepare_module(
        model, grad_sample_mode="ghost", batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm
    )
    module.forbid_grad_accumulation()
    steps = len(loader)
    sampler = StreamPoissonSampler(num_samples=len(loader.dataset), sample_rate=1 / steps, steps=steps, stream=sampling)  # type: ignore[arg-type]
    private_loader = poisson_loader(loader, sampler)
    sample_rate = 1 / len(private_loader)
    dp_optimizer = StreamDPOptimizer(
        optimizer,
        noise=noise,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=int(len(private_loader.dataset) * sample_rate),  # type: ignore[arg-type]
    )
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    criterion = DPLossFastGradientClipping(module, dp_optimizer, GroupBCE(), "mean")
    return module, dp_optimizer, criterion, private_loader
