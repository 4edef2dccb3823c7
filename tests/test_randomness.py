"""The randomness behind a device's privacy (common/randomness.py) and Opacus on it (client/secure_opacus.py):
seeds that count in full, independent purposes, sources that cannot be seeded, draws of the right
distribution, noise independent of the sample, and a seed search that recovers torch's noise only."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.bench_randomness import streams_in_place_of_generator
from fedrec.client.local_training import make_examples, make_private_ghost, train_private
from fedrec.client.round_randomness import SecureRandomness, SimulatedRandomness
from fedrec.client.secure_opacus import (
    StreamDPOptimizer,
    StreamPoissonSampler,
    poisson_loader,
)
from fedrec.common.config import LocalTraining
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.model import ModelConfig, NeuMF
from fedrec.common.randomness import (
    NEGATIVES,
    NOISE,
    SAMPLING,
    RandomSource,
    RandomStream,
    SecureSource,
    SeededSource,
    noise_grid,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),  # Opacus' own, for the stock path
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]
SEED = 20240611


def head(source: SeededSource | SecureSource, purpose: str = NOISE) -> bytes:
    return source.stream(purpose).random_bytes(64)


# --- sources: seeds in full, purposes apart, the secure one unseedable -------------------------------------


def test_a_seeded_source_repeats() -> None:
    a, b = SeededSource(SEED, 3, "device-7"), SeededSource(SEED, 3, "device-7")
    assert head(a) == head(b) and head(a, SAMPLING) == head(b, SAMPLING)
    assert torch.equal(
        SeededSource(SEED).stream(NOISE).normal(100, 1.0), SeededSource(SEED).stream(NOISE).normal(100, 1.0)
    )


def test_every_bit_of_the_seed_counts() -> None:
    """torch's generators keep 32 bits of a seed (s and s + 2**32 draw alike); a seeded source keeps all."""
    assert torch.equal(torch_noise(SEED + 2**32), torch_noise(SEED))  # the review's finding
    seeds = (SEED, SEED + 2**32, SEED + 2**64, -SEED, SEED + 1)
    assert len({head(SeededSource(s)) for s in seeds}) == len(seeds)
    # the context is part of the seed, unambiguously: (1, 23) is neither (12, 3) nor (123,) nor (1, "23")
    contexts = ((1, 23), (12, 3), (123,), (1, "23"))
    assert len({head(SeededSource(*c)) for c in contexts}) == len(contexts)


def test_purposes_and_repeated_purposes_get_independent_streams() -> None:
    source = SeededSource(SEED)
    firsts = [head(source, purpose) for purpose in (SAMPLING, NEGATIVES, NOISE)]
    second_noise = head(source, NOISE)  # a second noise stream never replays the first
    assert len({*firsts, second_noise}) == 4
    again = SeededSource(SEED)  # the same seed and order of calls: the same streams
    assert [head(again, purpose) for purpose in (SAMPLING, NEGATIVES, NOISE, NOISE)] == [*firsts, second_noise]


def test_a_secure_source_draws_its_key_and_takes_no_seed() -> None:
    assert head(SecureSource()) != head(SecureSource())
    assert SecureSource().reproducible is False and SeededSource(SEED).reproducible is True
    with pytest.raises(TypeError):
        RandomSource(bytes(32))  # type: ignore[abstract]  # only the two kinds exist
    with pytest.raises(TypeError):
        SecureSource(SEED)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        copy.copy(SecureSource())  # a copy would hand out the same streams twice
    with pytest.raises(TypeError):
        pickle.dumps(SecureSource())
    with pytest.raises(ValueError):
        SecureSource().stream("")


# --- the draws -------------------------------------------------------------------------------------------


def test_uniform_has_53_random_bits() -> None:
    u = SeededSource(SEED).stream(SAMPLING).uniform(200_000)
    grid = u * 2.0**53
    assert u.dtype == torch.float64 and 0 <= float(u.min()) and float(u.max()) < 1
    assert torch.equal(grid, grid.round())  # on the 2**-53 grid
    assert abs(float((grid.long() & 1).double().mean()) - 0.5) < 0.01  # the 53rd bit is random too
    assert abs(float(u.mean()) - 0.5) < 0.003 and abs(float(u.var()) - 1 / 12) < 0.002


