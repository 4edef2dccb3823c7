"""Every fedrec setting, defined once: a tree of frozen dataclasses.

Each other form is derived from this tree by ``fedrec.common.settings``: the TOML file (``--config``,
tables named after the tree's branches: ``[central.model]``, ``[federation.device.training]``, ...),
the Flower run config (flat dotted keys, pyproject's ``[tool.flwr.app.config]`` is
``flatten(FederationConfig())``), the instructions a server sends its devices each round, and the
report's ``meta.config``. Ranges are checked where the field is defined.

    FedrecConfig
    ├── central: CentralConfig          the centralized NeuMF arm
    │   ├── model: ModelConfig
    │   └── train: TrainConfig
    ├── centralized_dp: CentralDPConfig the pooled Opacus arm (at federation.privacy's epsilon, delta)
    ├── federation: FederationConfig    = the Flower run config of one federated run
    │   ├── server: ServerConfig        rounds, evaluation, where the run writes
    │   │   ├── strategy: StrategyConfig
    │   │   └── secure_aggregation: SecureAggregation   Flower's SecAgg+ on train replies
    │   ├── privacy: PrivacyConfig      what the operator promises; the server derives DevicePrivacy
    │   └── device: DeviceConfig        sent whole to every device, every round
    │       ├── model: ModelConfig
    │       ├── training: LocalTraining
    │       ├── serving: Serving
    │       └── fleet: Fleet
    ├── federated_ddp: FederationConfig the federated_ddp arm's own federation (the centralized_dp recipe)
    └── simulation: SimulationConfig    how the harness runs Flower's simulation engine
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedrec.common.errors import FedrecError
from fedrec.common.files import read_text
from fedrec.common.mechanisms.registry import NAMES, mechanism_for
from fedrec.common.model import ModelConfig
from fedrec.common.secure_sum import check_shared_noise
from fedrec.common.settings import (
    MAX_BATCH,
    MAX_NEGATIVES,
    MAX_PROCESSES,
    from_flat,
    from_nested,
    require,
    require_count,
    require_finite,
    to_nested,
)
from fedrec.common.training import TrainConfig

OPTIMIZERS = ("sgd", "adam")
STRATEGIES = ("fedavg", "fedavgm", "fedadam")
EVAL_STAGES = ("validation", "test")
EXECUTORS = ("batched", "per_device")


def _fraction(value: float, name: str) -> None:
    require(0.0 < value <= 1.0, name, f"must be in (0, 1], got {value}")


def _positive(value: float, name: str) -> None:
    require(value > 0, name, f"must be > 0, got {value}")


def _one_of(value: str, choices: tuple[str, ...], name: str) -> None:
    require(value in choices, name, f"must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class CentralConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class CentralDPConfig:
    """The centralized_dp arm (NeuMF on the pooled split with Opacus DP-SGD, docs/dp-search.md). It runs at
    federation.privacy's epsilon and delta, so it compares with federated_dp at the same budget.
    The defaults are the validation winner: GMF's dot product with the output layer frozen (every gradient
    lands in the rows), popularity from a DP item histogram, item rows from public features, SGD."""

    model: ModelConfig = ModelConfig(kind="gmf", gmf_dim=32, item_bias=False, init_std=0.1)
    epochs: int = 10
    batch_size: int = 4096
    feature_init: bool = True  # item rows start from an SVD of the public genre/decade features ...
    item_features: str = "ml-100k"  # ... of this dataset (its .item file; the split must hold all its items)
    popularity_prior: bool = True  # model.prior from a DP item histogram's log-odds (Gaussian, composed)
    min_count: float = 0.0  # items whose DP count is below this keep their initial row (needs popularity_prior)
    count_sigma: float = 10.0  # noise std of that histogram (each record adds 1 to one count: L2 sensitivity 1)
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam" (with adam_eps)
    lr: float = 1.0
    embedding_lr: float = (
        100.0  # SGD lr of the user and item tables (0 = lr): a row's mean gradient is ~ its share of records
    )
    item_lr_scale: float = 1.0  # the item table's lr relative to embedding_lr (small: a DP residual on public rows)
    momentum: float = 0.9
    adam_eps: float = 1e-8
    max_grad_norm: float = 0.05
    negatives: int = 8
    # Parameters (name prefixes) kept at their init: output.bias shifts every score alike and cannot change a
    # ranking; freezing "output." as well leaves GMF a plain dot product whose whole gradient sits in the rows.
    frozen: tuple[str, ...] = ("output.",)
    include_validation: bool = True  # train on train+validation (the test-time data, as the centralized refit)
    serving_refit_epochs: int = 3  # joint-DP user-row refit after training (0 = serve the DP user rows)
    serving_refit_lr: float = 0.01
    threads: int = 1

    def __post_init__(self) -> None:
        _one_of(self.optimizer, OPTIMIZERS, "optimizer")
        require(not self.model.custom, "model.kind", "the centralized_dp recipe trains NeuMF's own layout only")
        require_count(self.epochs, "epochs")
        require_count(self.batch_size, "batch_size", high=MAX_BATCH)
        require_count(self.negatives, "negatives", high=MAX_NEGATIVES)
        require_count(self.serving_refit_epochs, "serving_refit_epochs", low=0)
        require_count(self.threads, "threads", low=0, high=MAX_PROCESSES)
        for name in ("lr", "max_grad_norm"):
            _positive(getattr(self, name), name)
        for name in ("count_sigma", "embedding_lr", "item_lr_scale", "momentum", "min_count"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class LocalTraining:
    """One device's training in a round; the same recipe on every device, so every device that trains
    the same rounds has the same accountant history.

    ``emb_l2`` and the recency weighting are the centralized recipe's (``TrainConfig``) and apply without DP
    only: repeating a record multiplies what one record moves, and a second embedding lookup defeats
    per-example clipping, so a private device trains on each record once with the loss alone."""

    epochs: int = 1
    steps_per_epoch: int = 8  # the DP-SGD sample rate is 1 / steps_per_epoch
    lr: float = 0.01
    optimizer: str = "adam"  # inside the one DP optimizer (Opacus wraps it)
    negatives: int = 4
    emb_l2: float = 0.0  # L2 on the rows each example uses (no DP)
    recent_last: int = 0  # the device's most recent train positives repeated each round ... (no DP)
    recent_repeats: int = 0  # ... this many extra times

    def __post_init__(self) -> None:
        require_count(self.epochs, "epochs")
        require_count(self.steps_per_epoch, "steps_per_epoch")
        _positive(self.lr, "lr")
        _one_of(self.optimizer, OPTIMIZERS, "optimizer")
        require_count(self.negatives, "negatives", high=MAX_NEGATIVES)
        require(self.emb_l2 >= 0, "emb_l2", f"must be >= 0, got {self.emb_l2}")
        for name in ("recent_last", "recent_repeats"):
            require_count(getattr(self, name), name, low=0)

    @property
    def sample_rate(self) -> float:
        return 1.0 / self.steps_per_epoch

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass(frozen=True)
class Serving:
    """The on-device refit of the serving user row against the final model: never uploaded, never fed
    into a training round, so it needs no DP."""

    refit_steps: int = 20  # checked on validation with bench/serving_refit.py (docs/simulate.md)
    refit_lr: float = 0.01

    def __post_init__(self) -> None:
        require_count(self.refit_steps, "refit_steps", low=0)
        _positive(self.refit_lr, "refit_lr")


@dataclass(frozen=True)
class Fleet:
    """Where a simulated node finds its share of a provisioned fleet (empty for a one-device SuperNode,
    whose node config names its own store), and the fleet's public totals for a server that holds no
    manifest (deployment): the shared-noise mechanisms need them; 0 = read them from the manifest."""

    stores_dir: str = ""
    master_key_file: str = ""
    devices: int = 0  # devices in the fleet
    train_records: int = 0  # their train records in all (public, as the dataset size is to Opacus)
    # A simulated fleet only (a deployed device never reads it): the share of each node's devices that miss
    # every round, chosen afresh each round (seeded), as phones go offline (fedrec simulate --dropout)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(self.devices >= 0, "devices", f"must be >= 0, got {self.devices}")
        require(self.train_records >= 0, "train_records", f"must be >= 0, got {self.train_records}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class SharedNoise:
    """The ``distributed`` mechanism: one round is one DP-SGD step of the pooled recipe (docs/privacy.md).
    Every device Poisson-samples its records at ``record_rate``, adds 1/sqrt(min_devices) of the noise to its
    clipped gradient sum, and the server applies SGD with momentum to the sum, divided by the expected batch."""

    record_rate: float = 0.5  # q: each record's Poisson rate per round
    # m_min: each device adds 1/sqrt(m_min) of the noise and a round whose sum holds fewer reporting devices
    # is dropped; 0 = the fleet's manifest less the tolerated dropout (below)
    min_devices: int = 0
    # with min_devices 0: the share of the fleet a round may miss and still be applied, m_min = the rest
    # (rounded up); each share then carries a little more noise than the least, 1/sqrt(1 - tolerance) of it
    dropout_tolerance: float = 0.2
    # f: the fraction of the reporting devices that may collude with the server (hand it their own shares);
    # each share then carries 1/sqrt((1 - f) m_min) of the noise, so the honest devices' alone make sigma C
    tolerated_collusion: float = 0.0
    count_sigma: float = 10.0  # noise std of the round-1 item histogram (the popularity prior); 0 = none
    feature_init: str = "ml-100k"  # item rows start from this dataset's public item features ("" = random)
    table_lr: float = 3000.0  # SGD lr of the user and item rows (a row's mean gradient ~ its share of records)
    # Per-group clipping: the rows are clipped to privacy.max_grad_norm, the tower and output layer to this,
    # apart (flat clipping let the tower take the rows' budget); 0 = they stay at their start (GMF's recipe)
    dense_clip: float = 0.01
    dense_lr: float = 3.0  # SGD lr of the tower and output layer (every record reaches them: no share scaling)
    momentum: float = 0.9
    steps: int = 20  # DP-SGD rounds of the harness's federated_ddp arm (its server.rounds: these + round 1)

    def __post_init__(self) -> None:
        _fraction(self.record_rate, "record_rate")
        require_count(self.min_devices, "min_devices", low=0, high=1 << 31)
        require(
            0.0 <= self.dropout_tolerance < 1.0, "dropout_tolerance", f"must be in [0, 1), got {self.dropout_tolerance}"
        )
        f = self.tolerated_collusion
        require(0.0 <= f < 1.0, "tolerated_collusion", f"must be in [0, 1), got {f}")
        require(self.count_sigma >= 0, "count_sigma", f"must be >= 0, got {self.count_sigma}")
        _positive(self.table_lr, "table_lr")
        require(self.dense_clip >= 0, "dense_clip", f"must be >= 0, got {self.dense_clip}")
        _positive(self.dense_lr, "dense_lr")
        require(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}")
        require_count(self.steps, "steps")

    def share_std(self, std: float) -> float:
        """One device's part of the noise ``std`` the sum must carry: sqrt((1 - f) m_min) honest shares of it
        make ``std`` (m >= m_min devices report, at most a fraction f of them colluding)."""
        return std / ((1.0 - self.tolerated_collusion) * self.min_devices) ** 0.5


@dataclass(frozen=True)
class DeviceConfig:
    model: ModelConfig = ModelConfig(gmf_dim=32, mlp_dim=32, layers=(64, 32, 16))
    training: LocalTraining = field(default_factory=LocalTraining)
    serving: Serving = field(default_factory=Serving)
    fleet: Fleet = field(default_factory=Fleet)
    shared_noise: SharedNoise = field(default_factory=SharedNoise)
    participation: float = 0.25  # each device's own seeded coin per round (Poisson device sampling)
    n_items: int = 0  # catalogue size (public); 0 = read from the fleet's manifest by the server
    seed: int = 0
    state_prefix: str = ""  # device-store state names are prefixed, so arms sharing a store stay apart
    eval_stage: str = "validation"
    # A node serving many devices (a gateway, a simulated fleet) trains its devices and refits their
    # serving rows "batched" (stacked, the same mathematics as Opacus, plain training and the refit per
    # device, tested equal; plain training with emb_l2 stays per device) or "per_device" (one at a time).
    executor: str = "batched"
    # A model of one's own (ModelConfig.custom) always trains and serves per device.
    # Without DP, each item row is averaged over the examples that used it (fedrec.common.item_rows);
    # a private device never sends the per-row counts this needs.
    item_row_average: bool = True

    @property
    def stacked(self) -> bool:
        """Whether a node stacks its devices: when asked, and only for NeuMF (the stacked maths is its own)."""
        return self.executor == "batched" and not self.model.custom

    def __post_init__(self) -> None:
        _fraction(self.participation, "participation")
        _one_of(self.executor, EXECUTORS, "executor")
        require(
            self.executor != "batched" or self.model.dropout == 0,
            "executor",
            "batched cannot train a model with dropout (its masks would differ from Opacus'); use per_device",
        )
        require(self.n_items >= 0, "n_items", f"must be >= 0, got {self.n_items}")
        _one_of(self.eval_stage, EVAL_STAGES, "eval_stage")


@dataclass(frozen=True)
class StrategyConfig:
    """A Flower strategy (flwr.serverapp.strategy) and its server-side optimizer."""

    name: str = "fedavg"
    server_lr: float = 1.0  # FedAvgM's server learning rate, FedAdam's eta
    server_momentum: float = 0.0  # FedAvgM
    tau: float = 1e-3  # FedAdam's adaptivity (Flower's default)
    node_fraction: float = 1.0  # share of SuperNodes asked to train each round (Flower's fraction_train)
    node_fraction_evaluate: float = 1.0
    min_nodes: int = 1

    def __post_init__(self) -> None:
        _one_of(self.name, STRATEGIES, "name")
        _positive(self.server_lr, "server_lr")
        require(0.0 <= self.server_momentum < 1.0, "server_momentum", f"must be in [0, 1), got {self.server_momentum}")
        _positive(self.tau, "tau")
        _fraction(self.node_fraction, "node_fraction")
        _fraction(self.node_fraction_evaluate, "node_fraction_evaluate")
        require_count(self.min_nodes, "min_nodes")


@dataclass(frozen=True)
class SecureAggregation:
    """Flower's SecAgg+ on the train replies (deployment and simulation alike): the server learns only the
    weighted sum of the nodes' updates, and only if at least ``reconstruction_threshold`` nodes are in it.
    Each node sends its update minus the global parameters it received; every coordinate of that delta
    is clipped to [-clipping_range, clipping_range] and stochastically rounded onto ``quantization_range``
    levels (``fedrec.server.secure_aggregation.quantization_bound`` states the error)."""

    enabled: bool = False
    num_shares: int = 0  # key shares per node; 0 = every sampled node (SecAgg), else a neighbourhood (SecAgg+)
    reconstruction_threshold: int = 3  # shares that rebuild a key = the fewest nodes a revealed sum covers
    clipping_range: float = 1.0  # bound on each coordinate of a node's (weight-scaled) update delta
    quantization_range: int = 2**22  # integer levels over [-clipping_range, clipping_range]
    modulus_range: int = 2**32  # masks live modulo this (a power of 2); nodes * quantization_range must stay below
    max_weight: float = 1.0  # the largest node weight (num-examples); 1 = one DP device per node
    timeout: float = 120.0  # seconds each stage waits for replies; a node that misses it has dropped out

    def __post_init__(self) -> None:
        require(self.num_shares == 0 or self.num_shares >= 3, "num_shares", f"must be 0 or >= 3, got {self.num_shares}")
        require(
            self.reconstruction_threshold >= 2,
            "reconstruction_threshold",
            f"must be >= 2, got {self.reconstruction_threshold}",
        )
        require(
            self.num_shares == 0 or self.reconstruction_threshold < self.num_shares,  # Flower's own rule
            "reconstruction_threshold",
            f"must be < num_shares ({self.num_shares}), got {self.reconstruction_threshold}",
        )
        _positive(self.clipping_range, "clipping_range")
        require(self.quantization_range >= 2, "quantization_range", f"must be >= 2, got {self.quantization_range}")
        require(
            self.modulus_range > self.quantization_range and self.modulus_range & (self.modulus_range - 1) == 0,
            "modulus_range",
            f"must be a power of 2 above quantization_range, got {self.modulus_range}",
        )
        _positive(self.max_weight, "max_weight")
        _positive(self.timeout, "timeout")


@dataclass(frozen=True)
class ServerConfig:
    rounds: int = 30
    # On-device validation every N rounds and after the last (private arms: the last only). It never feeds
    # training, so it changes no result; each one costs every device a serving refit.
    eval_every: int = 15
    out_dir: str = ""  # checkpoints, rounds.jsonl, wire.jsonl, the final model
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    secure_aggregation: SecureAggregation = field(default_factory=SecureAggregation)

    def __post_init__(self) -> None:
        require_count(self.rounds, "rounds")
        require_count(self.eval_every, "eval_every")


@dataclass(frozen=True)
class PrivacyConfig:
    """The guarantee the operator promises. For ``local`` every device runs DP-SGD with the noise set so
    that a device training in the planned number of rounds ends at ``epsilon`` (record-level, per device),
    and refuses any round that would take it past ``epsilon``."""

    mechanism: str = "local"
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0  # C of one record's gradient (local, distributed)
    # C of a device's whole round update under ``user`` (DP-FedAvg): the median norm of one device's round
    # update of the federated recipe at initialisation on ML-100K was 4.23 (docs/privacy.md)
    max_update_norm: float = 4.0
    # The noise is planned for the device at this quantile of the rounds a device takes (each device
    # flips its own coin, so that is Binomial(rounds, participation)); 1 = a device in every round.
    # At the median most devices end near epsilon; those that would go past it sit the last rounds out.
    calibration_quantile: float = 0.5

    def __post_init__(self) -> None:
        _one_of(self.mechanism, NAMES, "mechanism")  # the classes of fedrec.common.mechanisms
        _positive(self.epsilon, "epsilon")
        require_finite(self.epsilon, "epsilon")  # an infinite promise is no promise: use mechanism none
        require(0.0 < self.delta < 1.0, "delta", f"must be in (0, 1), got {self.delta}")
        _positive(self.max_grad_norm, "max_grad_norm")
        _positive(self.max_update_norm, "max_update_norm")
        _fraction(self.calibration_quantile, "calibration_quantile")

    @property
    def private(self) -> bool:
        return mechanism_for(self).private


@dataclass(frozen=True)
class FederationConfig:
    """One federated run: the Flower App's run config."""

    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def __post_init__(self) -> None:
        require(
            not (self.server.secure_aggregation.enabled and self.device.item_row_average and not self.privacy.private),
            "device.item_row_average",
            "needs each node's per-row counts, which secure aggregation hides: set it to false",
        )
        mechanism = mechanism_for(self.privacy)
        mechanism.check(self)
        if self.server.secure_aggregation.enabled and mechanism.shared:
            check_shared_noise(self.server.secure_aggregation, self.device.shared_noise.min_devices)


