"""federated_ddp (the ``distributed`` mechanism): the devices' summed shares are one pooled DP-SGD step."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedrec.client.device_round import EMBEDDING, ledger_of, round_examples, round_randomness
from fedrec.client.fleet import node_devices
from fedrec.client.shared_gradients import CLIP_EPS
from fedrec.client.shared_noise import train_fleet_shared
from fedrec.client.user_level import train_fleet_user
from fedrec.common.config import DeviceConfig, FederationConfig, Fleet, PrivacyConfig, ServerConfig, SharedNoise
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo, resolve_privacy
from fedrec.common.mechanisms import ServerStep, mechanism_for
from fedrec.common.model import PRIOR, ModelConfig, NeuMF
from fedrec.common.policy import SIMULATED
from fedrec.common.privacy import history_epsilon
from fedrec.common.settings import SettingError
from fedrec.common.split import temporal_split
from fedrec.server.shared_noise import SharedNoiseAggregation
from fedrec.simulations.arms.federated import FederatedArm, fit_federated
from fedrec.simulations.audit.accounting import check_ledger, read_ledger
from fedrec.simulations.audit.wire import audit_wire_log
from tests.test_federated import provisioned

GMF = ModelConfig(kind="gmf", gmf_dim=16, item_bias=False, prior=True, init_std=0.3)
CLIP = 0.5


def fleet_device(tmp_path, data, shared: SharedNoise) -> DeviceConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    stores = provisioned(tmp_path, data)
    return DeviceConfig(
        model=GMF,
        n_items=data.n_items,
        participation=1.0,
        fleet=Fleet(str(stores), str(stores / "master.key")),
        shared_noise=shared,
    )


def task_for(device: DeviceConfig, sigma: float, round_number: int, batch: float) -> DeviceInstructions:
    privacy = DevicePrivacy(sigma, CLIP, 1e-5, math.inf, "distributed", batch)
    return DeviceInstructions(device, privacy, RoundInfo(number=round_number))


def start_state(device: DeviceConfig) -> dict[str, torch.Tensor]:
    """A random global model with a random prior: the gradients must look up each item's own prior."""
    torch.manual_seed(1)
    model = NeuMF(1, device.n_items, device.model)
    model.set_prior(torch.randn(device.n_items))
    return {k: v for k, v in model.state_dict().items() if not k.startswith("user_emb")}


