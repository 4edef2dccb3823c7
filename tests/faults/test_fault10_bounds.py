"""Issue 26, cases A, B, E: settings and sizes with a physical meaning are bounded where they are read, and an
input that is not what the command expects is refused in one line, before any work and without a traceback."""

from __future__ import annotations

import math
import time

import pytest
from conftest import assert_one_line_error

from fedrec.common import memory
from fedrec.common.config import PrivacyConfig, load_config
from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig, NeuMF, check_tables_fit
from fedrec.common.settings import MAX_COUNT, MAX_NEGATIVES, MAX_WIDTH
from fedrec.simulations.synth.generate import check_sizes, peak_bytes


def _config(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "table, line, fragments",
    [
        ("federation.privacy", "epsilon = inf", ("federation.privacy.epsilon", "finite")),
        ("federation.privacy", "delta = inf", ("federation.privacy.delta", "finite")),
        ("federation.privacy", "epsilon = -inf", ("federation.privacy.epsilon", "finite")),
        ("federation.server", "rounds = 99999999999999999999", ("federation.server.rounds", f"<= {MAX_COUNT}")),
        ("central.model", "layers = []", ("central.model.layers", "at least one hidden layer")),
        ("central.model", "gmf_dim = 100000000", ("central.model.gmf_dim", f"<= {MAX_WIDTH}")),
        ("central.model", "layers = [64, 100000]", ("central.model.layers", f"[1, {MAX_WIDTH}]")),
        ("central.train", "negatives = 1000000", ("central.train.negatives", f"<= {MAX_NEGATIVES}")),
    ],
)
def test_config_out_of_bounds_is_one_line(tmp_path, cli, table, line, fragments):
    path = _config(tmp_path, f"[{table}]\n{line}\n")
    result = cli("config", "show", str(path))
    assert result.code == 1
    assert_one_line_error(result, str(path), *fragments)


COUNTS = [
    "central.train.epochs",
    "central.train.patience",
    "central.train.recent_repeats",
    "centralized_dp.epochs",
    "centralized_dp.serving_refit_epochs",
    "federation.server.rounds",
    "federation.server.eval_every",
    "federation.server.strategy.min_nodes",
    "federation.device.training.epochs",
    "federation.device.training.steps_per_epoch",
    "federation.device.serving.refit_steps",
    "federation.device.shared_noise.steps",
    "simulation.nodes",
]


@pytest.mark.parametrize("key", COUNTS)
def test_every_count_has_an_upper_bound(key):
    with pytest.raises(FedrecError, match=rf"command line: {key}: must be <= \d+"):
        load_config(None, {key: 10**20})


@pytest.mark.parametrize("key", ["federation.privacy.epsilon", "federation.privacy.delta", "centralized_dp.lr"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_are_refused_wherever_read(key, value):
    with pytest.raises(FedrecError, match=rf"command line: {key}: must be a finite number"):
        load_config(None, {key: value})


def test_privacy_refuses_an_infinite_epsilon_built_in_code():
    with pytest.raises(ValueError, match="finite"):
        PrivacyConfig(epsilon=math.inf)


def test_defaults_are_within_the_bounds():
    cfg = load_config()
    assert cfg.federation.server.rounds == 30 and cfg.federation.privacy.epsilon == 8.0


def test_sweep_of_an_infinite_budget_refused_before_the_data_loads(tmp_path, cli):
    result = cli("simulate", "--out", str(tmp_path / "run"), "--sweep", "1,inf", "--dataset", "/nonexistent.csv")
    assert_one_line_error(result, "--sweep", "finite")
    assert not (tmp_path / "run").exists()


def test_embedding_tables_too_large_are_refused_before_allocation(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)
    t0 = time.perf_counter()
    with pytest.raises(FedrecError, match=r"a model of 1000 users x 100000000 items x 128 dimensions needs about"):
        NeuMF(1000, 100_000_000, ModelConfig())
    assert time.perf_counter() - t0 < 1.0
    check_tables_fit(943, 1682, ModelConfig())  # ML-100K fits anywhere


def test_synth_population_too_large_is_refused_at_once(cli, tmp_path):
    out = tmp_path / "s.csv"
    # a source that cannot load: the refusal comes before the fit's first step, or it would name the source
    result = cli("data", "synth", "--users", "1000000000", "--out", str(out), "--source", "/nonexistent/source.csv")
    assert result.code == 1
    assert_one_line_error(result, "1000000000 users", "--users", "needs about", "available")
    assert not out.exists()


def test_synth_memory_estimate(monkeypatch):
    assert peak_bytes(943, 1682) < 2**30  # the default population stays small
    monkeypatch.setattr(memory, "available_bytes", lambda: peak_bytes(943, 1682) - 1)
    with pytest.raises(FedrecError, match="943 users x 1682 items"):
        check_sizes(943, 1682)


def test_store_inspect_on_a_directory(tmp_path, cli):
    result = cli("store", "inspect", str(tmp_path))
    assert result.code == 1
    assert_one_line_error(result, f"{tmp_path}: is a directory", ".db")