@dataclass(frozen=True)
class SimulationConfig:
    nodes: int = 2  # simulated SuperNodes (worker processes), each serving a share of the fleet
    # The centralized arms (centralized, centralized_dp) fit in a second process while the federated arms
    # run, when the run has both; the same fits either way (simulations/background.py).
    background_central: bool = True
    # An existing Ray cluster's head (GCS) as host:port, or "auto"; empty = a private Ray on this machine.
    # The harness is then a driver on a node of that cluster (docs/simulate.md); Ray Client (ray://) is not.
    ray_address: str = ""

    def __post_init__(self) -> None:
        require_count(self.nodes, "nodes", high=MAX_PROCESSES)
        host, _, port = self.ray_address.rpartition(":")
        require(
            self.ray_address in ("", "auto") or (bool(host) and port.isdigit() and "://" not in host),
            "ray_address",
            f"must be host:port of a Ray head, or auto, got {self.ray_address!r}",
        )


# Chosen by validation NDCG@10 in bench/neumf_search.py (docs/neumf-search.md), then refit on train+validation.
DEFAULT_CENTRAL = CentralConfig(
    train=TrainConfig(
        epochs=40,
        batch_size=1024,
        lr=3e-3,
        negatives=8,
        patience=5,
        emb_l2=1e-2,
        recent_last=5,
        recent_repeats=2,
        refit=True,
    )
)


