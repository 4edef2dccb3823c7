"""fedrec from Python: what `fedrec simulate` and `fedrec baseline` run, with the results as objects.

    from fedrec.simulations.api import simulate
    results = simulate("runs/quick", arms=["popularity", "ease", "federated"], users=50, rounds=5)
    results.arms["federated"].ndcg                 # test NDCG@10, mean over the seeds
    results.to_frame()                              # one row per arm and metric (pandas, if installed)

The data may be a dataset name (ml-100k, ml-1m), a CSV path, loaded ``Interactions`` or a pandas DataFrame
with user, item and timestamp columns (rating optional). Settings are the settings tree: a TOML file, a
``FedrecConfig``, and dotted overrides (``settings={"federation.server.rounds": 10}``). Everything lands in
the run dir ``out`` as the CLI writes it; ``Results.report`` is its report.json. ``model`` trains a model
of one's own (a ``fedrec.common.recommender.Recommender`` subclass, or where it is as ``module:Class`` or
``file.py:Class``) in every arm that takes one (docs/models.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.common.config import FedrecConfig, load_config
from fedrec.common.datasets import Interactions, from_raw, load_dataset
from fedrec.common.errors import DataError
from fedrec.common.model_names import canonical
from fedrec.simulations.arms.registry import central_fitters
from fedrec.simulations.arms.table import (
    DEFAULT_ARMS,
    DEFAULT_CENTRAL_ARMS,
    budget_keys,
    dropout_keys,
    model_keys,
    refuse_fixed_models,
    rounds_keys,
)
from fedrec.simulations.experiment import Experiment, run
from fedrec.simulations.simulate import build_experiment


@dataclass(frozen=True)
class Metric:
    mean: float
    low: float  # 95% interval over the seeds (the mean itself with one seed)
    high: float


@dataclass(frozen=True)
class ArmResults:
    name: str
    metrics: dict[str, Metric]  # metrics.ACC_KEYS (+ LIKED_KEYS with ratings), test split (docs/protocol.md)
    per_seed: list[dict[str, float]]
    info: dict[str, Any]  # what the arm chose and spent (settings, curves, privacy)

    @property
    def ndcg(self) -> float:
        return self.metrics["ndcg@10"].mean

    @property
    def hit_rate(self) -> float:
        return self.metrics["hr@10"].mean


@dataclass(frozen=True)
class Results:
    run_dir: Path
    arms: dict[str, ArmResults]
    report: dict[str, Any]  # report.json, as written

    @classmethod
    def of(cls, run_dir: Path, report: dict[str, Any]) -> Results:
        arms = {
            name: ArmResults(
                name,
                {k: Metric(d["mean"], *d["ci95"]) for k, d in arm["accuracy_ci95"].items()},
                arm["accuracy_seeds"],
                {**arm.get("info", {}), **({"privacy": arm["privacy"]} if "privacy" in arm else {})},
            )
            for name, arm in report["arms"].items()
        }
        return cls(Path(run_dir), arms, report)

    def rows(self) -> list[dict[str, Any]]:
        """One row per arm and metric: arm, metric, mean, low, high."""
        return [
            {"arm": arm.name, "metric": key, "mean": m.mean, "low": m.low, "high": m.high}
            for arm in self.arms.values()
            for key, m in arm.metrics.items()
        ]

    def to_frame(self) -> Any:
        """``rows()`` as a pandas DataFrame (pandas is not a dependency of fedrec: install it to use this)."""
        try:
            import pandas as pd
        except ImportError:
            raise DataError(
                "Results.to_frame needs pandas (pip install pandas); Results.rows() has the same table"
            ) from None
        return pd.DataFrame(self.rows())


def interactions(
    data: str | Path | Interactions | Any, data_dir: str | None = None, users: int | None = None
) -> Interactions:
    """A dataset name or CSV path, ``Interactions`` as they are, or a DataFrame with user, item and
    timestamp columns (rating optional); ``users`` keeps the first that many."""
    if isinstance(data, Interactions):
        loaded = data
    elif isinstance(data, (str, Path)):
        return load_dataset(str(data), data_dir, users)
    elif hasattr(data, "columns"):
        missing = [c for c in ("user", "item", "timestamp") if c not in data.columns]
        if missing:
            raise DataError(f"DataFrame: missing column(s) {', '.join(missing)} (user, item, timestamp[, rating])")
        ratings = data["rating"].to_numpy() if "rating" in data.columns else None
        loaded = from_raw(
            "dataframe",
            data["user"].to_numpy(),
            data["item"].to_numpy(),
            data["timestamp"].to_numpy(),
            ratings,
        )
    else:
        raise DataError(f"data: a dataset name, a CSV path, Interactions or a DataFrame, not {type(data).__name__}")
    return loaded.subset_users(users) if users else loaded


def model_kind(model: str | type | None) -> str | None:
    """The settings' name of a model: a class becomes ``its/file.py:Class`` (found by every process of the
    run, Ray's workers included), a relative ``file.py:Class`` absolute; a name stays as it is."""
    if model is None:
        return None
    if isinstance(model, type):
        if "<locals>" in model.__qualname__:
            raise DataError(f"model {model.__qualname__}: define the class at the top level of a module")
        return f"{Path(inspect.getfile(model)).resolve()}:{model.__qualname__}"
    return canonical(model)


