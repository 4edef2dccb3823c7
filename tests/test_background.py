"""Centralized arms fitted in a background process (simulations/background.py) give the foreground's fits."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from synthetic_data import clustered_split

from fedrec.common.config import DEFAULT_CENTRAL, load_config
from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig
from fedrec.simulations.arms.centralized import fit_centralized
from fedrec.simulations.arms.simple import fit_popularity
from fedrec.simulations.background import BackgroundFits
from fedrec.simulations.experiment import Experiment, run
from fedrec.simulations.simulate import build_experiment

SMALL = replace(
    DEFAULT_CENTRAL,
    model=ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8, 4)),
    train=replace(DEFAULT_CENTRAL.train, epochs=3, batch_size=64, refit=True),
)


def failing_fit(split, seed):
    raise FedrecError("centralized: the background fit failed")


def slow_fit(split, seed):
    time.sleep(60)


def experiment(tiny, out: Path, background: frozenset[str], fitters: dict) -> Experiment:
    return Experiment(
        "synthetic", out, fitters, seeds=[0, 1], show=False, retention=False, data=tiny, background=background
    )


def test_a_background_fit_equals_the_foreground_one(tmp_path, tiny):
    fitters = {"popularity": fit_popularity, "centralized": partial(fit_centralized, config=SMALL, show=False)}
    here = run(experiment(tiny, tmp_path / "here", frozenset(), fitters))
    there = run(experiment(tiny, tmp_path / "there", frozenset({"centralized"}), fitters))
    assert list(there["arms"]) == ["popularity", "centralized"]  # the report keeps the arms' order
    for seed_file in ("scores/centralized.npy", "scores/seed_1/centralized.npy"):
        a, b = np.load(tmp_path / "here" / seed_file), np.load(tmp_path / "there" / seed_file)
        assert np.array_equal(a, b) and a.std() > 0
    assert here["arms"]["centralized"]["accuracy_seeds"] == there["arms"]["centralized"]["accuracy_seeds"]
    keep = ("best_epoch", "val_ndcg@10", "curve")
    assert {k: here["arms"]["centralized"]["info"][k] for k in keep} == {
        k: there["arms"]["centralized"]["info"][k] for k in keep
    }


def test_a_failing_background_fit_fails_the_run_with_its_message(tmp_path, tiny):
    with pytest.raises(FedrecError, match="the background fit failed"):
        run(experiment(tiny, tmp_path / "run", frozenset({"centralized"}), {"centralized": failing_fit}))


def test_a_failing_foreground_arm_ends_the_background_fit_at_once(tmp_path, tiny):
    fitters = {"centralized": slow_fit, "federated": failing_fit}
    t0 = time.perf_counter()
    with pytest.raises(FedrecError):
        run(experiment(tiny, tmp_path / "run", frozenset({"centralized"}), fitters))
    assert time.perf_counter() - t0 < 30  # the 60 s background fit was ended, not waited for


def test_simulate_fits_the_centralized_arms_beside_the_federated_ones(tmp_path, tiny):
    csv = Path(tmp_path / "tiny.csv")
    csv.write_text(
        "user,item,timestamp,rating\n"
        + "".join(f"{u},{i},{t},4\n" for u, i, t in zip(tiny.users, tiny.items, tiny.timestamps))
    )
    arms = ["popularity", "centralized", "centralized_dp", "federated"]
    build = partial(build_experiment, arms=arms, dataset=str(csv), seeds=[0], data_dir=None, users=None, show=False)
    exp = build(load_config(), out=tmp_path / "a", sweep=[2.0])
    assert exp.background == {"centralized", "centralized_dp", "centralized_dp_eps2"}
    off = load_config(overrides={"simulation.background_central": False})
    assert build(off, out=tmp_path / "b", sweep=[]).background == frozenset()
    central_only = build_experiment(
        load_config(), ["centralized"], str(csv), tmp_path / "c", [0], None, None, [], show=False
    )
    assert central_only.background == frozenset()  # nothing to run beside


def test_a_background_fit_shows_its_progress_through_the_harness(capsys):
    with BackgroundFits() as background:
        job = background.submit(partial(fit_centralized, config=SMALL, show=True), clustered_split(), 0)
        job.get(timeout=120)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # the fit and its refit on train + validation, each from its first step to its last, epoch by epoch
    assert [line.split("  ")[0] for line in lines] == ["centralized neumf"] * 4, lines
    assert lines[0].startswith("centralized neumf  0/3") and "val NDCG@10" in lines[1] and " 3/3 " in lines[1]
