"""Train rounds summed under Flower's SecAgg+, behind the Message-API strategies fedrec already runs.

``SecureAggregationGrid`` wraps the ServerApp's grid. A train round's messages (whatever the strategy
built: global arrays plus ``DeviceInstructions``) are carried through Flower's ``SecAggPlusWorkflow``
(setup, key sharing, masked vectors, unmasking) instead of being sent plainly, and the strategy gets
back one reply: the unmasked weighted mean with the total weight and the nodes' public metrics.
FedAvg, FedAvgM and FedAdam compute from that reply what they would from the individual replies,
so checkpoints, ``rounds.jsonl``, ``wire.jsonl`` and the final model are written as before.

The server process never holds one node's update: a node's masked vector is uniform noise without the
masks of the others, and unmasking needs ``reconstruction_threshold`` nodes' shares (the honest nodes
refuse to hand them out for fewer active nodes). A node that drops out after the key sharing is
recovered from its neighbours' shares; when too few remain the round is dropped (no update, the
global model stays) and the wire log says so. Under FedAvg the nodes send their update minus the global
parameters (``fedrec.client.secagg_mod``); the server adds them back. Under a shared-noise mechanism
they send their shares on SecAgg+'s grid and the strategy gets their exact sum
(``fedrec.common.secure_sum``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedrec.common.config import SecureAggregation, ServerConfig
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.record_values import bytes_list, scalar_float, scalar_int
from fedrec.common.secure_sum import SETTING, SumGrid
from fedrec.server.strategies import aggregate_train_metrics

log = logging.getLogger("flwr")  # Flower's logger: its lines reach the run log `fedrec server` streams

SECURE_DIRECTION = "up-secure"  # the wire-log line of a securely aggregated round


def quantization_bound(weights: Sequence[float], sa: SecureAggregation) -> float:
    """Largest error of any coordinate of the revealed weighted mean, given that every node's delta lies
    in [-clipping_range, clipping_range] and no weight exceeds ``max_weight``. Each node scales its delta
    by its quantized weight q_i and rounds it stochastically onto a grid of step 2c/T (error < one step);
    the sum of those errors is divided by the sum of the q_i, and the q_i themselves are the weights
    rounded to 1/T of max_weight. With every weight equal to max_weight this is 2c/T."""
    c, levels = sa.clipping_range, sa.quantization_range
    w = np.asarray(weights, dtype=np.float64)
    q = np.round(w / sa.max_weight * levels) / levels
    if q.sum() <= 0:
        return 0.0
    rounding = len(w) * (2 * c / levels) / q.sum()
    reweighting = c * np.abs(q / q.sum() - w / w.sum()).sum()
    return float(rounding + reweighting)


@dataclass
class SecureRound:
    """What one secure round did, as the wire log records it."""

    round: int
    sampled: int
    stages: list[dict] = field(default_factory=list)  # {"stage", "nodes"}: nodes still active after it
    weights: list[float] = field(default_factory=list)  # public weights of the nodes whose vector arrived
    metrics: list[MetricRecord] = field(default_factory=list)  # their public metrics (fedrec.common.replies)
    masked_bytes: int = 0
    aggregate: list[np.ndarray] | None = None  # the unmasked weighted mean of the deltas
    headroom: float | None = None  # shared noise: largest |sum| / clipping_range (near 1: it may have wrapped)

    def line(self, arrays: ArrayRecord | None) -> dict:
        return {
            "round": self.round,
            "direction": SECURE_DIRECTION,
            "nodes_sampled": self.sampled,
            "stages": self.stages,
            "masked_vectors": len(self.weights),
            "masked_bytes_total": self.masked_bytes,
            "revealed": self.aggregate is not None,
            **({"sum_headroom": round(self.headroom, 4)} if self.headroom is not None else {}),
            "aggregate_arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in (arrays or {}).items()},
        }


class _DelegatingGrid(Grid):
    """A grid that hands everything to another one; subclasses change ``send_and_receive``."""

    def __init__(self, grid: Grid):
        self._grid = grid

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class _RecordingGrid(_DelegatingGrid):
    """The real grid, noting what the masked-vector stage brought back (public parts only)."""

    def __init__(self, grid: Grid, record: SecureRound, sa: SecureAggregation):
        super().__init__(grid)
        self._record, self._sa = record, sa

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        masked = [m for m in replies if m.has_content() and "metrics" in m.content.metric_records]
        for reply in masked:
            weight = scalar_float(reply.content.metric_records["fitres.num_examples"], "num_examples")
            if weight > self._sa.max_weight:
                raise FedrecError(
                    f"round {self._record.round}: a node replied with weight {weight:g}, above "
                    f"{SETTING}.max_weight={self._sa.max_weight:g}: its update would be clipped; raise max_weight"
                )
            self._record.weights.append(weight)
            self._record.metrics.append(reply.content.metric_records["metrics"])
            sa_reply = reply.content.config_records[RECORD_KEY_CONFIGS]
            self._record.masked_bytes += sum(len(b) for b in bytes_list(sa_reply, Key.MASKED_PARAMETERS))
        return replies


class _RoundStrategy(Strategy):
    """The legacy strategy SecAggPlusWorkflow asks: the nodes the Message-API strategy sampled, and a
    place to keep the unmasked aggregate (aggregation itself stays with the Message-API strategy)."""

    def __init__(self, proxies: list[GridClientProxy], record: SecureRound):
        self._proxies, self._record = proxies, record

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, FitIns(Parameters(tensors=[], tensor_type=""), {})) for proxy in self._proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:
            self._record.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _Workflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ stages, with each node's train content the Message-API strategy built (instead of
    a legacy FitIns) and a note of how many nodes are left after each stage."""

    def __init__(self, contents: dict[int, RecordDict], record: SecureRound, sa: SecureAggregation):
        super().__init__(
            num_shares=sa.num_shares or 1.0,  # 1.0 = every sampled node
            reconstruction_threshold=sa.reconstruction_threshold,
            max_weight=sa.max_weight,
            clipping_range=sa.clipping_range,
            quantization_range=sa.quantization_range,
            modulus_range=sa.modulus_range,
            timeout=sa.timeout,
        )
        self._contents, self._record = contents, record

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        done = super().setup_stage(grid, context, state)
        state.nid_to_fitins = dict(self._contents)
        # A node that drops at setup (a device refusing the threshold) sent no keys, so no survivor holds a
        # share of its secrets nor a mask with it. Flower 1.42 still counts it among the sampled nodes and
        # asks the survivors for its shares at unmask, where each fails (KeyError) and the round is lost.
        state.sampled_node_ids = set(state.active_node_ids)
        return done

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError("the SecAgg+ workflow runs on a LegacyContext")
        state = WorkflowState()
        for name, stage in (
            ("setup", self.setup_stage),
            ("share keys", self.share_keys_stage),
            ("masked vectors", self.collect_masked_vectors_stage),
            ("unmask", self.unmask_stage),
        ):
            done = stage(grid, context, state)
            idle = done and name == "masked vectors" and not any(self._record.weights)
            self._record.stages.append({"stage": name, "nodes": len(state.active_node_ids)})
            log.info(
                "secure aggregation round %d: %s: %d of %d nodes%s",
                self._record.round,
                name,
                len(state.active_node_ids),
                self._record.sampled,
                " (too few: round dropped)" if not done else " (all weigh 0: nothing to reveal)" if idle else "",
            )
            if idle or not done:  # unmasking a zero total weight would divide by zero
                return


