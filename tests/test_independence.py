"""The DP noise is independent of the sampling on every private path, as the Poisson-subsampled Gaussian
analysis assumes: Opacus' path on a simulated and on a deployed device, the stacked trainer, the
distributed share, the user-level share against its participation coin, and centralized_dp.

Each test runs the path itself and reads what it sampled and what noise it added (hooks on the model and
the optimizer, or the step's own outputs), then measures the dependence between the two. Each has a
negative control the measure must catch: on torch's streams, the coupling the review found on the Opacus
path (sampling and noise from one MT19937 sequence); on a deployed device's ChaCha20 streams, sampling and
noise on one key, caught by the keys themselves (see ``keys_apart``).

With a sample rate of 1/2 the torch coupling is total: torch's normal makes coordinates 8..15 of each block
of 16 as r sin(2 pi u) from the uniforms the mask compared with 1/2, so a sampled record's coordinate is
always positive (correlation 1). An honest path's largest correlation is ~0.3 at 150 rounds over 512
pairs; the limit 0.5 is 6 standard errors of one pair.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizerFastGradientClipping

import fedrec.client.shared_noise as shared_noise
from fedrec.client import local_training
from fedrec.client.batched_training import _Chunk, train_private_batched
from fedrec.client.device_round import device_seed, round_randomness
from fedrec.client.local_training import make_examples, train_private
from fedrec.client.round_randomness import (
    USER_NOISE,
    RoundRandomness,
    SecureRandomness,
    SimulatedRandomness,
    TorchDraws,
    stream_seed,
)
from fedrec.client.secure_opacus import StreamDPOptimizer
from fedrec.client.shared_noise import MOMENTUM, SharedGradientStep
from fedrec.client.stacked import DeviceWork
from fedrec.client.user_level import UserUpdateStep
from fedrec.common.config import DeviceConfig, LocalTraining, SharedNoise
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo
from fedrec.common.mechanisms import mechanism_for
from fedrec.common.model import ModelConfig, NeuMF, global_state
from fedrec.common.randomness import KEY_BYTES, RandomStream
from fedrec.common.store import Events
from fedrec.simulations.arms import centralized_dp
from fedrec.simulations.arms.centralized_dp import DPRecipe, train_dp
from fedrec.simulations.audit.inprocess import MemoryDevice

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]

RECORDS, TRIALS, COORDS = 16, 150, 16  # records a device holds, rounds observed, noise coordinates read
N_ITEMS = 40
MODEL = ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8))  # a 16-wide user row: torch's vectorized normal
TRAINING = LocalTraining(steps_per_epoch=2, lr=0.05, optimizer="sgd")  # Poisson rate 1/2
LIMIT = 0.5  # max |correlation| of an honest path: ~6 standard errors at 150 trials, over 512 pairs

Round = tuple[torch.Tensor, torch.Tensor]  # (which of the RECORDS records were sampled, the first noise)


def dependence(rounds: list[Round]) -> float:
    """The largest |correlation|, over the rounds, between a record's sampling bit and the sign or the
    magnitude of one of the first COORDS noise coordinates (0 when independent, whatever the alignment)."""
    masks = torch.stack([mask for mask, _ in rounds]).double()
    noise = torch.stack([z[:COORDS] for _, z in rounds]).double()
    features = torch.cat([(noise > 0).double(), noise.abs()], dim=1)

    def standard(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) / x.std(0).clamp_min(1e-12)

    corr = standard(masks).T @ standard(features) / (len(rounds) - 1)
    return float(corr.abs().max())


def examples() -> tuple[torch.Tensor, torch.Tensor]:
    """Record i's positive is item i: a batch's items say which records were sampled."""
    return make_examples(np.arange(RECORDS), None, N_ITEMS, TRAINING.negatives, np.random.default_rng(0))


def sampled(positives: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(RECORDS, dtype=torch.bool)
    mask[positives[positives < RECORDS]] = True
    return mask


@contextmanager
def first_noise(cls: type) -> Iterator[list[torch.Tensor]]:
    """The noise ``cls.add_noise`` adds at its first call (the released gradient minus the clipped sum),
    over the parameters in the optimizer's order."""
    seen: list[torch.Tensor] = []
    original = cls.add_noise

    def spy(self) -> None:
        sums = [p.summed_grad.detach().clone() for p in self.params]
        original(self)
        if not seen:
            seen.append(torch.cat([(p.grad - s).reshape(-1) for p, s in zip(self.params, sums)]))

    cls.add_noise = spy
    try:
        yield seen
    finally:
        cls.add_noise = original