def test_normal_moments_and_grid() -> None:
    stream = SeededSource(SEED).stream(NOISE)
    z = stream.standard_normal(300_001)
    assert len(z) == 300_001 and float(z.abs().max()) < 8.58
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float(((z - z.mean()) ** 4).mean() / z.var() ** 2) - 3) < 0.05
    noise = stream.normal((300, 500), 0.37, torch.float64)
    assert noise.shape == (300, 500) and abs(float(noise.std()) / 0.37 - 1) < 0.01
    units = noise / noise_grid(0.37)
    assert torch.equal(units, units.round())
    assert stream.normal(4, 0.0).abs().sum() == 0 and stream.normal(4, 1.0).dtype == torch.float32


def test_add_normal_adds_exactly_on_the_grid() -> None:
    """The release is snapped value + integer noise units, exactly: nothing of the value's low bits leaks
    through the float arithmetic of the sum."""
    stream = SeededSource(SEED).stream(NOISE)
    std = 0.7
    grid = noise_grid(std)
    assert 2**20 <= std / grid < 2**21
    value = torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5
    noisy = stream.add_normal(value, std)
    snapped = (value / grid).round() * grid
    assert float((snapped - value).abs().max()) <= grid / 2
    units = (noisy - snapped) / grid
    assert torch.equal(units, units.round())
    assert abs(float((noisy - value).std()) / std - 1) < 0.01
    value32 = value.float().reshape(250, 400)
    noisy32 = stream.add_normal(value32, std)
    assert noisy32.dtype == torch.float32 and noisy32.shape == (250, 400)
    assert abs(float((noisy32 - value32).std()) / std - 1) < 0.01
    with pytest.raises(ValueError):
        stream.add_normal(torch.tensor([2.0**60]), std)  # too large for an exact sum
    with pytest.raises(ValueError):
        stream.add_normal(torch.tensor([1.0, math.nan]), std)


def test_bernoulli_rate() -> None:
    stream = SeededSource(SEED).stream(SAMPLING)
    mask = stream.bernoulli(400_000, 0.125)
    assert mask.dtype == torch.bool and abs(float(mask.double().mean()) - 0.125) < 0.002
    assert not stream.bernoulli(1000, 0.0).any() and stream.bernoulli(1000, 1.0).all()
    assert sum(stream.coin(0.3) for _ in range(2000)) in range(540, 660)
    with pytest.raises(ValueError):
        stream.bernoulli(3, 1.5)


def test_integers_are_uniform_within_bounds() -> None:
    stream = SeededSource(SEED).stream(NEGATIVES)
    items = stream.integers(3, 1685, (500, 4))  # 1682 items: not a power of two
    assert items.shape == (500, 4) and items.dtype == torch.int64
    assert int(items.min()) >= 3 and int(items.max()) <= 1684
    dice = stream.integers(-2, 4, 60_000)
    counts = torch.bincount(dice + 2, minlength=6).double()
    assert int(dice.min()) == -2 and int(dice.max()) == 3
    assert float(((counts - 10_000) ** 2 / 10_000).sum()) < 20.5  # chi-square, 5 dof, p = 0.001


def test_integers_have_no_modulo_bias() -> None:
    """Over a range of 3 * 2**61, a word modulo the range lands below 2**62 three times in four; the
    stream's rejection keeps it at the true two in three."""
    span = 3 * 2**61
    low_share = float((SeededSource(SEED).stream(NEGATIVES).integers(0, span, 20_000) < 2**62).double().mean())
    assert abs(low_share - 2 / 3) < 0.015
    words = np.frombuffer(SeededSource(SEED).stream("control").random_bytes(8 * 20_000), dtype=np.uint64)
    assert float(((words % np.uint64(span)) < 2**62).mean()) > 0.73  # plain modulo: the bias is visible


# --- the noise does not depend on the sample ---------------------------------------------------------------

RECORDS, RATE, TRIALS = 64, 0.125, 300