def settings_of(
    config: FedrecConfig | str | Path | None,
    settings: Mapping[str, Any] | None = None,
    rounds: int | None = None,
    epsilon: float | None = None,
    delta: float | None = None,
    ray_address: str | None = None,
    model: str | type | None = None,
    dropout: float | None = None,
) -> FedrecConfig:
    """The settings tree: a file or tree, then dotted ``settings``, then the shorthands the CLI offers
    (rounds, dropout, epsilon, delta: for every federated or private arm; model: for every arm that takes one)."""
    overrides = {
        **(settings or {}),
        **dict.fromkeys(model_keys(), model_kind(model)),
        **dict.fromkeys(rounds_keys(), rounds),
        **dict.fromkeys(dropout_keys(), dropout),
        **dict.fromkeys(budget_keys("epsilon"), epsilon),
        **dict.fromkeys(budget_keys("delta"), delta),
        "simulation.ray_address": ray_address,
    }
    return load_config(config, overrides)


def simulate(
    out: str | Path,
    data: str | Path | Interactions | Any = "ml-100k",
    *,
    arms: Sequence[str] = DEFAULT_ARMS,
    seeds: Iterable[int] = (0,),
    users: int | None = None,
    config: FedrecConfig | str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
    rounds: int | None = None,
    dropout: float | None = None,
    epsilon: float | None = None,
    delta: float | None = None,
    sweep: Iterable[float] = (),
    ray_address: str | None = None,
    data_dir: str | None = None,
    retention: bool = True,
    show: bool = True,
    model: str | type | None = None,
) -> Results:
    """Every arm of ``arms`` (federated ones through Flower's simulation engine) on the data, into ``out``."""
    if model is not None:
        refuse_fixed_models(arms)
    cfg = settings_of(config, settings, rounds, epsilon, delta, ray_address, model, dropout)
    source = str(data) if isinstance(data, (str, Path)) else interactions(data)  # a name loads after the checks
    exp = build_experiment(
        cfg, list(arms), source, Path(out), list(seeds), data_dir, users, list(sweep), show, retention
    )
    return Results.of(Path(out), run(exp))


def baseline(
    out: str | Path,
    data: str | Path | Interactions | Any = "ml-100k",
    *,
    arms: Sequence[str] = DEFAULT_CENTRAL_ARMS,
    seeds: Iterable[int] = (0,),
    users: int | None = None,
    config: FedrecConfig | str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
    data_dir: str | None = None,
    retention: bool = True,
    show: bool = True,
    model: str | type | None = None,
) -> Results:
    """The centralized arms only (no Flower, no Ray), into ``out``."""
    if model is not None:
        refuse_fixed_models(arms)
    cfg = settings_of(config, settings, model=model)
    fitters = central_fitters(list(arms), cfg, show=show)  # an unknown arm is refused before the data loads
    loaded = interactions(data, data_dir, users)
    exp = Experiment(
        dataset=loaded.name,
        out=Path(out),
        fitters=fitters,
        seeds=list(seeds),
        data_dir=data_dir,
        users=users,
        config=cfg.to_dict(),
        show=show,
        retention=retention,
        data=loaded,
    )
    return Results.of(Path(out), run(exp))
