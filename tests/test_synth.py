"""Synthetic populations (issue 12): deterministic, the sizes asked for, ML-100K's statistics, loadable."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fedrec_cli import call_fedrec

from fedrec.common.datasets import Interactions, from_raw, load_csv, load_dataset
from fedrec.common.errors import DataError, FedrecError
from fedrec.simulations.synth.fit import fit_synth
from fedrec.simulations.synth.generate import synthesize, write_csv
from fedrec.simulations.synth.measure import gini, measure, validation_lift
from fedrec.simulations.synth.run import synth_csv


@pytest.fixture(scope="session")
def ml100k(ml100k_dir) -> Interactions:
    return load_dataset("ml-100k", ml100k_dir)


@pytest.fixture(scope="session")
def stats(ml100k):
    return fit_synth(ml100k, calibrate=False)  # calibration generates many samples; the mechanics are the same


def rows(data: Interactions) -> list[tuple]:
    return sorted(
        zip(
            data.user_ids[data.users].tolist(),
            data.item_ids[data.items].tolist(),
            data.timestamps.tolist(),
            data.ratings.tolist(),
        )
    )


def test_same_seed_same_population_other_seed_another(stats):
    a, b, c = (synthesize(stats, 150, 300, seed) for seed in (3, 3, 4))
    assert rows(a) == rows(b)
    assert rows(a) != rows(c)


def test_requested_sizes_and_one_interaction_per_pair(stats):
    data = synthesize(stats, 150, 300, 0)
    assert data.n_users == 150 and data.n_items == 300  # every item reaches some user
    pairs = data.users * data.n_items + data.items
    assert len(np.unique(pairs)) == len(pairs)
    per_user = np.bincount(data.users)
    assert per_user.min() >= 3 and per_user.max() <= int(stats.max_user_share * 300)


def test_statistics_within_tolerance_of_ml100k(stats, ml100k):
    """At 3,000 users the sampling noise of these statistics is below the stated tolerances."""
    source, synth = measure(ml100k, dense_ok=False), measure(synthesize(stats, 3000, 1682, 0), dense_ok=False)
    assert synth.per_user_mean == pytest.approx(source.per_user_mean, rel=0.06)
    assert synth.per_user_median == pytest.approx(source.per_user_median, rel=0.1)
    assert synth.per_user_p90 == pytest.approx(source.per_user_p90, rel=0.1)
    assert synth.item_gini == pytest.approx(source.item_gini, abs=0.03)
    assert synth.single_day_share == pytest.approx(source.single_day_share, abs=0.03)
    for day in ("d1", "d7", "d30"):
        assert getattr(synth, day) == pytest.approx(getattr(source, day), abs=0.03), day
    assert synth.rating_mean == pytest.approx(source.rating_mean, abs=0.05)


def test_rating_levels_keep_their_source_shares(stats):
    data = synthesize(stats, 1000, 1682, 1)
    levels, counts = np.unique(data.ratings, return_counts=True)
    assert levels.tolist() == stats.ratings.levels.tolist()
    assert np.abs(counts / counts.sum() - stats.ratings.shares).max() < 0.02


def test_taste_gives_a_learner_more_than_popularity(stats):
    """With the taste factors (at a strength calibration finds on ML-100K) EASE gains much more over
    popularity at the validation position than with them switched off (where what it still gains comes
    from the time order: the latest items are the less popular ones)."""

    def lift(strength: float) -> float:
        return validation_lift(synthesize(replace(stats, taste=replace(stats.taste, strength=strength)), 600, 800, 0))

    with_taste, flat = lift(2.5), lift(0.0)
    assert with_taste > 1.5 * flat


def test_gini_of_equal_and_concentrated_counts():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.r_[np.zeros(99), 1.0]) == pytest.approx(0.99)


def test_csv_loads_through_the_generic_loader(stats, tmp_path):
    out = tmp_path / "synth.csv"
    total = write_csv(stats, 120, 200, 5, out)
    loaded = load_csv(out)
    assert len(loaded) == total and loaded.n_users == 120 and loaded.n_items == 200
    assert rows(loaded) == rows(synthesize(stats, 120, 200, 5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_users=0), "--users must be at least 1, got 0"),
        (dict(n_items=5), "--items must be at least 10, got 5"),
        (dict(out_name="synth.txt"), "must end in .csv"),
        (dict(out_name="missing/synth.csv"), "directory does not exist"),
    ],
)
def test_bad_arguments_fail_before_the_fit(tmp_path, kwargs, message):
    args = dict(n_users=10, n_items=20, seed=0)
    out = tmp_path / kwargs.pop("out_name", "synth.csv")
    args.update(kwargs)
    with pytest.raises(FedrecError, match=message):
        synth_csv(out, **args, source="no-such-dataset")  # the dataset is never reached


def test_cli_bad_argument_is_one_line(tmp_path, monkeypatch, capsys):
    proc = call_fedrec(monkeypatch, capsys, "data", "synth", "--users", "-3", "--out", str(tmp_path / "s.csv"))
    assert proc.code == 1
    assert proc.stderr.strip() == "error: --users must be at least 1, got -3"


def test_source_without_ratings_is_refused():
    data = from_raw("plain", np.arange(6) % 2, np.arange(6), np.arange(6) * 86_400)
    with pytest.raises(DataError, match="plain: the generator is fitted to ratings"):
        fit_synth(data)