# The federated_ddp arm: the centralized_dp recipe as a federation (docs/privacy.md). Its model (with the
# round-1 item histogram's popularity prior as the model's fixed prior), negatives and clipping norm are the recipe's;
# every device takes part in every round: one histogram round, then SharedNoise.steps DP-SGD rounds.
_RECIPE = CentralDPConfig()
DEFAULT_FEDERATED_DDP = FederationConfig(
    server=ServerConfig(rounds=1 + SharedNoise().steps),
    privacy=PrivacyConfig(mechanism="distributed", max_grad_norm=_RECIPE.max_grad_norm),
    device=DeviceConfig(
        # NeuMF with its tower (docs/dp-search.md, "The MLP tower under shared noise"); kind = "gmf" with
        # shared_noise.dense_clip = 0 is the GMF recipe
        model=replace(_RECIPE.model, kind="neumf", mlp_dim=_RECIPE.model.gmf_dim, layers=(64, 32, 16), prior=True),
        training=LocalTraining(negatives=_RECIPE.negatives),
        participation=1.0,
    ),
)


@dataclass(frozen=True)
class FedrecConfig:
    central: CentralConfig = DEFAULT_CENTRAL
    centralized_dp: CentralDPConfig = field(default_factory=CentralDPConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    federated_ddp: FederationConfig = DEFAULT_FEDERATED_DDP
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_nested(self)


def load_config(
    path: str | Path | FedrecConfig | None = None, overrides: Mapping[str, Any] | None = None
) -> FedrecConfig:
    """Defaults, then the TOML file (or a tree already built), then overrides (flat dotted keys; None = not
    given)."""
    cfg = FedrecConfig()
    if isinstance(path, FedrecConfig):
        cfg = path
    elif path is not None:
        path = Path(path)
        text = read_text(path, "the config file")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FedrecError(f"{path}: invalid TOML ({exc})") from None
        cfg = from_nested(FedrecConfig, raw, str(path), cfg)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        cfg = from_flat(FedrecConfig, given, "command line", complete=False, base=cfg)
    return cfg


def config_from_report(meta_config: Mapping[str, Any], source: str) -> FedrecConfig:
    """The settings a report was made with (``meta.config`` is ``FedrecConfig.to_dict()``), checked."""
    return from_nested(FedrecConfig, meta_config, source)
