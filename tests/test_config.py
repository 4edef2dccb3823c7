"""One definition of every setting: TOML -> typed tree -> Flower run config -> what a device builds."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fedrec_cli import call_fedrec
from flwr.common.config import flatten_dict

from fedrec.client import fleet
from fedrec.client.device_round import device_model
from fedrec.client.local_training import make_optimizer
from fedrec.common.config import FederationConfig, FedrecConfig, load_config
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, resolve_privacy
from fedrec.common.keys import create_key_file, derive_device_key, load_key_file
from fedrec.common.manifest import load_manifest
from fedrec.common.settings import flatten, from_flat, from_nested, to_nested
from fedrec.common.split import temporal_split
from fedrec.common.store import DeviceStore
from fedrec.server.federation import initial_state
from fedrec.server.flower_app import app_section
from fedrec.server.strategies import build_strategy
from fedrec.simulations.arms.federated import FederatedArm, arm_config
from fedrec.simulations.audit import inprocess
from fedrec.simulations.audit.canary_runs import audited_federation
from fedrec.simulations.provision import provision

ROOT = Path(__file__).resolve().parents[1]

TUNED = """
[federation.device.model]
gmf_dim = 8
mlp_dim = 8
layers = [16, 8]
dropout = 0.3

[federation.device.training]
optimizer = "sgd"
lr = 0.2
steps_per_epoch = 3

[federation.server]
rounds = 4

[federation.device]
executor = "per_device"

[federation.device.fleet]
dropout = 0.25

[federation.privacy]
epsilon = 3.0
"""


def test_pyproject_app_section_is_derived_from_the_tree():
    """`flwr run .` reads pyproject; the harness and `fedrec server` read the tree: they must agree."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    derived = app_section()
    assert flatten_dict(declared["config"]) == derived["config"] == flatten(FederationConfig())
    assert declared["components"] == derived["components"]
    assert declared["publisher"] == derived["publisher"]


def test_every_form_round_trips():
    cfg = load_config(None)
    assert from_nested(FedrecConfig, to_nested(cfg), "nested") == cfg
    flat = flatten(cfg.federation)
    assert from_flat(FederationConfig, flat, "flat") == cfg.federation
    task = DeviceInstructions(cfg.federation.device, resolve_privacy(cfg.federation.privacy, cfg.federation.device, 30))
    assert DeviceInstructions.from_config({**task.to_config(), "server-round": 3}) == task


def test_a_device_message_missing_a_key_is_refused():
    config = DeviceInstructions().to_config()
    del config["device.model.dropout"]
    with pytest.raises(FedrecError, match="missing key device.model.dropout"):
        DeviceInstructions.from_config(config)


def test_toml_settings_reach_the_model_and_optimizer_a_device_builds(tmp_path, tiny):
    """dropout and the local optimizer, from the TOML file through the server's message to the device."""
    (tmp_path / "tuned.toml").write_text(TUNED)
    cfg = load_config(tmp_path / "tuned.toml")
    data = tiny.subset_users(3)
    stores = tmp_path / "stores"
    stores.mkdir()
    provision(data, temporal_split(data, 0), stores, create_key_file(stores / "master.key"))
    arm = FederatedArm("federated_dp", data, tmp_path, cfg.federation, show=False)
    federation = arm_config(arm, stores, stores / "master.key", tmp_path / "out", 0)
    privacy = resolve_privacy(federation.privacy, federation.device, federation.server.rounds)
    strategy = build_strategy(
        federation.server.strategy,
        federation.device.training.lr,
        DeviceInstructions(federation.device, privacy),
        round_offset=0,
        last_round=4,
        eval_every=1,
        wire_log=None,
    )
    sent = dict(strategy._config(2, final=False))  # what a ConfigRecord carries to every device
    task = DeviceInstructions.from_config(sent)
    assert task.round.number == 2 and task.privacy == privacy and task.privacy.noise_multiplier > 0
    assert task.device.fleet.dropout == 0.25  # the simulated dropout reaches the nodes with the fleet

    manifest = load_manifest(stores)
    entry = manifest.devices[0]
    key = derive_device_key(load_key_file(stores / "master.key"), entry.device_id)
    with DeviceStore.open(manifest.store_path(entry), key) as store:
        model = device_model(store, entry.device_id, initial_state(task.device), task.device)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.3 for m in dropouts)
    assert model.config.layers == (16, 8) and model.config.gmf_dim == 8
    optimizer = make_optimizer(model, task.device.training)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.2


