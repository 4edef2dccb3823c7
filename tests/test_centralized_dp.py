"""centralized_dp: Opacus DP-SGD on the pooled split spends no more than its budget and really adds noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedrec.common.config import load_config
from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.centralized_dp import DPRecipe, _groups, fit_centralized_dp, train_dp
from fedrec.simulations.arms.registry import central_fitters

TINY = DPRecipe(
    model=ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8,), init_std=0.1),
    epochs=3,
    batch_size=32,
    embedding_lr=5.0,
    feature_init=False,
    lr=0.5,
    include_validation=False,
)


@pytest.fixture
def split(tiny):
    return temporal_split(tiny, 0)


def _train(split, recipe, noise_seed=None):
    """The trained NeuMF and the privacy spent."""
    return train_dp(split.n_users, split.n_items, split.train_users, split.train_items, recipe, 0, noise_seed)


def test_arm_trains_within_budget(split):
    result = fit_centralized_dp(split, 0, dataclasses.replace(TINY, serving_refit_epochs=1), show=False)
    privacy = result.info["privacy"]
    assert result.name == "centralized_dp"
    assert result.scores.shape == (split.n_users, split.n_items) and np.isfinite(result.scores).all()
    assert 0.5 * TINY.epsilon < privacy["epsilon"] <= TINY.epsilon + 1e-9
    assert privacy["noise_multiplier"] > 0 and privacy["steps"] == TINY.epochs * round(1 / privacy["sample_rate"])
    assert set(privacy) == {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "unit"}


def test_noise_is_applied(split):
    a, _ = _train(split, TINY, noise_seed=1)
    b, _ = _train(split, TINY, noise_seed=1)
    c, _ = _train(split, TINY, noise_seed=2)
    assert torch.equal(a.item_emb.weight, b.item_emb.weight)  # seeded: same noise, same model
    assert not torch.allclose(a.item_emb.weight, c.item_emb.weight, atol=1e-4)
    # Without noise (clipping only) two noise seeds give the same model: the difference above is the noise.
    clip_only = dataclasses.replace(TINY, epsilon=float("inf"))
    assert torch.equal(_train(split, clip_only, 1)[0].item_emb.weight, _train(split, clip_only, 2)[0].item_emb.weight)


def test_output_bias_is_frozen_and_training_moves_the_rest(split):
    torch.manual_seed(0)
    model, _ = _train(split, TINY)
    from fedrec.common.model import NeuMF

    torch.manual_seed(0)
    init = NeuMF(split.n_users, split.n_items, TINY.model)
    assert torch.equal(model.output.bias, init.output.bias)
    assert not torch.allclose(model.item_emb.weight, init.item_emb.weight)


def test_negatives_are_uniform_over_the_whole_catalogue():
    """A record's negatives may hit a positive (kept as label noise): they depend on the record alone."""
    users, items = torch.zeros(2000, dtype=torch.long), torch.zeros(2000, dtype=torch.long)
    u, i, y = _groups(users, items, 5, 3, torch.Generator().manual_seed(0))
    assert u.shape == i.shape == y.shape == (2000, 4)
    assert set(i[:, 1:].flatten().tolist()) == set(range(5))  # item 0, the positive, is drawn too
    assert torch.equal(y[:, 0], torch.ones(2000)) and not y[:, 1:].any()


def test_registry_uses_the_federated_budget(split):
    config = load_config(None, {"federation.privacy.epsilon": 2.0, "federation.privacy.delta": 1e-6})
    fitters = central_fitters(["centralized_dp"], config, show=False)
    recipe = fitters["centralized_dp"].keywords["recipe"]
    assert isinstance(recipe, DPRecipe) and (recipe.epsilon, recipe.delta) == (2.0, 1e-6)
    assert all(
        getattr(recipe, f.name) == getattr(config.centralized_dp, f.name)
        for f in dataclasses.fields(config.centralized_dp)
    )


def test_public_features_must_match_the_split(split):
    with pytest.raises(FedrecError, match="feature_init"):
        fit_centralized_dp(split, 0, dataclasses.replace(TINY, feature_init=True), show=False)


def test_bad_recipe_is_one_line_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[centralized_dp]\noptimizer = "rmsprop"\n')
    with pytest.raises(FedrecError, match=r"bad.toml: centralized_dp.optimizer: must be one of sgd, adam"):
        load_config(path)


def test_prior_release_is_charged_to_the_budget():
    from fedrec.common.privacy import noise_for_budget
    from fedrec.simulations.arms.centralized_dp import composed_noise, history_epsilon

    with_prior = DPRecipe(count_sigma=3.0)
    sigma = composed_noise(with_prior, 0.05, 200)
    assert sigma > noise_for_budget(8.0, 1e-5, 0.05, 200)  # the histogram takes part of epsilon
    assert history_epsilon([(3.0, 1.0, 1), (sigma, 0.05, 200)], 1e-5) <= 8.0 + 1e-9
    with pytest.raises(FedrecError, match="count_sigma"):
        composed_noise(DPRecipe(count_sigma=0.1), 0.05, 200)


def test_public_item_features(ml100k_dir):
    from fedrec.common.datasets import load_dataset
    from fedrec.common.item_features import ml100k_item_features

    data = load_dataset("ml-100k", ml100k_dir)
    features = ml100k_item_features(data.item_ids, ml100k_dir)
    assert features.shape[0] == data.n_items and (features.sum(axis=1) >= 1).all()


def test_rows_below_the_dp_count_keep_their_init(split):
    from fedrec.common.model import NeuMF

    everything_rare = dataclasses.replace(TINY, min_count=1e9)
    model, _ = _train(split, everything_rare)
    torch.manual_seed(0)
    init = NeuMF(split.n_users, split.n_items, TINY.model)
    assert torch.equal(model.item_emb.weight, init.item_emb.weight)
    assert not torch.equal(model.user_emb.weight, init.user_emb.weight)
    with pytest.raises(FedrecError, match="min_count"):
        _train(split, dataclasses.replace(everything_rare, popularity_prior=False))
