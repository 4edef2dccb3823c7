"""The privacy mechanisms as classes (fedrec.common.mechanisms): the registry, each mechanism's plan, the
settings each refuses, and that nothing outside the package dispatches on a mechanism's name."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from fedrec.common.config import DeviceConfig, FederationConfig, PrivacyConfig, load_config
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, RoundInfo, resolve_privacy
from fedrec.common.mechanisms import MECHANISMS, DevicePrivacy, Mechanism, ServerStep, Trainer, mechanism_for
from fedrec.common.mechanisms.base import setting
from fedrec.common.model import ModelConfig
from fedrec.common.replies import SHARED_COUNTS

ROOT = Path(__file__).resolve().parents[1]
DEVICE = DeviceConfig()
DDP_MODEL = ModelConfig(kind="gmf", gmf_dim=32, item_bias=False, prior=True, init_std=0.1)
DDP_DEVICE = replace(DEVICE, participation=1.0, model=DDP_MODEL)

# resolve_privacy's output for these inputs before the mechanisms were classes (seed-free, deterministic)
PLANS = {
    "none": (PrivacyConfig(mechanism="none"), DEVICE, 30, 0, 0, DevicePrivacy(0.0, 1.0, 1e-5, 0.0, "none", 0.0)),
    "local": (PrivacyConfig(), DEVICE, 30, 0, 0, DevicePrivacy(0.9722900390625, 1.0, 1e-5, 8.0, "local", 0.0)),
    "distributed": (
        PrivacyConfig(mechanism="distributed"),
        DDP_DEVICE,
        21,
        80_000,
        0,
        DevicePrivacy(1.662109375, 1.0, 1e-5, 8.0, "distributed", 40_000.0),
    ),
    "user": (
        PrivacyConfig(mechanism="user"),
        DEVICE,
        30,
        0,
        943,
        DevicePrivacy(1.20849609375, 4.0, 1e-5, 8.0, "user", 235.75),
    ),
}

# a setting each shared-noise mechanism ignores, set to a value other than its default; none and local
# refuse nothing (a harness configuration under local also sets up the other mechanisms' arms)
IGNORED = {
    "distributed": ("server.strategy.name", "fedavgm"),
    "user": ("server.strategy.name", "fedadam"),
}


def test_the_registry_lists_exactly_the_four_mechanisms_by_their_own_names():
    assert list(MECHANISMS) == ["none", "local", "distributed", "user"]
    for name, cls in MECHANISMS.items():
        assert issubclass(cls, Mechanism) and cls.name == name
        assert isinstance(mechanism_for(PrivacyConfig(mechanism=name)), cls)
    with pytest.raises(FedrecError, match="privacy.mechanism: must be one of none, local, distributed, user"):
        mechanism_for(DevicePrivacy(mechanism="central"))


def test_the_facts_of_each_mechanism():
    private = {name for name, cls in MECHANISMS.items() if cls.private}
    shared = {name for name, cls in MECHANISMS.items() if cls.shared}
    assert private == {"local", "distributed", "user"} and shared == {"distributed", "user"}
    assert [name for name, cls in MECHANISMS.items() if cls.user_level] == ["user"]
    assert {cls.trainer for cls in MECHANISMS.values()} == set(Trainer)
    for cls in MECHANISMS.values():
        assert cls.unit and cls.trusted and cls.server_sees
    assert PrivacyConfig(mechanism="none").private is False and PrivacyConfig().private


def test_the_settings_each_mechanism_names_exist():
    for cls in MECHANISMS.values():
        for key in (*cls.reads, *(ignored.key for ignored in cls.ignores)):
            setting(FederationConfig(), key)  # raises AttributeError on a key the tree does not have


@pytest.mark.parametrize("name", list(PLANS))
def test_each_plan_is_the_noise_resolve_privacy_gave(name):
    privacy, device, rounds, records, devices, expected = PLANS[name]
    plan = mechanism_for(privacy).plan(privacy, device, rounds, records, devices)
    assert plan.noise_multiplier == pytest.approx(expected.noise_multiplier, abs=1e-12)
    assert replace(plan, noise_multiplier=0.0) == replace(expected, noise_multiplier=0.0)
    assert resolve_privacy(privacy, device, rounds, records, devices) == plan


@pytest.mark.parametrize("name", list(IGNORED))
def test_each_mechanism_refuses_a_setting_it_ignores_in_one_line(name, tmp_path):
    key, value = IGNORED[name]
    path = tmp_path / "run.toml"
    path.write_text(f'federation.privacy.mechanism = "{name}"\nfederation.{key} = {json.dumps(value)}\n')
    with pytest.raises(FedrecError) as refused:
        load_config(path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{path}: federation.{key}: ")
    assert f"ignored under privacy.mechanism {name}" in message
    FederationConfig(privacy=PrivacyConfig(mechanism=name))  # every default is accepted


def test_a_harness_configuration_under_local_may_set_every_other_mechanisms_settings():
    every = {"federation.privacy.max_update_norm": 2.0, "federation.device.shared_noise.table_lr": 10.0}
    every |= {"federation.server.strategy.name": "fedadam", "federation.server.strategy.tau": 0.1}
    assert load_config(overrides=every).federation.privacy.mechanism == "local"
    assert MECHANISMS["none"].ignores == () == MECHANISMS["local"].ignores


@pytest.mark.parametrize("name", list(IGNORED))
def test_a_harness_arm_drops_the_settings_its_mechanism_ignores(name):
    """One configuration for arms of every mechanism: each arm's ignored settings go back to their defaults
    before its mechanism is set, so the check passes; the settings it reads are kept."""
    key, value = IGNORED[name]
    shared = load_config(overrides={f"federation.{key}": value, "federation.privacy.epsilon": 4.0}).federation
    mechanism = mechanism_for(PrivacyConfig(mechanism=name))
    arm = replace(mechanism.without_ignored(shared), privacy=replace(shared.privacy, mechanism=name))
    assert arm.privacy.epsilon == 4.0 and arm == replace(FederationConfig(), privacy=arm.privacy)
    with pytest.raises(ValueError, match="ignored under privacy.mechanism"):
        replace(shared, privacy=replace(shared.privacy, mechanism=name))


def test_user_accepts_fedavgm_the_rule_its_server_step_follows():
    strategy = replace(FederationConfig().server.strategy, name="fedavgm", server_lr=0.5, server_momentum=0.9)
    federation = FederationConfig(
        server=replace(FederationConfig().server, strategy=strategy), privacy=PrivacyConfig(mechanism="user")
    )
    assert mechanism_for(federation.privacy).server_step(federation) == ServerStep(0.5, 0.9, 1.0)


def test_what_a_shared_noise_round_carries_and_adds_to_the_ledger():
    ddp = mechanism_for(PrivacyConfig(mechanism="distributed"))
    plan = PLANS["distributed"][-1]
    first, later = (DeviceInstructions(DDP_DEVICE, plan, RoundInfo(n)) for n in (1, 2))
    assert first.histogram_round and not later.histogram_round
    assert first.share_names(["item_emb.weight", "output.weight"]) == (SHARED_COUNTS,)
    dense = ["item_emb.weight", "tower.0.weight", "output.weight"]
    assert later.share_names(dense) == tuple(dense)  # the dense layers train under their own clip
    frozen = replace(DDP_DEVICE, shared_noise=replace(DDP_DEVICE.shared_noise, dense_clip=0.0))
    assert ddp.share_names(frozen, 2, dense) == ("item_emb.weight",)
    assert ddp.round_step(DDP_DEVICE, plan, 1).sample_rate == 1.0
    step = ddp.round_step(DDP_DEVICE, plan, 2)
    assert (step.noise_multiplier, step.sample_rate, step.steps) == (plan.noise_multiplier, 0.5, 1)
    user = mechanism_for(PrivacyConfig(mechanism="user"))
    names = ["item_emb.weight", "output.weight"]
    assert user.share_names(DEVICE, 3, names) == tuple(names)
    assert user.shared_history(DEVICE, PLANS["user"][-1], 3) == ((1.20849609375, 0.25, 3),)
    local = mechanism_for(PrivacyConfig())
    assert local.share_names(DEVICE, 1, names) == () and local.server_step(FederationConfig()) is None
    assert local.shared_history(DEVICE, PLANS["local"][-1], 3) is None


# A comparison with a mechanism's name, or a table keyed by one, outside fedrec.common.mechanisms.
NAME = r'"(?:local|distributed|user)"'
DISPATCH = re.compile(
    rf"mechanism\s*(?:==|!=|not\s+in\b|in\b)|(?:==|!=)\s*{NAME}|{NAME}\s*(?:==|!=)|{NAME}\s*,\s*{NAME}"
    r'|\bin\s*[(\[{]\s*"(?:local|distributed)"|"distributed"\s*:'
)


def test_no_module_outside_the_mechanisms_dispatches_on_a_mechanism_name():
    sources = [p for pkg in ("common", "client", "server", "simulations", "bench") for p in (ROOT / pkg).rglob("*.py")]
    assert len(sources) > 50
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        if "mechanisms" not in path.relative_to(ROOT).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DISPATCH.search(line.split("#")[0])
    ]
    assert found == []


def test_every_mechanism_holds_the_same_epsilon_against_the_server_as_against_the_released_model():
    """The server sees no one's coin (under ``user`` every device sends a noisy share) and no record sample."""
    released = ((1.1, 0.25, 30),)
    for name in ("local", "distributed", "user"):
        assert mechanism_for(PrivacyConfig(mechanism=name)).server_history(released) == released