def first_batch(model: torch.nn.Module, column: int) -> list[torch.Tensor]:
    """The ids in ``column`` of the first batch the model is run on (items: 1, users: 0)."""
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[column][:, 0].clone()) if not seen else None)
    return seen


# --- Opacus' path: train_private on a simulated and on a deployed device ----------------------------------


def opacus_round(randomness: RoundRandomness) -> Round:
    items, labels = examples()
    model = NeuMF(1, N_ITEMS, MODEL)
    batch = first_batch(model, 1)
    cls = StreamDPOptimizer if isinstance(randomness, SecureRandomness) else DPOptimizerFastGradientClipping
    with first_noise(cls) as noise:
        train_private(model, items, labels, TRAINING, DevicePrivacy(1.0, budget=math.inf), randomness)
    return sampled(batch[0]), noise[0]


def coupled_torch_sampler(seed: int) -> torch.Generator:
    """The review's finding: the sampler on the noise's own seed (one MT19937 sequence for both)."""
    return torch.Generator().manual_seed(seed)


class OneSecureKey(SecureRandomness):
    """A broken deployed device: every stream of its round on one key, so sampling and noise read the same
    keystream words."""

    def __init__(self) -> None:
        super().__init__()
        key = os.urandom(KEY_BYTES)
        self.source.stream = lambda purpose: RandomStream(key)  # type: ignore[method-assign]


@contextmanager
def stream_keys() -> Iterator[list[bytes]]:
    """The key of every ChaCha20 stream made meanwhile."""
    keys: list[bytes] = []
    original = RandomStream.__init__

    def spy(self: RandomStream, key: bytes) -> None:
        keys.append(key)
        original(self, key)

    RandomStream.__init__ = spy  # type: ignore[method-assign]
    try:
        yield keys
    finally:
        RandomStream.__init__ = original  # type: ignore[method-assign]


def keys_apart(run: Callable[[], object]) -> bool:
    """Did the run draw from two or more streams, none sharing a key with another? ChaCha20 keystreams of
    distinct keys are independent; a shared key makes two purposes read the same words. (Box-Muller takes a
    radius word's top bits, Bernoulli its low 53, so the correlation statistic barely sees that coupling.)"""
    with stream_keys() as keys:
        run()
    return len(keys) >= 2 and len(set(keys)) == len(keys)


def test_opacus_noise_is_independent_of_its_sample_on_a_simulated_device(monkeypatch):
    assert dependence([opacus_round(SimulatedRandomness(t)) for t in range(TRIALS)]) < LIMIT
    monkeypatch.setattr(local_training, "torch_sampler", coupled_torch_sampler)
    assert dependence([opacus_round(SimulatedRandomness(t)) for t in range(TRIALS)]) > 0.9


def test_opacus_noise_is_independent_of_its_sample_on_a_deployed_device():
    assert dependence([opacus_round(SecureRandomness()) for _ in range(TRIALS)]) < LIMIT
    assert keys_apart(lambda: opacus_round(SecureRandomness()))
    assert not keys_apart(lambda: opacus_round(OneSecureKey()))


# --- the stacked trainer ------------------------------------------------------------------------------------


