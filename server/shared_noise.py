"""The server's half of the ``distributed`` mechanism (federated_ddp): the noisy sum of the devices' shares
becomes one DP-SGD step of the pooled recipe.

Each reply is a node's sum over its devices; their sum is what SecAgg+ reveals. A round with fewer than
``min_devices`` reporting devices is dropped: its sum carries less than the noise sigma C the accountant
assumed, so it is never applied (the devices still count the step in their ledgers: the share was sent).
Round 1 (when ``count_sigma`` > 0) releases the item histogram; the server turns it into the model's
fixed popularity prior (``item_prior``, never trained). Every later sum is divided by the public expected batch
(q times the fleet's train records) and applied with SGD and momentum at the table learning rate:
post-processing of the released sums. The momentum buffer lives in memory: a resumed run restarts it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrec.common.config import DeviceConfig, FederationConfig
from fedrec.common.dp_recipe import log_odds_prior
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy
from fedrec.common.mechanisms import ServerStep
from fedrec.common.model import PRIOR
from fedrec.common.record_values import scalar_int
from fedrec.common.replies import SHARED_COUNTS as COUNTS
from fedrec.server.strategies import FedrecStrategyMixin, FlowerStrategy, aggregate_train_metrics, node_sampling

log = logging.getLogger("fedrec.server")
ITEM = "item_emb.weight"


def summed(replies: list[Message]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for reply in replies:
        for key, value in reply.content.array_records["arrays"].to_torch_state_dict().items():
            total[key] = total[key] + value.double() if key in total else value.double()
    return total


class SharedNoiseAggregation(FlowerStrategy):
    """Placed between fedrec's strategy mixin and FedAvg: FedAvg samples and configures; this aggregates
    the round's sum and applies ``step`` to it. The remaining keyword arguments are FedAvg's."""

    def __init__(self, *, device: DeviceConfig, privacy: DevicePrivacy, step: ServerStep, **flower: Any) -> None:
        super().__init__(**flower)
        self.device = device
        self.privacy = privacy
        self.step = step
        self.dropped_rounds: list[int] = []  # rounds whose sum held fewer than min_devices devices
        self._current: dict[str, torch.Tensor] | None = None
        self._momentum: dict[str, torch.Tensor] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays.to_torch_state_dict()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [m for m in replies if m.has_content()]
        if not replies or self._current is None:
            return None, None
        metrics = aggregate_train_metrics([m.content for m in replies], "num-examples")
        reported = scalar_int(metrics, "devices")
        state = {k: v.clone() for k, v in self._current.items()}
        minimum = self.device.shared_noise.min_devices
        if reported < minimum:
            log.warning("round %d: %d devices reported, fewer than %d: round dropped", server_round, reported, minimum)
            self.dropped_rounds.append(server_round)
            return ArrayRecord(state), metrics
        total = summed(replies)
        if COUNTS in total:
            state[PRIOR] = log_odds_prior(total[COUNTS], self.device.training.negatives)
        else:
            self._step(state, total)
        return ArrayRecord(state), metrics

    def _step(self, state: dict[str, torch.Tensor], noisy_sums: dict[str, torch.Tensor]) -> None:
        """torch.optim.SGD's momentum on each summed parameter, its direction = sign x noisy sum / expected
        batch (the item table's gradient under distributed: sign -1; the mean model update under user: +1)."""
        if self._momentum is None:
            self._momentum = {}
        self.step.apply(state, noisy_sums, self.privacy.expected_batch, self._momentum)


class SharedNoiseStrategy(FedrecStrategyMixin, SharedNoiseAggregation, FedAvg):
    """The strategy of a shared-noise mechanism: fedrec's mixin, this aggregation, Flower's FedAvg."""


def build_shared_strategy(
    federation: FederationConfig,
    instructions: DeviceInstructions,
    step: ServerStep,
    *,
    round_offset: int,
    last_round: int,
    eval_every: int,
    wire_log: Path | None,
) -> SharedNoiseStrategy:
    return SharedNoiseStrategy(
        instructions=instructions,
        round_offset=round_offset,
        last_round=last_round,
        eval_every=eval_every,
        wire_log=wire_log,
        device=instructions.device,
        privacy=instructions.privacy,
        step=step,
        **node_sampling(federation.server.strategy),
    )