def _delta_to_arrays(delta: list[np.ndarray], sent: ArrayRecord) -> ArrayRecord:
    """The global arrays plus the revealed mean delta, under the names and dtypes the server sent."""
    state = sent.to_torch_state_dict()
    if len(delta) != len(state) or any(d.shape != tuple(v.shape) for d, v in zip(delta, state.values())):
        raise FedrecError("secure aggregation revealed arrays that do not match the global parameters")
    return ArrayRecord(
        {k: (v.double() + torch.from_numpy(np.asarray(d))).to(v.dtype) for (k, v), d in zip(state.items(), delta)}
    )


def _shared_sum(record: SecureRound, task: DeviceInstructions, sent: ArrayRecord, sa: SecureAggregation) -> ArrayRecord:
    """The exact sum of the nodes' grid-encoded shares, named as the task names a share."""
    assert record.aggregate is not None
    names = task.share_names(list(sent.keys()))
    if len(names) != len(record.aggregate):
        raise FedrecError(f"secure aggregation revealed {len(record.aggregate)} arrays, a share has {len(names)}")
    grid = SumGrid(sa.clipping_range, sa.quantization_range)
    sums = [grid.decode(mean, len(record.weights)) for mean in record.aggregate]
    record.headroom = max(grid.headroom(total) for total in sums)
    if record.headroom > 0.5:
        log.warning(
            "secure aggregation round %d: a summed coordinate reached %.0f%% of %s.clipping_range; "
            "beyond it sums wrap around: raise clipping_range",
            record.round,
            100 * record.headroom,
            SETTING,
        )
    return ArrayRecord({name: torch.from_numpy(total) for name, total in zip(names, sums)})


