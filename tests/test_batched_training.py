"""The batched executor against real Opacus: the same devices, seeds and Poisson masks trained both ways.

Opacus' sampler is driven by the executor's own masks (patched in), so the two paths see the same
batches; the noise needs no patch, since both draw it parameter by parameter from a generator seeded
with the device seed. Clipping is made to bite (C = 0.05), one device has fewer examples than steps
(empty batches: noise-only steps), one has an item twice in a group (the table-norm duplicate rule).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedrec.client.batched_training import seeded_masks, train_private_batched
from fedrec.client.local_training import make_examples, train_private
from fedrec.client.round_randomness import SimulatedRandomness
from fedrec.client.stacked import DeviceWork
from fedrec.common.config import LocalTraining
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.model import ModelConfig, NeuMF, global_state

N_ITEMS = 60
MODEL = ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8))
SIZES = (30, 3, 60, 9, 41, 17)  # unsorted: results must come back in input order


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds hand-offs (and contention on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


Recipe = tuple[LocalTraining, DevicePrivacy]


def cfg(
    optimizer: str = "sgd",
    noise: float = 0.0,
    lr: float = 0.05,
    max_grad_norm: float = 0.05,
    epsilon_budget: float = 1e9,
    **kw,
) -> Recipe:
    """A device's training and mechanism, as (training, privacy): the executor and Opacus take both."""
    return (
        LocalTraining(lr=lr, optimizer=optimizer, **kw),
        DevicePrivacy(noise, max_grad_norm, budget=epsilon_budget if noise > 0 else 0.0),
    )