def pooled_clipped_sum(device, refs, state, task) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The pooled reference: every record's gradient (user row and item table; the prior is a buffer),
    taken with plain autograd one record at a time, clipped to CLIP over both, summed."""
    table_sum = torch.zeros_like(state["item_emb.weight"])
    user_sums = {}
    for ref in refs:
        with ref.open() as store:
            items, labels = round_examples(store, task, round_randomness(ref, task))
        row = _initial_row(ref, device)
        user_sum = torch.zeros_like(row)
        for group, y in zip(items, labels):
            model = NeuMF(1, device.n_items, GMF)
            model.load_state_dict({**state, "user_emb.weight": row})
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(torch.zeros_like(group), group), y, reduction="sum"
            )
            g_user, g_table = torch.autograd.grad(loss, [model.user_emb.weight, model.item_emb.weight])
            norm = (g_user.square().sum() + g_table.square().sum()).sqrt()
            scale = min(1.0, CLIP / (float(norm) + CLIP_EPS))
            table_sum += scale * g_table
            user_sum += scale * g_user
        user_sums[ref.device_id] = user_sum
    return table_sum, user_sums


def _initial_row(ref, device: DeviceConfig, model: ModelConfig = GMF) -> torch.Tensor:
    from fedrec.client.device_round import device_seed

    generator = torch.Generator().manual_seed(device_seed(device.seed, 0, ref.device_id))
    return torch.randn(1, model.embedding_dim, generator=generator) * model.init_std


def _row_after(ref, device) -> torch.Tensor:
    import io

    import numpy as np

    with ref.open() as store:
        return torch.from_numpy(np.load(io.BytesIO(store.get_state(device.state_prefix + EMBEDDING)))).reshape(1, -1)


def test_noise_free_sum_equals_the_pooled_clipped_sum(tmp_path, tiny):
    data = tiny.subset_users(6)
    device = fleet_device(tmp_path, data, SharedNoise(record_rate=1.0, min_devices=6, count_sigma=0.0, table_lr=2.0))
    refs = node_devices({}, device.fleet)
    state = start_state(device)
    task = task_for(device, 1e-12, 2, batch=50.0)
    expected_table, expected_users = pooled_clipped_sum(device, refs, state, task)
    total, metrics = train_fleet_shared(refs, state, task, SIMULATED)
    assert metrics["num-examples"] == metrics["devices"] == len(refs)
    assert torch.allclose(total["item_emb.weight"].float(), expected_table, atol=1e-6)
    assert expected_table.abs().sum() > 0
    for ref in refs:  # the device's own row: one SGD step on its clipped sum / expected batch
        expected_row = _initial_row(ref, device) - 2.0 * expected_users[ref.device_id] / 50.0
        assert torch.allclose(_row_after(ref, device), expected_row, atol=1e-6)


@pytest.mark.parametrize("colluding", [0.0, 0.5])
def test_noise_of_the_sum_has_std_sigma_clip(tmp_path, tiny, colluding):
    """m_min devices each add sigma C / sqrt((1 - f) m_min): the sum of the (1 - f) m_min honest ones
    carries sigma C per coordinate, all of them sigma C / sqrt(1 - f); each device's own user row carries
    the full sigma C."""
    data = tiny.subset_users(8)
    shared = SharedNoise(
        record_rate=0.5, min_devices=8, tolerated_collusion=colluding, count_sigma=0.0, table_lr=1.0, momentum=0.0
    )
    quiet, noisy = (fleet_device(tmp_path / name, data, shared) for name in ("quiet", "noisy"))
    state, sigma = start_state(quiet), 3.0
    clean, _ = train_fleet_shared(node_devices({}, quiet.fleet), state, task_for(quiet, 1e-12, 2, 1.0), SIMULATED)
    loud, _ = train_fleet_shared(node_devices({}, noisy.fleet), state, task_for(noisy, sigma, 2, 1.0), SIMULATED)
    noise = loud["item_emb.weight"] - clean["item_emb.weight"]
    assert noise.numel() >= 500
    assert abs(float(noise.std()) * math.sqrt(1 - colluding) / (sigma * CLIP) - 1.0) < 0.12
    assert abs(float(noise.mean())) < 0.2 * sigma * CLIP
    rows = torch.cat(
        [
            _row_after(q, quiet) - _row_after(n, noisy)
            for q, n in zip(node_devices({}, quiet.fleet), node_devices({}, noisy.fleet))
        ]
    )
    assert abs(float(rows.std()) / (sigma * CLIP) - 1.0) < 0.25  # 8 x 16 draws of the full noise


def test_histogram_round_sends_noisy_counts_and_records_it(tmp_path, tiny):
    data = tiny.subset_users(4)
    device = fleet_device(tmp_path, data, SharedNoise(min_devices=4, count_sigma=2.0))
    refs = node_devices({}, device.fleet)
    task = task_for(device, 1.0, 1, 10.0)
    total, metrics = train_fleet_shared(refs, start_state(device), task, SIMULATED)
    split = temporal_split(data, 0)
    exact = torch.bincount(torch.from_numpy(split.train_items), minlength=data.n_items).double()
    assert set(total) == {"item_counts"}
    residual = total["item_counts"] - exact
    assert 0 < float(residual.std()) < 4.0  # N(0, 2^2) per item, summed over 4 shares of std 1
    for ref in refs:
        assert ledger_of(ref, device.state_prefix).history == [(2.0, 1.0, 1)]
    assert metrics["steps-max"] == 1


def test_resolved_noise_spends_the_budget_with_the_histogram():
    device = DeviceConfig(model=GMF, participation=1.0, shared_noise=SharedNoise(record_rate=0.25, count_sigma=10.0))
    privacy = resolve_privacy(PrivacyConfig(mechanism="distributed", epsilon=8.0), device, rounds=41, records=98_000)
    assert mechanism_for(privacy).shared and privacy.expected_batch == pytest.approx(0.25 * 98_000)
    eps = history_epsilon(((10.0, 1.0, 1), (privacy.noise_multiplier, 0.25, 40)), 1e-5)
    assert 7.9 < eps <= 8.0 + 1e-9
    smaller = history_epsilon(((10.0, 1.0, 1), (privacy.noise_multiplier * 0.98, 0.25, 40)), 1e-5)
    assert smaller > 8.0  # the smallest noise that fits
    with pytest.raises(FedrecError, match="participation"):
        resolve_privacy(
            PrivacyConfig(mechanism="distributed"), replace(device, participation=0.5), rounds=41, records=98_000
        )


@pytest.mark.parametrize(
    ("model", "key"),
    [(replace(GMF, prior=False), "device.model.prior"), (replace(GMF, item_bias=True), "device.model.item_bias")],
)
def test_the_histogram_needs_the_prior_and_no_learned_bias_column(model, key):
    """The released histogram has one place to go, the model's fixed prior; a bias column would train."""
    device = DeviceConfig(model=model, participation=1.0, shared_noise=SharedNoise(count_sigma=10.0))
    with pytest.raises(FedrecError, match=f"federation.{key}: must be"):
        resolve_privacy(PrivacyConfig(mechanism="distributed"), device, rounds=41, records=98_000)


