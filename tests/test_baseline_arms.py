"""ItemKNN, BPR-MF and Mult-VAE: they learn the structure of a clustered log that popularity cannot see, choose their settings on validation alone
(the test items cannot change what they fit), and run as `fedrec baseline` arms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from synthetic_data import clustered_split

from fedrec.common.metrics import evaluate_scores
from fedrec.simulations.arms.bpr import BprSetting, fit_bpr, negatives, train_keys
from fedrec.simulations.arms.itemknn import cosine, fit_itemknn, keep_nearest
from fedrec.simulations.arms.multivae import VaeSetting, fit_multivae
from fedrec.simulations.arms.simple import fit_popularity

SMALL_BPR = (BprSetting(dim=8, l2=1e-4, lr=2e-2, epochs=15, patience=3, batch_size=64),)
SMALL_VAE = (VaeSetting(hidden=32, latent=8, anneal_steps=200, lr=1e-2, epochs=30, patience=5, batch_size=16),)
FITS = {
    "itemknn": lambda split: fit_itemknn(split, 0, neighbours=(5, 20)),
    "bpr": lambda split: fit_bpr(split, 0, grid=SMALL_BPR),
    "multivae": lambda split: fit_multivae(split, 0, grid=SMALL_VAE),
}


@pytest.fixture(scope="module")
def split():
    return clustered_split()


def _fit(name, split):
    return FITS[name](split)


@pytest.mark.parametrize("name", list(FITS))
def test_it_learns_what_popularity_cannot_see(split, name):
    hit = evaluate_scores(_fit(name, split).scores, split, "test", 0)["hr@10"]
    assert hit > evaluate_scores(fit_popularity(split, 0).scores, split, "test", 0)["hr@10"] + 0.2


@pytest.mark.parametrize("name", list(FITS))
def test_the_test_items_do_not_change_the_fit(split, name):
    shuffled = np.random.default_rng(9).permutation(split.test_items)
    other = dataclasses.replace(split, test_items=shuffled)
    assert np.array_equal(_fit(name, split).scores, _fit(name, other).scores)


def test_negatives_never_hit_a_train_interaction(split):
    users = np.repeat(np.arange(split.n_users), 50)
    items = negatives(split, users, np.random.default_rng(0), train_keys(split))
    train = set(zip(split.train_users.tolist(), split.train_items.tolist()))
    assert not any((u, i) in train for u, i in zip(users.tolist(), items.tolist()))


def test_each_item_keeps_its_k_nearest(split):
    x = split.train_matrix().toarray().astype(np.float32)
    sim = cosine(x.T @ x, 0.0)
    kept = keep_nearest(sim, 3)
    assert np.all((kept > 0).sum(axis=0) <= 3) and np.allclose(np.diag(sim), 0.0)
    j = int(np.argmax(sim.sum(axis=0)))
    assert set(np.flatnonzero(kept[:, j])) == set(np.argsort(-sim[:, j])[:3])
