"""A model defined outside the package (docs/models.md's two-tower example, run as printed) trains in the
centralized, federated and default private arms through the real engines; a model that breaks the contract,
or that a device's owner did not allow, is refused in one line."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fedrec_cli import run_fedrec

from fedrec.common.config import DeviceConfig, FederationConfig, PrivacyConfig
from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig, build_model
from fedrec.common.policy import SIMULATED, DevicePolicy
from fedrec.common.recommender import Recommender, load_weights
from fedrec.common.settings import SettingError
from fedrec.simulations.api import baseline, simulate

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
SMALL = dict(gmf_dim=8, mlp_dim=8, layers=(16, 8))


@pytest.fixture
def two_tower(tmp_path) -> str:
    """docs/models.md's example, written to a file of its own: the model's kind."""
    block = re.search(r"<!-- two-tower-example -->\n```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    path = tmp_path / "models" / "two_tower.py"
    path.parent.mkdir()
    path.write_text(block)
    return f"{path}:TwoTower"


def model_file(tmp_path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(
        "import torch\nfrom torch import nn\nfrom fedrec.common.recommender import Recommender, load_weights\n" + body
    )
    return str(path)


def test_the_example_builds_and_its_fast_scores_are_forward_over_every_pair(two_tower):
    torch.manual_seed(0)
    config = ModelConfig(kind=two_tower, **SMALL)
    model = build_model(5, 12, config)
    assert type(model).__name__ == "TwoTower" and config.custom and not DeviceConfig(model=config).stacked
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5)  # scores of order 1-10: float32 sums in another order agree to about 1e-6
    users = torch.arange(5)
    torch.testing.assert_close(model.score_users(users), Recommender.score_users(model, users), rtol=1e-5, atol=1e-5)
    assert model.user_emb.weight.shape == (5, 16)


def test_a_model_that_breaks_the_contract_is_one_clear_error(tmp_path):
    with pytest.raises(SettingError, match="module:Class or file.py:Class"):
        ModelConfig(kind="twotower")
    with pytest.raises(FedrecError, match="no such model file"):
        build_model(3, 4, ModelConfig(kind=f"{tmp_path}/absent.py:M"))
    not_a_model = model_file(tmp_path, "not_a_model", "class M(nn.Module):\n    pass\n")
    with pytest.raises(FedrecError, match="no Recommender subclass named M"):
        build_model(3, 4, ModelConfig(kind=f"{not_a_model}:M"))
    narrow = model_file(
        tmp_path,
        "narrow",
        "class M(Recommender):\n"
        "    def __init__(self, n_users, n_items, config):\n"
        "        super().__init__(n_users, n_items, config)\n"
        "        self.user_emb = nn.Embedding(n_users, 3)\n"
        "        self.item_emb = nn.Embedding(n_items, 3)\n",
    )
    with pytest.raises(FedrecError, match=r"user_emb must be an nn.Embedding\(3, 16\)"):
        build_model(3, 4, ModelConfig(kind=f"{narrow}:M", **SMALL))
    failing = model_file(tmp_path, "failing", "raise RuntimeError('boom')\n")
    with pytest.raises(FedrecError, match="cannot load .*RuntimeError: boom"):
        build_model(3, 4, ModelConfig(kind=f"{failing}:M"))


def test_the_arms_that_train_neumf_only_refuse_a_model_of_ones_own(tmp_path, two_tower):
    custom = DeviceConfig(model=ModelConfig(kind=two_tower, **SMALL))
    with pytest.raises(SettingError, match="distributed trains NeuMF's own layout only"):
        FederationConfig(privacy=PrivacyConfig(mechanism="distributed"), device=custom)
    FederationConfig(privacy=PrivacyConfig(mechanism="local"), device=custom)
    with pytest.raises(FedrecError, match="--model: arm federated_ddp"):
        simulate(tmp_path / "run", arms=["popularity", "federated_ddp"], model=two_tower, show=False)
    with pytest.raises(SettingError, match="prior"):
        ModelConfig(kind=two_tower, prior=True)


def test_a_device_loads_only_the_models_its_owner_allowed(two_tower):
    custom, neumf = ModelConfig(kind=two_tower), ModelConfig()
    assert "not one this device's owner allowed" in DevicePolicy().model_refusal(custom)
    assert DevicePolicy().model_refusal(neumf) is None
    assert DevicePolicy(allow_models=f"other.py:X,{two_tower}").model_refusal(custom) is None
    assert SIMULATED.model_refusal(custom) is None
    # the owner's list travels in the SuperNode's node config, which the server never sets
    allowed = DevicePolicy(allow_models=two_tower)
    node_config = dict(pair.split("=", 1) for pair in allowed.to_node_config().split())
    parsed = DevicePolicy.from_node_config({k: v.strip("'") for k, v in node_config.items()})
    assert parsed.model_refusal(custom) is None and parsed == allowed


def test_the_example_trains_centralized_federated_and_private_above_popularity(tmp_path, two_tower, ml100k_dir):
    """The real engines on 300 ML-100K users: the centralized fit, Flower's simulation engine without DP and
    with Opacus on every device (the default private arm), each at the example's recipe (docs/models.md)."""
    results = simulate(
        tmp_path / "run",
        "ml-100k",
        arms=["popularity", "centralized", "federated", "federated_dp"],
        users=300,
        model=two_tower,
        settings={"federation.device.training.lr": 0.03, "central.train.epochs": 10},
        retention=False,
        show=False,
    )
    arms = results.arms
    popularity = arms["popularity"].ndcg
    assert arms["centralized"].ndcg > popularity
    assert arms["federated"].ndcg > popularity
    for name in ("centralized", "federated", "federated_dp"):
        info = arms[name].info
        model = info["model"] if name == "centralized" else info["federation"]["device"]["model"]
        assert model["kind"] == two_tower
    private = arms["federated_dp"].info
    assert private["device_privacy"]["mechanism"] == "local" and private["device_privacy"]["noise_multiplier"] > 0
    assert 0 < max(r["epsilon_max"] for r in private["rounds"]) <= 8.0 + 1e-9  # Opacus' accountant, per device
    assert arms["federated_dp"].ndcg > 0

    # on-device recommendations from the run's model: only when the device's owner allows the model
    run = tmp_path / "run"
    store = sorted((run / "stores" / "stores").glob("*.db"))[0]
    args = ["recommend", "--store", str(store), "--key-file", str(run / "stores" / "master.key"), "--model",
            str(run / "models" / "federated" / "global_model.pt"), "-k", "3"]  # fmt: skip
    refused = run_fedrec(*args)
    assert refused.code == 1 and "not one this device's owner allowed (--allow-model)" in refused.stderr
    relative = os.path.relpath(two_tower, tmp_path)  # the same file, however it is written
    served = run_fedrec(*args, "--allow-model", relative, cwd=tmp_path)
    assert served.code == 0, served.stderr
    assert [line.split()[0] for line in served.stdout.splitlines()] == ["1", "2", "3"]


