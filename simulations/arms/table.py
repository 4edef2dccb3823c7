"""Every arm of the harness, named once, with what it is: its privacy mechanism, the settings it reads,
its fitter, and where it takes part (the default run, --sweep, the canary audit, the background process).

`fedrec simulate` and `fedrec baseline` bind arms from this table (``registry.py``), `--sweep` and the
audit choose their arms from it, and the CLI takes its `--arms` choices, its help and its errors from it.
docs/simulate.md's "Arms" section lists it (a test holds the two equal). This module imports nothing
heavy, so the CLI can show its help without importing torch or Flower.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedrec.common.errors import FedrecError


@dataclass(frozen=True)
class Arm:
    name: str
    mechanism: str  # a mechanism of fedrec.common.config (none, local, distributed, user); the harness sets it
    unit: str  # what one budget protects ("" without DP), as docs/simulate.md's table states it
    settings: str  # the branch of FedrecConfig the arm reads ("" = none)
    # "<module of fedrec.simulations.arms>:<binder>": the binder turns an ArmBinding into (split, seed) -> ArmResult
    fitter: str
    budget: str = ""  # the PrivacyConfig (dotted path in FedrecConfig) whose epsilon and delta the arm runs at
    federated: bool = False  # trained through Flower's simulation engine: its settings branch is a FederationConfig
    sweeps: bool = False  # --sweep repeats it at each extra budget
    audit: bool = False  # the canary audit can retrain it (fedrec audit)
    background: bool = False  # fitted in a second process beside the federated arms (simulation.background_central)
    default: bool = False  # in the default `fedrec simulate`
    # The ModelConfig (dotted path) of an arm that trains any model of the contract (common/recommender.py):
    # what --model sets. An arm with settings and none here trains NeuMF's own layout only.
    model: str = ""
    trust: str = ""  # whom the guarantee trusts, when not its mechanism's (``Mechanism.trust``)

    @property
    def private(self) -> bool:
        return bool(self.budget)


# In the order the report's headline, --sweep and the canary audit take them (and docs/simulate.md lists them).
ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("random", "none", "", "", "simple:bind_random", default=True),
        Arm("popularity", "none", "", "", "simple:bind_popularity", default=True),
        Arm("ease", "none", "", "", "simple:bind_ease", default=True),
        Arm("itemknn", "none", "", "", "itemknn:bind_itemknn"),
        Arm("bpr", "none", "", "", "bpr:bind_bpr"),
        Arm("multivae", "none", "", "", "multivae:bind_multivae"),
        Arm(
            "centralized",
            "none",
            "",
            "central",
            "centralized:bind",
            background=True,
            default=True,
            model="central.model",
        ),
        Arm(
            "federated",
            "none",
            "",
            "federation",
            "federated:bind",
            federated=True,
            default=True,
            model="federation.device.model",
        ),
        # the product's private arm: DP-SGD with the noise shared under secure aggregation, its own settings
        Arm(
            "federated_ddp",
            "distributed",
            "record, over the federation",
            "federated_ddp",
            "federated:bind",
            budget="federated_ddp.privacy",
            federated=True,
            sweeps=True,
            audit=True,
            default=True,
        ),
        # every device adds its own noise (trusting no one); below popularity at epsilon 8 (docs/privacy.md)
        Arm(
            "federated_dp",
            "local",
            "record, per device",
            "federation",
            "federated:bind",
            budget="federation.privacy",
            federated=True,
            sweeps=True,
            audit=True,
            model="federation.device.model",
        ),
        Arm(
            "federated_user_dp",
            "user",
            "user (bounds record)",
            "federation",
            "federated:bind",
            budget="federation.privacy",
            federated=True,
            sweeps=True,
            audit=True,
            model="federation.device.model",
        ),
        # Opacus DP-SGD on the pooled split: the local mechanism with the whole split as one device
        Arm(
            "centralized_dp",
            "local",
            "record, pooled",
            "centralized_dp",
            "centralized_dp:bind",
            budget="federation.privacy",
            sweeps=True,
            background=True,
            trust="trusting whoever holds the pooled data",
        ),
    )
}

CENTRAL_ARMS = {name: arm for name, arm in ARMS.items() if not arm.federated}  # what fedrec baseline fits
DEFAULT_ARMS = tuple(a.name for a in ARMS.values() if a.default)
DEFAULT_CENTRAL_ARMS = tuple(name for name in DEFAULT_ARMS if name in CENTRAL_ARMS)  # what `fedrec baseline` fits
PRIVATE_ARMS = tuple(a.name for a in ARMS.values() if a.private)
DEFAULT_PRIVATE_ARM = next(name for name in DEFAULT_ARMS if ARMS[name].private)  # the product's private arm
AUDITED_ARMS = tuple(a.name for a in ARMS.values() if a.audit)  # the canary audit retrains the first in a run


def choices(arms: dict[str, Arm] = ARMS) -> str:
    return ", ".join(arms)


def arms_named(names: list[str], among: dict[str, Arm] = ARMS, command: str = "fedrec simulate") -> list[Arm]:
    """The arms of ``names``; one line naming every choice for a name that is not one of ``among``."""
    for name in names:
        if name not in among:
            raise FedrecError(f"--arms: {command} has no arm {name!r}; choose from {choices(among)}")
    return [among[name] for name in names]


def swept(arms: list[Arm]) -> list[Arm]:
    """The arms --sweep repeats: those of the run that sweep, in table order; in a run without one, the
    default run's first arm that sweeps (federated_ddp)."""
    names = {a.name for a in arms}
    return [a for a in ARMS.values() if a.sweeps and a.name in names] or [
        next(a for a in ARMS.values() if a.sweeps and a.default)
    ]


def sweep_arm_name(arm: str, epsilon: float) -> str:
    return f"{arm}_eps{epsilon:g}"


def rounds_keys() -> list[str]:
    """What --rounds sets: the rounds of every federated arm's settings branch."""
    return _unique(f"{a.settings}.server.rounds" for a in ARMS.values() if a.federated)


def dropout_keys() -> list[str]:
    """What --dropout sets: the simulated fleet's dropout in every federated arm's settings branch."""
    return _unique(f"{a.settings}.device.fleet.dropout" for a in ARMS.values() if a.federated)


def model_keys() -> list[str]:
    """What --model sets: the model kind of every arm that trains any model of the contract."""
    return _unique(f"{a.model}.kind" for a in ARMS.values() if a.model)


def refuse_fixed_models(names: Iterable[str]) -> None:
    """--model with an arm that trains NeuMF's own layout only (it would silently ignore the model)."""
    for name in names:
        arm = ARMS.get(name)
        if arm is not None and arm.settings and not arm.model:
            raise FedrecError(f"--model: arm {name} trains NeuMF's own layout only; leave it out of --arms")


def budget_keys(leaf: str) -> list[str]:
    """What --epsilon (leaf ``epsilon``) and --delta (``delta``) set: that field of every private arm's budget."""
    return _unique(f"{a.budget}.{leaf}" for a in ARMS.values() if a.private)


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))