def test_canary_retraining_uses_the_audited_arms_resolved_settings(tmp_path, tiny, monkeypatch):
    """The in-process canary trainer builds the audited arm's model, optimizer, steps and noise."""
    (tmp_path / "tuned.toml").write_text(TUNED)
    cfg = load_config(tmp_path / "tuned.toml")
    data = tiny.subset_users(4)
    audited = arm_config(
        FederatedArm("federated_dp", data, tmp_path, cfg.federation, show=False),
        tmp_path / "stores",
        tmp_path / "stores" / "master.key",
        tmp_path / "out",
        0,
    )
    audited_privacy = resolve_privacy(audited.privacy, audited.device, audited.server.rounds)
    report = {
        "meta": {"config": cfg.to_dict()},
        "arms": {
            "federated_dp": {"info": {"federation": to_nested(audited), "device_privacy": to_nested(audited_privacy)}}
        },
    }
    federation = audited_federation(report, "federated_dp", None)
    assert federation == audited

    seen = []
    real_train = fleet.train_local

    def spy(model, items, labels, training, privacy, seed):
        seen.append((model.config, training, privacy, type(make_optimizer(model, training))))
        return real_train(model, items, labels, training, privacy, seed)

    monkeypatch.setattr(fleet, "train_local", spy)
    inprocess.fit_inprocess(
        data, temporal_split(data, 0), 0, replace(federation, server=replace(federation.server, rounds=1))
    )
    model_cfg, training, privacy, optimizer = seen[0]
    assert model_cfg == audited.device.model and model_cfg.dropout == 0.3
    assert training == audited.device.training and optimizer is torch.optim.SGD
    # one round instead of four here: same mechanism, noise re-planned for the rounds the retraining runs
    assert privacy.max_grad_norm == audited_privacy.max_grad_norm and privacy.delta == audited_privacy.delta
    full = resolve_privacy(federation.privacy, federation.device, federation.server.rounds)
    assert full == audited_privacy


BAD = [
    ('[federation.server]\nrounds = "two"\n', "federation.server.rounds: expected int"),
    ("[federation.server]\nrounds = -5\n", "federation.server.rounds: must be >= 1"),
    ("[federatd]\nrounds = 2\n", "unknown key federatd in top level"),
    ("[federation.device]\nparticipation = 7.0\n", "federation.device.participation: must be in (0, 1]"),
    ("[federation.device.model]\ndropout = 1.5\n", "federation.device.model.dropout: must be in [0, 1)"),
    ("[federation.privacy]\nepsilon = -1.0\n", "federation.privacy.epsilon: must be > 0"),
    ('[federation.privacy]\nmechanism = "central"\n', "federation.privacy.mechanism: must be one of none, local"),
    ('[federation.server.strategy]\nname = "fedprox"\n', "federation.server.strategy.name: must be one of"),
    ("[central.train]\nbatch_size = 0\n", "central.train.batch_size: must be >= 1"),
    ("[federation.device.training]\nlr = 0.1\nnegatives = 2.5\n", "federation.device.training.negatives: expected int"),
    ("[simulation\nnodes = 2\n", "invalid TOML"),
    (
        "[federation.device.model]\ndropout = 0.2\n",
        "federation.device.executor: batched cannot train a model with dropout",
    ),
]


@pytest.mark.parametrize("text,expected", BAD)
def test_bad_settings_are_one_line_errors_naming_file_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FedrecError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_bad_setting_through_the_cli_exits_non_zero_with_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[federatd]\nrounds = 2\n")
    proc = call_fedrec(monkeypatch, capsys, "simulate", "--config", str(path), "--out", str(tmp_path / "run"))
    assert proc.code == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert f"{path}: unknown key federatd in top level" in lines[0]
    assert not (tmp_path / "run").exists()


def test_command_line_overrides_are_checked_like_the_file():
    with pytest.raises(FedrecError, match="command line: federation.server.rounds: must be >= 1"):
        load_config(None, {"federation.server.rounds": 0})
    assert load_config(None, {"federation.privacy.epsilon": 2}).federation.privacy.epsilon == 2.0


def test_config_show_prints_a_complete_config_that_loads_back(tmp_path, monkeypatch, capsys):
    (tmp_path / "tuned.toml").write_text(TUNED)
    shown = call_fedrec(monkeypatch, capsys, "config", "show", str(tmp_path / "tuned.toml"))
    assert shown.code == 0, shown.stderr
    (tmp_path / "shown.toml").write_text(shown.stdout)
    assert load_config(tmp_path / "shown.toml") == load_config(tmp_path / "tuned.toml") != load_config(None)
    assert "[federation.device.training]" in shown.stdout and 'optimizer = "sgd"' in shown.stdout
    assert "[federated_ddp.server]\nrounds = 21\n" in shown.stdout  # the federated_ddp arm's own branch


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "bench" / "configs").rglob("*.toml")), ids=lambda p: p.name
)
def test_every_shipped_bench_config_loads(path):
    """A bench's config with a misspelt key would only fail minutes into the bench."""
    assert load_config(path).to_dict()
