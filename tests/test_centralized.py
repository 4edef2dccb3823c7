"""Centralized NeuMF learns structure popularity cannot see, and its model keeps the federated contract."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from synthetic_data import clustered_split

from fedrec.common.config import CentralConfig
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.model import PRIOR, ModelConfig, NeuMF, global_state, local_state, tower_layers
from fedrec.common.training import TrainConfig, recency_oversample
from fedrec.simulations.arms.centralized import fit_centralized, train_with_validation
from fedrec.simulations.arms.simple import fit_popularity


def test_neumf_beats_popularity_on_clustered_data():
    split = clustered_split()
    torch.set_num_threads(1)
    config = CentralConfig(
        ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8), item_bias=True),
        TrainConfig(epochs=15, batch_size=64, lr=1e-2, negatives=4, patience=15, refit=True),
    )
    neumf = fit_centralized(split, 0, config, show=False)
    pop = fit_popularity(split, 0)
    hr_neumf, _ = hit_ndcg(full_ranks(neumf.scores, split, "test", 0))
    hr_pop, _ = hit_ndcg(full_ranks(pop.scores, split, "test", 0))
    assert hr_neumf > hr_pop + 0.2
    assert 1 <= neumf.info["best_epoch"] <= 15


def test_item_bias_keeps_one_lookup_per_table_and_local_user_rows():
    model = NeuMF(5, 7, ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8, 4), item_bias=True))
    calls = {"user_emb": 0, "item_emb": 0}
    for name in calls:
        getattr(model, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    users, items = torch.tensor([0, 1, 4]), torch.tensor([6, 0, 3])
    logits = model(users, items)
    assert calls == {"user_emb": 1, "item_emb": 1}
    assert torch.allclose(model.score_users(users)[torch.arange(3), items], logits, atol=1e-5)
    assert set(local_state(model)) == {"user_emb.weight"}
    assert "item_emb.weight" in global_state(model)


@pytest.mark.parametrize("kind", ["neumf", "gmf"])
def test_the_prior_is_a_fixed_offset_on_every_score_and_a_state_key_only_when_configured(kind):
    config = ModelConfig(kind=kind, gmf_dim=4, mlp_dim=3, layers=(8,), item_bias=True, init_std=0.5)
    torch.manual_seed(0)
    plain = NeuMF(3, 7, config)
    torch.manual_seed(0)
    model = NeuMF(3, 7, replace(config, prior=True))  # the same weights: the prior draws no randomness
    assert PRIOR not in plain.state_dict() and PRIOR in global_state(model)
    assert PRIOR not in dict(model.named_parameters())  # never trained
    prior = torch.randn(7)
    model.set_prior(prior)
    users, items = torch.tensor([0, 2, 1, 2]), torch.tensor([6, 0, 3, 3])
    assert torch.equal(model(users, items), plain(users, items) + prior[items])
    assert torch.equal(model.score_users(torch.arange(3)), plain.score_users(torch.arange(3)) + prior)
    rows = model.user_emb.weight.detach()
    logits = model.frozen_item_logits()(rows, users, items[:, None])
    assert torch.allclose(logits[:, 0], model(users, items), atol=1e-6)
    with pytest.raises(ValueError, match="no prior"):
        plain.set_prior(prior)


def test_refit_data_adds_exactly_the_validation_items():
    split = clustered_split()
    users, items, _ = train_with_validation(split)
    assert len(users) == len(split.train_users) + int((split.val_items >= 0).sum())
    assert not np.isin(
        users * split.n_items + items,
        np.flatnonzero(split.test_items >= 0) * split.n_items + split.test_items[split.test_items >= 0],
    ).any()


def test_recency_oversample_repeats_each_users_latest_positives():
    users = np.array([0, 0, 0, 1, 1, 0])
    stamps = np.array([5, 1, 9, 3, 3, 9])  # user 0's latest: index 2 and 5 (tie kept in given order)
    rows = recency_oversample(users, stamps, last=2, repeats=2)
    counts = np.bincount(rows, minlength=len(users))
    assert counts.tolist() == [1, 1, 3, 3, 3, 3]
    assert recency_oversample(users, stamps, last=0, repeats=2).tolist() == list(range(6))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("kind", ["neumf", "mlp", "gmf"])
def test_tower_layers_name_the_modules_linear_layers(kind, dropout):
    """neumf_logits finds the tower's layers by these names: they must be the module's, dropout or not."""
    model = NeuMF(2, 3, ModelConfig(kind=kind, layers=(8, 4, 2), dropout=dropout))
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "output"]
    assert tower_layers(model.config) == linears


@pytest.mark.parametrize("kind", ["neumf", "mlp", "gmf"])
@pytest.mark.parametrize("item_bias", [False, True])
def test_frozen_item_logits_and_score_users_equal_forward(kind, item_bias):
    torch.manual_seed(0)
    model = NeuMF(5, 7, ModelConfig(kind=kind, gmf_dim=4, mlp_dim=3, layers=(8, 4), item_bias=item_bias, init_std=0.5))
    model.eval()
    owner = torch.tensor([0, 4, 4, 2])
    items = torch.tensor([[6, 0, 3], [1, 1, 2], [5, 4, 0], [3, 2, 6]])
    expected = model(owner[:, None].expand_as(items), items)
    rows = model.user_emb.weight.detach().clone().requires_grad_(True)
    got = model.frozen_item_logits()(rows, owner, items)
    assert torch.allclose(got, expected, atol=1e-6) and expected.std() > 0
    got.sum().backward()  # the gradient reaches the user rows, and only the rows the owners use
    assert rows.grad is not None and rows.grad[[1, 3]].abs().max() == 0
    assert rows.grad[[0, 2, 4]].abs().sum(dim=1).min() > 0
    scores = model.score_users(torch.arange(5), chunk=2)
    assert torch.allclose(scores[owner[:, None], items], expected, atol=1e-6)