def positive_share_and_correlation(draw: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Over TRIALS rounds of (sampling mask, noise) from ``draw``: the share of positive noise at the sampled
    coordinates (1/2 when independent) and the correlation of mask and noise (0 when independent)."""
    masks, noises = zip(*(draw(trial) for trial in range(TRIALS)))
    mask, noise = torch.stack(masks).double().ravel(), torch.stack(noises).double().ravel()
    share = float((noise[mask.bool()] > 0).double().mean())
    return share, float(torch.corrcoef(torch.stack([mask, noise]))[0, 1])


def torch_coupled(trial: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The review's finding: Opacus' sampler on the global generator and the noise generator, seeded alike."""
    torch.manual_seed(trial)
    generator = torch.Generator().manual_seed(trial)
    return torch.rand(RECORDS) < RATE, torch.normal(0.0, 1.0, (RECORDS,), generator=generator)


def streams(trial: int) -> tuple[torch.Tensor, torch.Tensor]:
    source = SeededSource(SEED, trial)
    return source.stream(SAMPLING).bernoulli(RECORDS, RATE), source.stream(NOISE).normal(RECORDS, 1.0)


def test_the_noise_is_independent_of_the_sample() -> None:
    share, corr = positive_share_and_correlation(streams)
    assert abs(share - 0.5) < 0.04 and abs(corr) < 0.03


def test_the_independence_test_catches_torchs_coupled_streams() -> None:
    """Negative control: the same statistics on the coupled torch streams. torch's normal draws 16 uniforms
    per block and makes coordinates 8..15 r * sin(2 pi u) from the uniforms the mask used: a sampled
    record (u < 1/8) there always gets positive noise."""
    share, corr = positive_share_and_correlation(torch_coupled)
    assert share > 0.7 and corr > 0.05
    for trial in range(50):
        mask, noise = torch_coupled(trial)
        aligned = mask & (torch.arange(RECORDS) % 16 >= 8)
        assert bool((noise[aligned] > 0).all())


# --- a seed search: torch's noise is recomputable, the secure source's is not -----------------------------


def search(observed: torch.Tensor, candidates: range, draw: Callable[[int], torch.Tensor]) -> list[int]:
    return [seed for seed in candidates if torch.equal(draw(seed), observed)]


def torch_noise(seed: int) -> torch.Tensor:
    return torch.normal(0.0, 1.0, (16,), generator=torch.Generator().manual_seed(seed))


def seeded_noise(seed: int) -> torch.Tensor:
    return SeededSource(seed).stream(NOISE).normal(16, 1.0)


def test_a_seed_search_recovers_torchs_noise_but_not_the_secure_sources() -> None:
    """A deployed device's 63-bit OS seed through torch.Generator: its low 32 bits decide the noise, so a
    search over 32-bit seeds finds it (here the 2**12 around it; all 2**32 take ~6 CPU-hours in this very
    loop). The same search finds nothing against a secure source, nor a seeded one with high seed bits."""
    secret = (0x5DEECE66 << 32) | 0x9E3779B9  # 63 bits, as secrets.randbits(63) gives
    window = range(0x9E3779B9 - 2**11, 0x9E3779B9 + 2**11)
    assert search(torch_noise(secret), window, torch_noise) == [0x9E3779B9]
    secure = SecureSource().stream(NOISE).normal(16, 1.0)
    assert search(secure, window, torch_noise) == [] and search(secure, window, seeded_noise) == []
    assert search(seeded_noise(secret), window, seeded_noise) == []
    assert search(seeded_noise(0x9E3779B9), window, seeded_noise) == [0x9E3779B9]  # seeded: recomputable by design


# --- Opacus on streams ------------------------------------------------------------------------------------


def test_the_optimizer_adds_opacus_noise_from_its_stream() -> None:
    """Zero gradients: the step's gradient is pure noise of std noise_multiplier * max_grad_norm / expected
    batch size, as Opacus scales it."""
    weight = nn.Parameter(torch.zeros(400, 500))
    optimizer = StreamDPOptimizer(
        torch.optim.SGD([weight], lr=1.0),
        noise=SeededSource(SEED).stream(NOISE),
        noise_multiplier=1.3,
        max_grad_norm=0.7,
        expected_batch_size=4,
    )
    weight.grad = torch.zeros_like(weight)
    assert optimizer.pre_step()
    assert weight.grad.shape == weight.shape and weight.grad.dtype == torch.float32
    assert abs(float(weight.grad.std()) / (1.3 * 0.7 / 4) - 1) < 0.02 and abs(float(weight.grad.mean())) < 0.002
    optimizer.zero_grad(set_to_none=True)
    before = weight.detach().clone()
    optimizer.noise_only_step()
    assert weight.grad is None  # restored as it was
    assert abs(float((before - weight.detach()).std()) / (1.3 * 0.7 / 4) - 1) < 0.02


def test_the_sampler_draws_binomial_batches() -> None:
    sampler = StreamPoissonSampler(
        num_samples=100, sample_rate=0.125, steps=4000, stream=SeededSource(SEED).stream(SAMPLING)
    )
    batches = list(sampler)
    assert len(sampler) == len(batches) == 4000
    assert all(b == sorted(set(b)) and all(0 <= i < 100 for i in b) for b in batches)
    sizes = np.array([len(b) for b in batches])
    assert abs(sizes.mean() - 12.5) < 0.2 and abs(sizes.var() / (100 * 0.125 * 0.875) - 1) < 0.1
    tiny = StreamPoissonSampler(num_samples=3, sample_rate=0.2, steps=2000, stream=SeededSource(SEED).stream(SAMPLING))
    assert abs(np.mean([len(b) == 0 for b in tiny]) - 0.8**3) < 0.045  # empty batches happen


def test_the_poisson_loader_yields_empty_batches_of_the_right_shape() -> None:
    data = TensorDataset(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5))
    sampler = StreamPoissonSampler(
        num_samples=3, sample_rate=1 / 5, steps=5, stream=SeededSource(SEED).stream(SAMPLING)
    )
    loader = poisson_loader(DataLoader(data, batch_sampler=[[0], [1], [2], [], []]), sampler)
    batches = [items for items, _ in loader]
    assert len(batches) == 5 and all(b.shape[1:] == (5,) for b in batches)
    assert any(len(b) == 0 for b in batches)