class _Reply:
    def __init__(self, arrays: dict[str, torch.Tensor], devices: int):
        metrics = {"num-examples": devices, "devices": devices, "refused": 0, "steps-max": 1}
        metrics |= {"epsilon-max": 1.0, "epsilons": [1.0] * devices}
        self.content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})

    def has_content(self) -> bool:
        return True


def _aggregator(min_devices: int) -> SharedNoiseAggregation:
    device = DeviceConfig(model=GMF, n_items=5, shared_noise=SharedNoise(min_devices=min_devices))
    return SharedNoiseAggregation(
        device=device,
        privacy=DevicePrivacy(1.0, CLIP, 1e-5, 8.0, "distributed", 10.0),
        step=ServerStep(device.shared_noise.table_lr, 0.9, -1.0),
    )


def test_round_with_fewer_than_min_devices_is_dropped():
    state = {"item_emb.weight": torch.ones(5, GMF.embedding_dim), "output.weight": torch.ones(1, 16)}
    update = {"item_emb.weight": torch.full((5, GMF.embedding_dim), 2.0)}
    few = _aggregator(min_devices=5)
    few._current = state
    arrays, metrics = few.aggregate_train(3, [_Reply(update, 2), _Reply(update, 2)])
    assert torch.equal(arrays.to_torch_state_dict()["item_emb.weight"], state["item_emb.weight"])
    assert few.dropped_rounds == [3] and metrics["devices"] == 4
    enough = _aggregator(min_devices=4)
    enough._current = state
    arrays, _ = enough.aggregate_train(3, [_Reply(update, 2), _Reply(update, 2)])
    lr = enough.device.shared_noise.table_lr
    expected = 1.0 - lr * 4.0 / 10.0  # the two node sums added, divided by the expected batch
    assert torch.allclose(
        arrays.to_torch_state_dict()["item_emb.weight"], torch.full_like(state["item_emb.weight"], expected)
    )
    assert enough.dropped_rounds == []


def test_device_refuses_past_its_budget(tmp_path, tiny):
    data = tiny.subset_users(2)
    device = fleet_device(tmp_path, data, SharedNoise(min_devices=2, count_sigma=0.0))
    ref = node_devices({}, device.fleet)[0]
    privacy = DevicePrivacy(0.5, CLIP, 1e-5, 0.01, "distributed", 10.0)  # one step costs more than 0.01
    task = DeviceInstructions(device, privacy, RoundInfo(number=2))
    total, metrics = train_fleet_shared([ref], start_state(device), task, SIMULATED)
    assert metrics["refused"] == 1 and metrics["devices"] == 0 and ledger_of(ref, device.state_prefix).steps == 0
    assert all(float(v.abs().max()) == 0.0 for v in total.values())