def make_fleet(
    model_cfg: ModelConfig,
) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]]:
    """Global parameters away from their tiny init (so gradients are large and clipping bites) and each
    device's (items, labels, user row, seed)."""
    torch.manual_seed(0)
    model = NeuMF(1, N_ITEMS, model_cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    rng = np.random.default_rng(0)
    devices = []
    for i, n in enumerate(SIZES):
        positives = rng.choice(N_ITEMS, size=n, replace=n > 40)
        items, labels = make_examples(positives, positives, N_ITEMS, 4, rng)
        if i == 0:
            items[:, 2] = items[:, 1]  # a negative drawn twice in every group
        devices.append((items, labels, torch.randn(1, model_cfg.embedding_dim) * 0.3, 1000 + i))
    return global_state(model), devices


@pytest.fixture(scope="module")
def fleet():
    return make_fleet(MODEL)


def works(fleet) -> list[DeviceWork]:
    _, devices = fleet
    return [DeviceWork(items, labels, row.clone(), SimulatedRandomness(seed)) for items, labels, row, seed in devices]


@pytest.fixture
def opacus_reference(monkeypatch):
    """train_private device by device, Opacus' own Poisson sampler included: it must draw exactly the masks
    the stacked executor draws (its generator is the executor's mask stream), which the spy checks."""
    drawn: list[list[int]] = []
    own_iter = UniformWithReplacementSampler.__iter__

    def spied(self):
        for indices in own_iter(self):
            drawn.append(indices)
            yield indices

    monkeypatch.setattr(UniformWithReplacementSampler, "__iter__", spied)

    def run(fleet, local: Recipe, frozen: tuple[str, ...] = (), model_cfg: ModelConfig = MODEL):
        params, devices = fleet
        training, privacy = local
        out = []
        for items, labels, row, seed in devices:
            model = NeuMF(1, N_ITEMS, model_cfg)
            model.load_state_dict({**params, "user_emb.weight": row})
            for name, p in model.named_parameters():
                p.requires_grad_(name not in frozen)
            drawn.clear()
            stats = train_private(model, items, labels, training, privacy, SimulatedRandomness(seed))
            expected = seeded_masks(seed, len(items), training.steps, training.sample_rate)
            assert drawn == [mask.nonzero().reshape(-1).tolist() for mask in expected], (
                "other masks than the executor's"
            )
            out.append((global_state(model), model.user_emb.weight.detach().clone(), stats))
        return out

    return run


def weighted_mean(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    return {k: sum(s[k].double() * w for s, w in zip(states, weights)) / sum(weights) for k in states[0]}


def assert_same_devices(batched, devices: list[DeviceWork], reference) -> None:
    for result, work, (state, row, stats) in zip(batched, devices, reference):
        for k in state:
            torch.testing.assert_close(result.state[k], state[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.user_row, row, atol=1e-5, rtol=1e-4)
        assert result.steps == stats.steps
        assert result.loss == pytest.approx(stats.loss, rel=1e-4)
        assert result.num_examples == len(work.items)
    weights = [len(w.items) for w in devices]
    mean = weighted_mean([r.state for r in batched], weights)
    reference_mean = weighted_mean([state for state, *_ in reference], weights)
    for k in mean:
        torch.testing.assert_close(mean[k], reference_mean[k], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_without_noise_every_device_ends_where_opacus_ends(fleet, opacus_reference, optimizer):
    local = cfg(optimizer)
    devices = works(fleet)
    batched = train_private_batched(fleet[0], MODEL, N_ITEMS, devices, *local, chunk_size=4)
    assert_same_devices(batched, devices, opacus_reference(fleet, local))
    moved = max(float((batched[2].state[k] - v).abs().max()) for k, v in fleet[0].items())
    assert moved > 1e-3
    unclipped = train_private_batched(fleet[0], MODEL, N_ITEMS, works(fleet), *cfg(optimizer, max_grad_norm=1e6))
    assert not torch.allclose(unclipped[2].state["tower.0.weight"], batched[2].state["tower.0.weight"], atol=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_with_noise_clipped_sums_and_noise_match_opacus_draw_for_draw(fleet, opacus_reference, optimizer):
    local = cfg(optimizer, noise=0.8)
    devices = works(fleet)
    batched = train_private_batched(fleet[0], MODEL, N_ITEMS, devices, *local, chunk_size=4)
    assert_same_devices(batched, devices, opacus_reference(fleet, local))


@pytest.mark.parametrize("lazy", [False, True])
def test_noise_has_the_scale_opacus_gives_it_and_is_independent_per_device(fleet, lazy):
    """SGD: final params with noise minus without (same masks) are, per coordinate, the sum of ``steps``
    draws of N(0, (sigma C)^2) times lr / B: their standardized spread is 1, whether the item rows' draws
    are made every step or when a row is next read. A small lr keeps the two runs' gradients nearly equal."""
    sigma = 1.3
    clean = train_private_batched(fleet[0], MODEL, N_ITEMS, works(fleet), *cfg(lr=1e-3))
    noisy = train_private_batched(fleet[0], MODEL, N_ITEMS, works(fleet), *cfg(lr=1e-3, noise=sigma), lazy_noise=lazy)
    again = train_private_batched(fleet[0], MODEL, N_ITEMS, works(fleet), *cfg(lr=1e-3, noise=sigma), lazy_noise=lazy)
    standardized = []
    for (items, *_), c, n in zip(fleet[1], clean, noisy):
        expected_batch = max(1, int(len(items) * 0.125))
        scale = 1e-3 * sigma * 0.05 * np.sqrt(8) / expected_batch
        diff = torch.cat([(n.state[k] - c.state[k]).ravel() for k in c.state] + [(n.user_row - c.user_row).ravel()])
        standardized.append(diff.double() / scale)
    z = torch.stack(standardized)
    assert float(z.std()) == pytest.approx(1.0, abs=0.05) and abs(float(z.mean())) < 0.05
    correlation = torch.corrcoef(z)
    assert float((correlation - torch.eye(len(z))).abs().max()) < 0.1
    for a, b in zip(noisy, again):  # seeded: the same seeds give the same draws
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


@pytest.mark.parametrize("kind", ["gmf", "mlp"])
def test_the_other_model_kinds_match_opacus_too(opacus_reference, kind):
    model_cfg = ModelConfig(kind=kind, gmf_dim=8, mlp_dim=8, layers=(16, 8), item_bias=kind == "gmf")
    other = make_fleet(model_cfg)
    local = cfg("adam", noise=0.8)
    devices = works(other)
    batched = train_private_batched(other[0], model_cfg, N_ITEMS, devices, *local, chunk_size=4)
    assert_same_devices(batched, devices, opacus_reference(other, local, model_cfg=model_cfg))


def test_parameter_filter_leaves_output_bias_untrained_as_a_frozen_opacus_parameter_does(fleet, opacus_reference):
    local = cfg("adam", noise=0.8)
    devices = works(fleet)
    batched = train_private_batched(
        fleet[0], MODEL, N_ITEMS, devices, *local, trains=lambda name: name != "output.bias"
    )
    assert_same_devices(batched, devices, opacus_reference(fleet, local, frozen=("output.bias",)))
    assert all(torch.equal(r.state["output.bias"], fleet[0]["output.bias"]) for r in batched)


def test_unsupported_settings_fail_with_one_line(fleet):
    with pytest.raises(FedrecError, match="dropout"):
        train_private_batched(
            fleet[0], ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8), dropout=0.1), N_ITEMS, works(fleet), *cfg()
        )
    with pytest.raises(FedrecError, match="lazy noise"):
        train_private_batched(fleet[0], MODEL, N_ITEMS, works(fleet), *cfg("adam", noise=1.0), lazy_noise=True)
    with pytest.raises(FedrecError, match="no parameter"):
        train_private_batched(fleet[0], MODEL, N_ITEMS, works(fleet), *cfg(), trains=lambda name: False)


def test_default_masks_sample_each_example_at_the_rate_with_a_stream_per_device():
    a, b = seeded_masks(1, 20_000, 8, 0.125), seeded_masks(2, 20_000, 8, 0.125)
    assert a.shape == (8, 20_000) and float(a.float().mean()) == pytest.approx(0.125, abs=0.005)
    assert torch.equal(a, seeded_masks(1, 20_000, 8, 0.125)) and not torch.equal(a, b)
    assert float(torch.corrcoef(torch.stack([a.ravel().float(), b.ravel().float()]))[0, 1]) == pytest.approx(
        0, abs=0.02
    )


def test_a_neumf_whose_forward_changed_is_refused(fleet, monkeypatch):
    forward = NeuMF.forward
    monkeypatch.setattr(NeuMF, "forward", lambda self, users, items: forward(self, users, items) * 2)
    with pytest.raises(FedrecError, match="no longer matches NeuMF.forward"):
        train_private_batched(fleet[0], MODEL, N_ITEMS, works(fleet), *cfg())


def test_lazy_noise_gives_a_row_its_pending_steps_when_read_and_the_rest_at_the_end():
    from fedrec.client.batched_training import _LazyTableNoise

    table = torch.zeros(1, 20_000, 1)
    lazy = _LazyTableNoise(table, [0], torch.tensor([0.5]))
    lazy.catch_up(torch.arange(10_000).reshape(1, 100, 100), step=3)  # these rows are read at step 3
    read, unread = table[0, :10_000], table[0, 10_000:]
    assert float(read.var()) == pytest.approx(3 * 0.25, rel=0.05) and float(unread.abs().max()) == 0.0
    before = read.clone()
    lazy.finish(steps=8)
    assert float((table[0, :10_000] - before).var()) == pytest.approx(5 * 0.25, rel=0.05)
    assert float(table[0, 10_000:].var()) == pytest.approx(8 * 0.25, rel=0.05)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_plain_batched_training_equals_train_plain_device_by_device(fleet, optimizer, epochs):
    """Without DP: the same permutations, batches (sizes 30, 3, 60, ... give 8, 3, 8, 5, 7, 6 steps an
    epoch), losses and optimizer steps as ``train_plain``, every parameter trained."""
    from fedrec.client.batched_plain import train_plain_batched
    from fedrec.client.local_training import train_plain

    params, devices = fleet
    training = LocalTraining(lr=0.05, optimizer=optimizer, epochs=epochs)
    works = [DeviceWork(items, labels, row, SimulatedRandomness(seed)) for items, labels, row, seed in devices]
    works.append(DeviceWork(devices[1][0][:0], devices[1][1][:0], devices[1][2], SimulatedRandomness(7)))
    got = train_plain_batched(params, MODEL, N_ITEMS, works, training, chunk_size=2)
    for work, result in zip(works, got):
        model = NeuMF(1, N_ITEMS, MODEL)
        model.load_state_dict({**params, "user_emb.weight": work.user_row})
        stats = train_plain(model, work.items, work.labels, training, work.randomness.order_seed())
        assert result.num_examples == len(work.items) and result.steps == stats.steps
        assert result.loss == pytest.approx(stats.loss, rel=1e-5, abs=1e-7)
        expected = global_state(model)
        for name, value in expected.items():
            assert torch.allclose(result.state[name], value, atol=2e-6), name
        assert torch.allclose(result.user_row, model.user_emb.weight.detach(), atol=2e-6)
        if len(work.items):
            assert (result.state["item_emb.weight"] - params["item_emb.weight"]).abs().max() > 1e-4
