"""The one config format: TOML with one table per concern, every key validated against a dataclass.

```toml
[model]        # common.model.ModelConfig (centralized NeuMF)
[federated_model]  # common.model.ModelConfig for the federated arms
[central]      # common.training.TrainConfig for the centralized NeuMF arm
[federated]    # FederatedConfig
```
Unknown tables or keys are errors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig
from fedrec.common.training import TrainConfig


@dataclass(frozen=True)
class FederatedConfig:
    """Federation and device-side settings; `fedrec simulate` maps them onto the Flower run config."""

    rounds: int = 30
    fraction_train: float = 0.25  # share of devices that train in a round (each flips a seeded coin)
    local_epochs: int = 1
    steps_per_epoch: int = 8  # DP-SGD sample rate = 1 / steps_per_epoch, the same for every device
    lr: float = 0.01
    local_optimizer: str = "adam"  # inside the one DP optimizer (Opacus wraps it)
    negatives: int = 4
    personalize_steps: int = 20  # on-device refit of the serving user row against the final model
    personalize_lr: float = 0.01
    strategy: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    epsilon: float | None = 8.0  # budget for federated_dp; None = use noise_multiplier as given
    delta: float = 1e-5
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    nodes: int = 2  # simulated SuperNodes (worker processes), each serving a share of the fleet
    eval_every: int = 10  # on-device validation every N rounds (and after the last)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Chosen by validation NDCG@10 in bench/neumf_search.py (docs/neumf-search.md), then refit on train+validation.
DEFAULT_CENTRAL = TrainConfig(epochs=40, batch_size=1024, lr=3e-3, negatives=8, patience=5, emb_l2=1e-2,
                              recent_last=5, recent_repeats=2, refit=True)


# Federated rounds pay for every parameter on every device (DP noise makes each update dense), so the
# federated arms default to a smaller NeuMF than the centralized arm; set [federated_model] to compare
# like with like.
FEDERATED_MODEL = ModelConfig(gmf_dim=32, mlp_dim=32, layers=(64, 32, 16))


@dataclass(frozen=True)
class FedrecConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    federated_model: ModelConfig = FEDERATED_MODEL
    central: TrainConfig = DEFAULT_CENTRAL
    federated: FederatedConfig = field(default_factory=FederatedConfig)

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "central": self.central.to_dict(), "federated": self.federated.to_dict(),
                "federated_model": self.federated_model.to_dict()}


def _build(cls: type, table: dict[str, Any], where: str, base: Any = None) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise FedrecError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values = dataclasses.asdict(base) if base is not None else {}
    for key, value in table.items():
        if key == "layers":
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise FedrecError(f"{where}: {exc}") from None


def load_config(path: str | Path | None = None, overrides: dict[str, dict] | None = None) -> FedrecConfig:
    """Defaults, then the TOML file, then command-line overrides (one dict per table)."""
    raw: dict[str, dict] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FedrecError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise FedrecError(f"{path}: invalid TOML ({exc})") from None
    for table, values in (overrides or {}).items():
        raw.setdefault(table, {}).update({k: v for k, v in values.items() if v is not None})
    known = {"model": ModelConfig, "central": TrainConfig, "federated": FederatedConfig, "federated_model": ModelConfig}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise FedrecError(f"{source}: unknown table(s) [{'], ['.join(unknown)}]; known: {', '.join(known)}")
    defaults = FedrecConfig()
    return FedrecConfig(
        model=_build(ModelConfig, raw.get("model", {}), f"{source} [model]", defaults.model),
        federated_model=_build(ModelConfig, raw.get("federated_model", {}), f"{source} [federated_model]",
                               defaults.federated_model),
        central=_build(TrainConfig, raw.get("central", {}), f"{source} [central]", defaults.central),
        federated=_build(FederatedConfig, raw.get("federated", {}), f"{source} [federated]", defaults.federated),
    )