def test_federated_ddp_on_flower_simulation_engine(tmp_path, tiny):
    data = tiny.subset_users(6)
    split = temporal_split(data, 0)
    shared = SharedNoise(record_rate=0.5, min_devices=0, count_sigma=5.0, feature_init="", table_lr=5.0, steps=2)
    fed = FederationConfig(
        server=ServerConfig(rounds=3, eval_every=3),
        privacy=PrivacyConfig(mechanism="distributed", epsilon=8.0, max_grad_norm=CLIP),
        device=DeviceConfig(model=GMF, participation=1.0, shared_noise=shared),
    )
    result = fit_federated(FederatedArm("federated_ddp", data, tmp_path, fed, nodes=2, show=False), split, 0)
    privacy = result.info["privacy"]
    sigma = result.info["device_privacy"]["noise_multiplier"]
    assert privacy["steps"] == 3 and privacy["sample_rate"] == 0.5
    assert privacy["epsilon_max"] == pytest.approx(history_epsilon(((5.0, 1.0, 1), (sigma, 0.5, 2)), 1e-5))
    assert 7.9 < privacy["epsilon_max"] <= 8.0 + 1e-9
    audit = check_ledger(read_ledger(tmp_path / "privacy" / "federated_ddp_ledger.csv"), 1e-5, privacy["epsilon_max"])
    assert audit["agree"] and audit["n_devices"] == 6
    model_dir = tmp_path / result.info["model_dir"]
    wire = audit_wire_log(model_dir / "wire.jsonl", model_dir / "model.json")
    assert wire["ok"], wire["problems"]
    assert set(wire["arrays"]) == {"item_emb.weight", PRIOR, "item_counts", "output.weight", "output.bias"}
    final = torch.load(model_dir / "global_model.pt", weights_only=True)
    assert final[PRIOR].std() > 0  # round 1's histogram became the prior
    # 0 = the fleet less the tolerated dropout (a fifth), rounded up
    assert result.info["federation"]["device"]["shared_noise"]["min_devices"] == 5
    assert result.scores.shape == (data.n_users, data.n_items)


def test_federated_user_dp_on_flower_simulation_engine(tmp_path, tiny):
    """User-level DP-FedAvg: sampled devices, whole updates clipped, every round counted for every user."""
    data = tiny.subset_users(8)
    small = ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8,))
    fed = FederationConfig(
        server=ServerConfig(rounds=3, eval_every=3),
        privacy=PrivacyConfig(mechanism="user", epsilon=8.0, max_update_norm=0.5),
        device=DeviceConfig(model=small, participation=0.5),
    )
    result = fit_federated(
        FederatedArm("federated_user_dp", data, tmp_path, fed, nodes=2, show=False), data_split(data), 0
    )
    privacy, resolved = result.info["privacy"], result.info["device_privacy"]
    assert resolved["mechanism"] == "user" and resolved["expected_batch"] == pytest.approx(4.0)
    assert privacy["unit"].startswith("user-level") and privacy["sample_rate"] == 0.5
    expected = history_epsilon(((resolved["noise_multiplier"], 0.5, 3),), 1e-5)
    assert privacy["epsilon_max"] == pytest.approx(expected) and 7.9 < expected <= 8.0 + 1e-9
    assert privacy["epsilon_record_level_max"] == privacy["epsilon_max"]
    audit = check_ledger(
        read_ledger(tmp_path / "privacy" / "federated_user_dp_ledger.csv"), 1e-5, privacy["epsilon_max"]
    )
    assert audit["agree"]
    # against the server: the same history (every device sends a noisy share, so no one's coin shows)
    server = read_ledger(tmp_path / "privacy" / "federated_user_dp_server_ledger.csv")
    assert check_ledger(server, 1e-5, privacy["epsilon_server_max"])["agree"]
    assert privacy["epsilon_server_max"] == pytest.approx(privacy["epsilon_max"])
    model_dir = tmp_path / result.info["model_dir"]
    assert audit_wire_log(model_dir / "wire.jsonl", model_dir / "model.json")["ok"]
    minimum = result.info["federation"]["device"]["shared_noise"]["min_devices"]
    assert minimum == 7  # every device sends a share, sampled or not; a fifth of them may miss a round
    assert result.scores.shape == (data.n_users, data.n_items)


def data_split(data):
    return temporal_split(data, 0)


def test_canary_retraining_resolves_m_min_again_and_starts_rows_at_random():
    from fedrec.simulations.audit.run import canary_federation

    shared = SharedNoise(min_devices=943, feature_init="ml-100k")
    audited = FederationConfig(
        privacy=PrivacyConfig(mechanism="distributed"), device=DeviceConfig(model=GMF, shared_noise=shared)
    )
    canary = canary_federation(audited)
    assert canary.device.shared_noise.min_devices == 0 and canary.device.shared_noise.feature_init == ""
    assert canary.privacy == audited.privacy and canary.device.model == audited.device.model
    local = FederationConfig(privacy=PrivacyConfig(mechanism="local"), device=DeviceConfig(shared_noise=shared))
    assert canary_federation(local) == local