def test_weights_of_another_model_are_one_clear_error(two_tower):
    model = build_model(2, 6, ModelConfig(kind=two_tower, **SMALL))
    state = {**model.state_dict(), "item_emb.weight": torch.zeros(6, 3)}
    with pytest.raises(FedrecError, match=r"item_emb.weight: \(6, 3\) in the weights, \(6, 17\) in the model"):
        load_weights(model, state)


def test_baseline_takes_the_class_itself(tmp_path, two_tower, ml100k_dir):
    namespace: dict = {}
    exec(compile(Path(two_tower.rpartition(":")[0]).read_text(), "two_tower.py", "exec"), namespace)
    with pytest.raises(FedrecError, match="top level"):
        baseline(tmp_path / "a", arms=["centralized"], users=30, model=local_class(), show=False)
    results = baseline(
        tmp_path / "b",
        arms=["centralized"],
        users=40,
        model=imported(two_tower),
        settings={"central.train.epochs": 1},
        retention=False,
        show=False,
    )
    assert results.arms["centralized"].info["model"]["kind"] == two_tower


def local_class() -> type:
    class Inner(Recommender):
        pass

    return Inner


def imported(kind: str) -> type:
    from fedrec.common.recommender import model_class

    return model_class(kind)


def test_a_model_of_ones_own_is_not_stacked(two_tower):
    custom = DeviceConfig(model=ModelConfig(kind=two_tower, **SMALL))
    assert not custom.stacked and replace(custom, model=ModelConfig(**SMALL)).stacked


def test_a_deployed_node_refuses_a_model_its_owner_did_not_allow_without_running_its_code(tmp_path, task_identity):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.app.message_type import MessageType

    from fedrec.client.app import app as client_app
    from fedrec.common.instructions import DeviceInstructions

    marker = tmp_path / "ran"
    kind = model_file(tmp_path, "trojan", f"open({str(marker)!r}, 'w').close()\nclass M(Recommender):\n    pass\n")
    task = DeviceInstructions(device=DeviceConfig(model=ModelConfig(kind=f"{kind}:M"), n_items=5))

    def reply(node_config: dict) -> str:
        content = RecordDict({"config": ConfigRecord(task.to_config()), "arrays": ArrayRecord({})})
        msg = Message(content, dst_node_id=7, message_type=MessageType.EVALUATE)
        context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
        answer = client_app(msg, context)
        return answer.error.reason if answer.has_error() else ""

    deployed = {"store": str(tmp_path / "device.db")}  # a node `fedrec client` started
    assert "not one this device's owner allowed (--allow-model)" in reply(deployed)
    assert not marker.exists()
    allowed = {**deployed, "policy.allow_models": f"{kind}:M"}
    assert "not one this device's owner allowed" not in reply(allowed)