def _round_metrics(record: SecureRound, task: DeviceInstructions) -> MetricRecord:
    """The nodes' public metrics merged as the strategy merges replies. A dropped round carries no weight
    and no devices, but the budget its devices spent training (their epsilons) still counts."""
    if not record.metrics:
        keys = task.mechanism.reply_keys("train", task.privacy.private)
        return MetricRecord({key: ([] if key == "epsilons" else 0) for key in keys})
    merged = aggregate_train_metrics([RecordDict({"metrics": m}) for m in record.metrics], "num-examples")
    if record.aggregate is None:
        merged["num-examples"], merged["devices"] = 0, 0
    return merged


def secure_train_round(grid: Grid, messages: list[Message], sa: SecureAggregation, wire_log: Path | None) -> Message:
    """One train round under SecAgg+; the reply the Message-API strategy aggregates (weight 0 = dropped)."""
    first = messages[0]
    config = first.content.config_records["config"]
    record = SecureRound(round=scalar_int(config, "server-round", default=0), sampled=len(messages))
    if len(messages) * sa.quantization_range >= sa.modulus_range:
        raise FedrecError(
            f"{SETTING}: {len(messages)} nodes x quantization_range {sa.quantization_range} would overflow "
            f"modulus_range {sa.modulus_range}; lower quantization_range or sample fewer nodes"
        )
    # One RecordDict per node: the workflow adds each node's own key shares to it (strategies share one).
    contents = {m.metadata.dst_node_id: RecordDict(dict(m.content.items())) for m in messages}
    proxies = [GridClientProxy(nid, grid, grid.run.run_id) for nid in contents]
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=_RoundStrategy(proxies, record),
        client_manager=SimpleClientManager(),
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: record.round})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    _Workflow(contents, record, sa)(_RecordingGrid(grid, record, sa), context)

    task = DeviceInstructions.from_config(dict(config))
    sent = first.content.array_records["arrays"]
    if record.aggregate is None:
        arrays = sent
    elif task.mechanism.shared:
        arrays = _shared_sum(record, task, sent, sa)
    else:
        arrays = _delta_to_arrays(record.aggregate, sent)
    metrics = _round_metrics(record, task)
    if wire_log is not None:
        with wire_log.open("a") as fh:
            fh.write(json.dumps(record.line(arrays if record.aggregate is not None else None)) + "\n")
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=first)


def secure_grid(grid: Grid, server: ServerConfig) -> Grid:
    """``grid`` itself, or (``server.secure_aggregation.enabled``) the grid that sums train replies under SecAgg+."""
    if not server.secure_aggregation.enabled:
        return grid
    return SecureAggregationGrid(
        grid, server.secure_aggregation, Path(server.out_dir or "fedrec-server") / "wire.jsonl"
    )


class SecureAggregationGrid(_DelegatingGrid):
    """The ServerApp's grid, with every train round carried through SecAgg+ (other messages pass as they are)."""

    def __init__(self, grid: Grid, sa: SecureAggregation, wire_log: Path | None):
        super().__init__(grid)
        self._sa, self._wire_log = sa, wire_log

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        return [secure_train_round(self._grid, messages, self._sa, self._wire_log)]