@pytest.mark.parametrize(
    ("mechanism", "round_number", "names"),
    [
        ("distributed", 1, {"item_counts"}),
        ("distributed", 2, {"item_emb.weight", "output.weight", "output.bias"}),
        ("user", 1, None),
    ],
)
def test_a_node_with_nothing_to_add_sends_a_zero_share_of_the_rounds_layout(mechanism, round_number, names):
    """A node whose devices all sat out still sends every array of the round's share (SecAgg+ sums them
    position by position), all zero."""
    device = DeviceConfig(model=GMF, n_items=7)
    state = {k: v.detach() for k, v in NeuMF(1, 7, GMF).state_dict().items() if k != "user_emb.weight"}
    privacy = DevicePrivacy(1.0, CLIP, 1e-5, 8.0, mechanism, 10.0)
    total, metrics = train_fleet_shared(
        [], state, DeviceInstructions(device, privacy, RoundInfo(round_number)), SIMULATED
    )
    assert set(total) == (names or set(state)) and metrics["devices"] == 0
    assert all(float(v.abs().max()) == 0.0 for v in total.values())


def test_under_user_a_device_its_coin_left_out_sends_its_noise_share_alone(tmp_path, tiny):
    """Every device's share carries noise, sampled or not: the node's sum holds the noise of all its devices
    (std sigma C sqrt(n / m_min)) and counts them all, so no sum the server unmasks says who was sampled."""
    data = tiny.subset_users(6)
    device = replace(
        fleet_device(tmp_path, data, SharedNoise(min_devices=6, feature_init="")), participation=1e-9
    )  # no coin says yes
    refs = node_devices({}, device.fleet)
    sigma = 1e4  # the noise alone: no device trains
    privacy = DevicePrivacy(sigma, CLIP, 1e-5, math.inf, "user", 1.0)
    state = start_state(device)
    total, metrics = train_fleet_user(refs, state, DeviceInstructions(device, privacy, RoundInfo(2)), SIMULATED)
    assert metrics["devices"] == metrics["num-examples"] == len(refs) == 6 and metrics["refused"] == 0
    assert set(total) == set(state)
    table = total["item_emb.weight"] / (sigma * CLIP)
    assert abs(float(table.std()) - 1.0) < 0.05  # 6 shares of std sigma C / sqrt(6)
    assert all(ledger_of(ref, device.state_prefix).steps == 0 for ref in refs)  # none trained, none opened


def test_a_tolerated_colluding_fraction_leaves_the_whole_noise_to_the_honest_devices():
    shared = SharedNoise(min_devices=10, tolerated_collusion=0.3)
    assert 7 * shared.share_std(2.0) ** 2 == pytest.approx(2.0**2)  # 7 honest of 10
    assert SharedNoise(min_devices=10).share_std(2.0) == pytest.approx(2.0 / math.sqrt(10))
    with pytest.raises(SettingError, match="must be in") as refused:
        SharedNoise(tolerated_collusion=1.0)
    assert refused.value.field == "tolerated_collusion"


NEUMF = ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8), item_bias=False, prior=True, init_std=0.3)
DENSE_CLIP = 0.2


def tower_device(tmp_path, data, executor: str) -> DeviceConfig:
    shared = SharedNoise(record_rate=1.0, min_devices=6, count_sigma=0.0, table_lr=2.0, dense_clip=DENSE_CLIP)
    return replace(fleet_device(tmp_path, data, shared), model=NEUMF, executor=executor)


