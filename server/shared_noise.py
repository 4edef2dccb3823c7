"""The server's half of the ``distributed`` mechanism (federated_ddp): the noisy sum of the devices' shares
becomes one DP-SGD step of the pooled recipe.

Each reply is a node's sum over its devices; their sum is what SecAgg+ reveals. A round with fewer than
``min_devices`` reporting devices is dropped: its sum carries less than the noise sigma C the accountant
assumed, so it is never applied (the devices still count the step in their ledgers: the share was sent).
Round 1 (when ``count_sigma`` > 0) releases the item histogram; the server turns it into the frozen
popularity prior in the item table's last column. Every later sum is divided by the public expected batch
(q times the fleet's train records) and applied with SGD and momentum at the table learning rate:
post-processing of the released sums. The momentum buffer lives in memory: a resumed run restarts it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedrec.common.config import DeviceConfig
from fedrec.common.dp_recipe import feature_rows, log_odds_prior, public_item_features
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.model import NeuMF, global_state
from fedrec.common.replies import SHARED_COUNTS as COUNTS
from fedrec.server.strategies import aggregate_train_metrics

log = logging.getLogger("fedrec.server")
ITEM = "item_emb.weight"


def shared_initial_state(device: DeviceConfig) -> dict[str, torch.Tensor]:
    """The recipe's start: item rows from the public features (when named), prior column 0."""
    torch.manual_seed(device.seed)
    model = NeuMF(1, device.n_items, device.model)
    source = device.shared_noise.feature_init
    if source:
        dim = device.model.embedding_dim
        features = public_item_features(source, device.n_items, "federation.device.shared_noise.feature_init")
        with torch.no_grad():
            model.item_emb.weight[:, :dim] = feature_rows(features, dim, device.model.init_std, device.seed)
    return global_state(model)


def summed(replies: list[Message]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for reply in replies:
        for key, value in reply.content["arrays"].to_torch_state_dict().items():
            total[key] = total[key] + value.double() if key in total else value.double()
    return total


class SharedNoiseAggregation:
    """Placed between fedrec's strategy mixin and FedAvg: FedAvg samples and configures; this aggregates."""

    device: DeviceConfig = DeviceConfig()
    privacy: DevicePrivacy = DevicePrivacy()
    _current: dict[str, torch.Tensor] | None = None
    _momentum: dict[str, torch.Tensor] | None = None
    dropped_rounds: list[int]
    step: tuple[float, float, float] = (1.0, 0.0, -1.0)  # lr, momentum, sign of the sum

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays.to_torch_state_dict()
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = [m for m in replies if m.has_content()]
        if not replies or self._current is None:
            return None, None
        metrics = aggregate_train_metrics([m.content for m in replies], "num-examples")
        reported = int(metrics["devices"])
        state = {k: v.clone() for k, v in self._current.items()}
        minimum = self.device.shared_noise.min_devices
        if reported < minimum:
            log.warning("round %d: %d devices reported, fewer than %d: round dropped", server_round, reported, minimum)
            self.dropped_rounds.append(server_round)
            return ArrayRecord(state), metrics
        total = summed(replies)
        if COUNTS in total:
            prior = log_odds_prior(total[COUNTS], self.device.training.negatives)
            state[ITEM][:, self.device.model.embedding_dim :] = prior[:, None]
        else:
            self._step(state, total)
        return ArrayRecord(state), metrics

    def _step(self, state: dict[str, torch.Tensor], noisy_sums: dict[str, torch.Tensor]) -> None:
        """torch.optim.SGD's momentum on each summed parameter, its direction = sign x noisy sum / expected
        batch (the item table's gradient under distributed: sign -1; the mean model update under user: +1)."""
        lr, momentum, sign = self.step
        buffers = self._momentum if self._momentum is not None else {}
        for key, noisy_sum in noisy_sums.items():
            direction = sign * noisy_sum / self.privacy.expected_batch
            buffers[key] = momentum * buffers[key] + direction if key in buffers else direction
            state[key] = (state[key].double() + lr * buffers[key]).to(state[key].dtype)
        self._momentum = buffers
