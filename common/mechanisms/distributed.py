"""Record-level DP-SGD with the noise shared across devices: the ``federated_ddp`` arm. One round is one
DP-SGD step of the pooled recipe (docs/privacy.md): each device adds 1/sqrt(min_devices) of the noise to its
clipped gradient sums, the server sees only their sum (SecAgg+) and applies SGD with momentum to it.

The model is NeuMF with its tower (or GMF alone). NeuMF starts as the GMF recipe's dot product: the output
weights on the GMF product equal, those on the tower zero, so the tower learns a residual and its random
start adds nothing to the scores (docs/dp-search.md, "The MLP tower under shared noise")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fedrec.common.dp_recipe import composed_noise, feature_rows, public_item_features
from fedrec.common.item_rows import ITEM_TABLE
from fedrec.common.mechanisms.base import (
    AccountantStep,
    DevicePrivacy,
    Ignored,
    Mechanism,
    ServerStep,
    Trainer,
    need,
)
from fedrec.common.model import is_dense
from fedrec.common.privacy import SHARED_UNIT
from fedrec.common.replies import SHARED_COUNTS

if TYPE_CHECKING:
    from fedrec.common.config import DeviceConfig, FederationConfig, PrivacyConfig

OUTPUT = "output.weight"
IGNORED_BY_SHARED_STEP = "the server applies the noisy sum with device.shared_noise.table_lr and momentum"


def shared_steps(device: DeviceConfig, rounds: int) -> int:
    """DP-SGD steps of a run: every round but the first when round 1 releases the histogram."""
    return rounds - int(device.shared_noise.count_sigma > 0)


class DistributedDP(Mechanism):
    name = "distributed"
    unit = SHARED_UNIT
    trusted = (
        "the devices (they add their noise shares honestly) and secure aggregation: the server must see only "
        "the sum over >= min_devices devices, at most a fraction tolerated_collusion of them colluding with it"
    )
    trust = "trusting secure aggregation and the devices' noise shares"
    server_sees = "only the noisy sum per round, and which devices reported"
    shared = True
    trainer = Trainer.SHARED_GRADIENTS
    any_model = False  # its per-record gradients are written out for NeuMF's tables (client/shared_gradients.py)
    replies_parameters = False  # the item table's noisy gradient sum, or in round 1 the item histogram
    reads = (
        "privacy.epsilon",
        "privacy.delta",
        "privacy.max_grad_norm",
        "device.shared_noise",
        "device.fleet.train_records",
    )
    ignores = (
        Ignored("server.strategy.name", IGNORED_BY_SHARED_STEP),
        Ignored("server.strategy.tau", IGNORED_BY_SHARED_STEP),
    )

    def plan(
        self, privacy: PrivacyConfig, device: DeviceConfig, rounds: int, records: int = 0, devices: int = 0
    ) -> DevicePrivacy:
        shared = device.shared_noise
        need(
            device.participation == 1.0,
            "device.participation",
            "must be 1 (every device reports every round)",
            self.name,
        )
        need(
            not device.model.item_bias,
            "device.model.item_bias",
            "must be false (a learned bias column takes the clipping norm; the popularity prior is device.model.prior)",
            self.name,
        )
        need(
            device.model.prior or shared.count_sigma == 0,
            "device.model.prior",
            "must be true while shared_noise.count_sigma > 0 (the released histogram becomes the prior)",
            self.name,
        )
        need(records > 0, "device.fleet", "needs a manifest (the number of train records fixes the batch)", self.name)
        steps = shared_steps(device, rounds)
        need(steps >= 1, "server.rounds", f"needs a round after the histogram round, got {rounds}", self.name)
        sigma = composed_noise(
            privacy.epsilon, privacy.delta, shared.count_sigma, shared.record_rate, steps, "federation.privacy"
        )
        batch = shared.record_rate * records
        return DevicePrivacy(sigma, privacy.max_grad_norm, privacy.delta, privacy.epsilon, self.name, batch)

    def histogram_round(self, device: DeviceConfig, round_number: int) -> bool:
        """Round 1 releases the item histogram (the popularity prior) when ``count_sigma`` > 0."""
        return round_number == 1 and device.shared_noise.count_sigma > 0

    def share_names(self, device: DeviceConfig, round_number: int, parameters: Sequence[str]) -> tuple[str, ...]:
        """The clipped gradient sums of the item table and, when they train, the dense layers (in the model's
        order); in the histogram round the item counts."""
        if self.histogram_round(device, round_number):
            return (SHARED_COUNTS,)
        dense = tuple(n for n in parameters if is_dense(n)) if device.shared_noise.dense_clip > 0 else ()
        return (ITEM_TABLE, *dense)

    def server_step(self, federation: FederationConfig) -> ServerStep:
        """The noisy gradient, applied as the pooled recipe's SGD (the dense layers at their own rate)."""
        shared = federation.device.shared_noise
        return ServerStep(shared.table_lr, shared.momentum, -1.0, shared.dense_lr)

    def initial_state(self, device: DeviceConfig) -> dict[str, torch.Tensor]:
        """The recipe's start: item rows from the public features (when named), the prior 0."""
        state = super().initial_state(device)
        source = device.shared_noise.feature_init
        if source:
            dim = device.model.embedding_dim
            features = public_item_features(source, device.n_items, "federation.device.shared_noise.feature_init")
            state[ITEM_TABLE][:, :dim] = feature_rows(features, dim, device.model.init_std, device.seed)
        model = device.model
        if model.uses_mlp and model.uses_gmf:  # NeuMF starts as GMF's dot product; the tower adds a residual
            tower = model.layers[-1]
            state[OUTPUT][:, :tower] = 0.0
            state[OUTPUT][:, tower:] = model.gmf_dim**-0.5
        return state

    def round_step(self, device: DeviceConfig, privacy: DevicePrivacy, round_number: int) -> AccountantStep:
        """One step per round: the histogram's (every record counted, rate 1) or one DP-SGD step's."""
        if self.histogram_round(device, round_number):
            return AccountantStep(device.shared_noise.count_sigma, 1.0, 1)
        return AccountantStep(privacy.noise_multiplier, self.sample_rate(device), 1)

    def sample_rate(self, device: DeviceConfig) -> float:
        return device.shared_noise.record_rate