@pytest.mark.parametrize("executor", ["per_device", "batched"])
def test_the_tower_is_clipped_apart_from_the_rows(tmp_path, tiny, executor):
    """NeuMF with its tower: each record's gradient on the rows is clipped to C, on the tower and output to
    C_dense apart (plain autograd one record at a time), on Opacus' path and on the stacked one."""
    data = tiny.subset_users(6)
    device = tower_device(tmp_path, data, executor)
    refs = node_devices({}, device.fleet)
    torch.manual_seed(1)
    model = NeuMF(1, device.n_items, NEUMF)
    model.set_prior(torch.randn(device.n_items))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("user_emb")}
    task = task_for(device, 1e-12, 2, batch=50.0)
    dense = [k for k, _ in model.named_parameters() if k.startswith(("tower.", "output."))]
    expected = {k: torch.zeros_like(state[k]) for k in ["item_emb.weight", *dense]}
    clipped_dense = 0
    for ref in refs:
        with ref.open() as store:
            items, labels = round_examples(store, task, round_randomness(ref, task))
        for group, y in zip(items, labels):
            one = NeuMF(1, device.n_items, NEUMF)
            one.load_state_dict({**state, "user_emb.weight": _initial_row(ref, device, NEUMF)})
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                one(torch.zeros_like(group), group), y, reduction="sum"
            )
            named = dict(one.named_parameters())
            grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
            rows = (grads["user_emb.weight"].square().sum() + grads["item_emb.weight"].square().sum()).sqrt()
            tower = torch.stack([grads[k].square().sum() for k in dense]).sum().sqrt()
            clipped_dense += int(tower > DENSE_CLIP)
            expected["item_emb.weight"] += min(1.0, CLIP / (float(rows) + CLIP_EPS)) * grads["item_emb.weight"]
            for k in dense:
                expected[k] += min(1.0, DENSE_CLIP / (float(tower) + CLIP_EPS)) * grads[k]
    total, _ = train_fleet_shared(refs, state, task, SIMULATED)
    assert clipped_dense > 0  # the check reaches the dense clip
    assert set(total) == set(expected)
    for k, value in expected.items():
        assert torch.allclose(total[k].float(), value, atol=1e-5), k


def test_the_opacus_and_stacked_paths_agree_draw_for_draw(tmp_path, tiny):
    """The same fleet, round and noise through each device's Opacus step and through the stacked one: the
    same shares and the same user rows (each device's noise from its own stream, in the same order)."""
    data = tiny.subset_users(6)
    results = []
    for executor in ("per_device", "batched"):
        device = replace(
            tower_device(tmp_path / executor, data, executor),
            shared_noise=SharedNoise(
                record_rate=0.5, min_devices=6, count_sigma=0.0, table_lr=2.0, dense_clip=DENSE_CLIP, feature_init=""
            ),
        )
        refs = node_devices({}, device.fleet)
        state = mechanism_for(PrivacyConfig(mechanism="distributed")).initial_state(device)
        total, _ = train_fleet_shared(refs, state, task_for(device, 1.0, 2, batch=20.0), SIMULATED)
        results.append((total, [_row_after(ref, device) for ref in refs]))
    (first, rows_a), (second, rows_b) = results
    assert set(first) == set(second) and len(first) > 2
    for k in first:
        assert torch.allclose(first[k], second[k], atol=1e-5), k
    for a, b in zip(rows_a, rows_b):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_simulated_fleet_misses_the_stated_share_of_each_node_every_round(tmp_path, tiny):
    from fedrec.client.fleet import reachable

    data = tiny.subset_users(10)
    device = fleet_device(tmp_path, data, SharedNoise(min_devices=8))
    device = replace(device, fleet=replace(device.fleet, dropout=0.25))
    refs = node_devices({}, device.fleet)
    present = [
        {r.device_id for r in reachable(refs, DeviceInstructions(device, DevicePrivacy(), RoundInfo(n)))}
        for n in (1, 2, 3)
    ]
    assert all(len(p) == len(refs) - 2 for p in present)  # int(0.25 x 10) = 2 miss each round
    assert len({frozenset(p) for p in present}) > 1  # chosen afresh each round
    deployed = [replace(r, seeded=False) for r in refs]  # a deployed device never reads the setting
    assert reachable(deployed, DeviceInstructions(device, DevicePrivacy(), RoundInfo(1))) == deployed


@pytest.mark.parametrize(("tolerance", "expected"), [(0.0, 10), (0.2, 8), (0.25, 8), (0.5, 5)])
def test_m_min_leaves_room_for_the_tolerated_dropout(tmp_path, tiny, tolerance, expected):
    from fedrec.server.federation import resolve_min_devices

    device = fleet_device(tmp_path, tiny.subset_users(10), SharedNoise(dropout_tolerance=tolerance))
    assert resolve_min_devices(device).shared_noise.min_devices == expected