def device(records: int = 40) -> tuple[NeuMF, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = NeuMF(1, 50, ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8)))
    rng = np.random.default_rng(0)
    items, labels = make_examples(rng.integers(0, 50, records), None, 50, 4, rng)
    return model, items, labels


def test_without_noise_the_stream_path_steps_as_opacus_does() -> None:
    """Sample rate 1 (every record in every batch) and no noise: both paths take the same steps, to the bit,
    with the same expected batch size and accountant history."""
    model, items, labels = device()
    twin = copy.deepcopy(model)
    runs = []
    for net, make in ((model, make_private_ghost), (twin, streams_in_place_of_generator(lambda: SeededSource(SEED)))):
        for name, p in net.named_parameters():
            p.requires_grad_(name != "output.bias")
        engine = PrivacyEngine(accountant="rdp")
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)
        loader = DataLoader(TensorDataset(items, labels), batch_sampler=[list(range(len(items)))])
        module, dp_optimizer, criterion, private_loader = make(
            engine, net, optimizer, loader, 0.0, 1.0, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        )
        users = torch.zeros(1, dtype=torch.long)
        for _ in range(3):
            for batch_items, batch_labels in private_loader:
                dp_optimizer.zero_grad(set_to_none=True)
                criterion(module(users.expand_as(batch_items), batch_items), batch_labels).backward()
                dp_optimizer.step()
        runs.append((dp_optimizer.expected_batch_size, engine.accountant.history))
        module._close()
    assert runs[0] == runs[1]
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_deployed_round_trains_on_secure_streams_as_the_simulated_one_on_generators() -> None:
    """``train_private`` on a deployed device's ``SecureRandomness``: the same steps as the simulated path,
    a finite loss, and the parameters moved by other draws."""
    training, privacy = LocalTraining(), DevicePrivacy(noise_multiplier=1.0, budget=math.inf)
    model, items, labels = device()
    twin = copy.deepcopy(model)
    stock = train_private(twin, items, labels, training, privacy, SimulatedRandomness(0))
    secure = train_private(model, items, labels, training, privacy, SecureRandomness())
    assert secure.steps == stock.steps == training.steps and math.isfinite(secure.loss)
    assert not torch.equal(model.item_emb.weight, twin.item_emb.weight)


def test_a_stream_key_has_256_bits() -> None:
    with pytest.raises(ValueError):
        RandomStream(bytes(16))