def stacked_rounds(masks: Callable[[int, int, int, float], torch.Tensor] | None = None) -> list[Round]:
    """One chunk of TRIALS devices (a device per trial): step 0's masks and noise of each."""
    items, labels = examples()
    works = [
        DeviceWork(items, labels, torch.zeros(1, MODEL.embedding_dim), SimulatedRandomness(t)) for t in range(TRIALS)
    ]
    seen: list[Round] = []
    original = _Chunk._noise

    def spy(self: _Chunk) -> torch.Tensor:
        grad = original(self)
        if not seen:
            seen.extend(zip(self.masks[:, 0, :RECORDS].clone(), grad.clone() * self.expected_batch[:, None]))
        return grad

    _Chunk._noise = spy  # type: ignore[method-assign]
    try:
        extra = {} if masks is None else {"masks": masks}
        params = global_state(NeuMF(1, N_ITEMS, MODEL))
        train_private_batched(
            params, MODEL, N_ITEMS, works, TRAINING, DevicePrivacy(1.0, budget=math.inf), chunk_size=TRIALS, **extra
        )
    finally:
        _Chunk._noise = original  # type: ignore[method-assign]
    return seen


def test_the_stacked_trainers_noise_is_independent_of_its_masks():
    assert dependence(stacked_rounds()) < LIMIT

    def coupled(seed: int, n: int, steps: int, rate: float) -> torch.Tensor:
        return torch.rand(steps, n, generator=torch.Generator().manual_seed(seed)) < rate

    assert dependence(stacked_rounds(coupled)) > 0.9


# --- the distributed share ---------------------------------------------------------------------------------

SIGMA = 1e4  # the clipped sums (norm <= C per record) vanish beside noise of std SIGMA C


def device_config(**shared) -> DeviceConfig:
    noise = SharedNoise(min_devices=1, count_sigma=0.0, feature_init="", **shared)
    return DeviceConfig(n_items=N_ITEMS, model=MODEL, training=TRAINING, shared_noise=noise)


class OneTorchStream(SimulatedRandomness):
    """A broken simulated device: every purpose draws from the same seeded generator."""

    def draws(self, purpose: str) -> TorchDraws:
        return TorchDraws(self.seed)


def shared_rounds(randomness: Callable[[int], RoundRandomness], monkeypatch) -> list[Round]:
    device = dataclasses.replace(device_config(record_rate=0.5), executor="per_device")  # a device's own Opacus step
    privacy = DevicePrivacy(SIGMA, budget=math.inf, mechanism="distributed", expected_batch=1.0)
    params = mechanism_for(privacy).initial_state(device)
    step = SharedGradientStep(params, DeviceInstructions(device, privacy, RoundInfo(2)))
    picked: list[torch.Tensor] = []
    original = shared_noise.opacus_noisy_sums

    def spy(model, items, *rest):
        picked.append(items[:, 0].clone())
        return original(model, items, *rest)

    monkeypatch.setattr(shared_noise, "opacus_noisy_sums", spy)
    items, labels = examples()
    rounds = []
    for t in range(TRIALS):
        work = DeviceWork(
            items,
            labels,
            torch.zeros(1, MODEL.embedding_dim),
            randomness(t),
            {MOMENTUM: torch.zeros(1, MODEL.embedding_dim)},
        )
        (trained,) = step.train([work])
        rounds.append((sampled(picked[-1]), trained.arrays["item_emb.weight"].reshape(-1) / privacy.max_grad_norm))
    return rounds


def test_the_distributed_share_is_independent_of_its_record_sample(monkeypatch):
    assert dependence(shared_rounds(SimulatedRandomness, monkeypatch)) < LIMIT
    assert dependence(shared_rounds(lambda _: SecureRandomness(), monkeypatch)) < LIMIT
    assert dependence(shared_rounds(OneTorchStream, monkeypatch)) > 0.9
    assert keys_apart(lambda: shared_rounds(lambda _: SecureRandomness(), monkeypatch)[:1])
    assert not keys_apart(lambda: shared_rounds(lambda _: OneSecureKey(), monkeypatch))


# --- the user-level share and its participation coin -------------------------------------------------------


def noise_given_participation(seeded: bool) -> torch.Tensor:
    """[rounds taken part in, COORDS] one device's noise (over its std) in the rounds its coin said yes: the
    node's coin (``takes_part``) and the device's round randomness, then the user-level step."""
    device = MemoryDevice(
        "d0", Events(np.arange(1), np.arange(1), np.full(1, "rating"), np.full(1, np.nan, np.float32))
    )
    device.seeded = seeded
    config = dataclasses.replace(device_config(), participation=0.5)
    privacy = DevicePrivacy(SIGMA, budget=math.inf, mechanism="user", expected_batch=1.0)
    params = mechanism_for(privacy).initial_state(config)
    items, labels = examples()
    taken = []
    for number in range(1, 2 * TRIALS + 1):
        task = DeviceInstructions(config, privacy, RoundInfo(number))
        if not shared_noise.takes_part(device, task):
            continue
        work = DeviceWork(items, labels, torch.zeros(1, MODEL.embedding_dim), round_randomness(device, task))
        (trained,) = UserUpdateStep(params, task).train([work])
        taken.append(trained.arrays["item_emb.weight"].reshape(-1)[:COORDS] / privacy.max_grad_norm / SIGMA)
    return torch.stack(taken)


def same_law_as_unconditional(noise: torch.Tensor) -> bool:
    """The noise of the rounds taken part in is N(0, 1) in its sign and magnitude, coordinate by
    coordinate, to five standard errors: what it is whatever the coin said when the two are independent."""
    n = len(noise)
    sign = (noise > 0).double().mean(0) - 0.5
    size = noise.abs().double().mean(0) - math.sqrt(2 / math.pi)
    return bool((sign.abs() < 5 * 0.5 / math.sqrt(n)).all() and (size.abs() < 5 * 0.61 / math.sqrt(n)).all())


def test_the_user_level_noise_is_independent_of_the_participation_coin(monkeypatch):
    assert same_law_as_unconditional(noise_given_participation(seeded=True))
    assert same_law_as_unconditional(noise_given_participation(seeded=False))

    def coupled(ref, task) -> bool:  # the coin from the first uniform of the noise's own stream
        seed = stream_seed(USER_NOISE, device_seed(task.device.seed, task.round.number, ref.device_id))
        return bool(torch.rand(1, generator=torch.Generator().manual_seed(seed)) < task.device.participation)

    monkeypatch.setattr(shared_noise, "takes_part", coupled)
    assert not same_law_as_unconditional(noise_given_participation(seeded=True))


# --- centralized_dp -----------------------------------------------------------------------------------------


def centralized_round(seed: int) -> Round:
    """User i holds record i alone: the first batch's users say which records were sampled."""
    recipe = DPRecipe(
        model=MODEL, epochs=1, batch_size=RECORDS // 2, feature_init=False, popularity_prior=False, frozen=()
    )
    model_batches: list[torch.Tensor] = []
    original = centralized_dp.NeuMF

    def tracked(*args, **kwargs) -> NeuMF:
        model = original(*args, **kwargs)
        model_batches.append(first_batch(model, 0))  # type: ignore[arg-type]
        return model

    centralized_dp.NeuMF = tracked  # type: ignore[misc]
    try:
        with first_noise(DPOptimizerFastGradientClipping) as noise:
            train_dp(RECORDS, N_ITEMS, np.arange(RECORDS), np.arange(RECORDS) % N_ITEMS, recipe, seed)
    finally:
        centralized_dp.NeuMF = original  # type: ignore[misc]
    return sampled(model_batches[0][0]), noise[0]  # type: ignore[index]


def test_centralized_dp_noise_is_independent_of_its_sample(monkeypatch):
    # the accountant (0.4 s a call at q = 1/2) is not what is measured: one plan for every trial
    plan = centralized_dp.DPPrivacy(8.0, 1e-5, 1.0, 0.5, 2)
    monkeypatch.setattr(centralized_dp, "planned_privacy", lambda records, recipe: plan)
    monkeypatch.setattr(centralized_dp, "history_epsilon", lambda history, delta: plan.epsilon)
    assert dependence([centralized_round(t) for t in range(TRIALS)]) < LIMIT
    monkeypatch.setattr(centralized_dp, "torch_sampler", coupled_torch_sampler)
    assert dependence([centralized_round(t) for t in range(TRIALS)]) > 0.9
