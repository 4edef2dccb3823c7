"""SecAgg+ on the device: Flower's ``secaggplus_mod`` in front of fedrec's own train handler.

The four SecAgg+ stages arrive as train messages that carry Flower's ``secaggplus_configs`` record;
``secaggplus_mod`` answers the key stages itself and, in the masked-vector stage, calls the train
handler the plain path uses (same stores, same training, same replies), then quantizes, masks and
sends the result. In between, this module turns the handler's reply into what the mod expects (a
legacy FitRes layout). Under FedAvg it replaces the trained global parameters by their difference from
the ones the server sent: a round's update is small, so it fits the clipping range where the weights
need not. Under a shared-noise mechanism the reply already is the node's share of a sum; it goes on
SecAgg+'s grid as it is (``fedrec.common.secure_sum``), with the largest weight so that SecAgg+ scales
it by exactly one. The reply keeps its public metrics record (``fedrec.common.replies``) beside the
masked vector.

A device whose node config says ``secure-aggregation="required"`` (``fedrec client
--require-secure-aggregation``) refuses to answer a train request outside SecAgg+. A deployed device
(its node config names its store) refuses a shared-noise round outside SecAgg+ in any case: it adds
only its share of the noise, which protects nothing unless the server sees no less than the sum.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions
from fedrec.common.policy import deployed, node_policy
from fedrec.common.record_values import scalar_float, scalar_int
from fedrec.common.secure_sum import SumGrid

log = logging.getLogger("fedrec.client")

REQUIRE_KEY = "secure-aggregation"  # node config key; value "required"
REFUSED = 2  # error code of a refused plain train request


def under_secure_aggregation(msg: Message) -> bool:
    return msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records


def update_delta(sent: Message, reply: Message) -> list[np.ndarray]:
    """The trained global parameters minus the ones the server sent, in the order it sent them."""
    given, trained = sent.content.array_records["arrays"], reply.content.array_records["arrays"]
    if list(given.keys()) != list(trained.keys()):
        raise FedrecError("the train reply's arrays do not match the global parameters the server sent")
    return [
        np.asarray(t, dtype=np.float64) - np.asarray(g, dtype=np.float64)
        for t, g in zip(trained.to_numpy_ndarrays(), given.to_numpy_ndarrays())
    ]


def share_vector(task: DeviceInstructions, sent: Message, reply: Message, grid: SumGrid) -> list[np.ndarray]:
    """A shared-noise reply's arrays, in the order the task names them, on SecAgg+'s grid."""
    names = task.share_names(list(sent.content.array_records["arrays"].keys()))
    arrays = reply.content.array_records["arrays"]
    if sorted(names) != sorted(arrays.keys()):
        raise FedrecError(f"the share's arrays {sorted(arrays.keys())} are not the round's {sorted(names)}")
    rng = np.random.default_rng()  # rounding randomness from the operating system
    return [grid.encode(arrays[name].numpy(), rng) for name in names]


def as_fit_reply(sent: Message, reply: Message, context: Context) -> Message:
    """The handler's reply in the layout ``secaggplus_mod`` reads: the delta (FedAvg) or the share (a
    shared-noise mechanism) as FitRes parameters, the weight as FitRes' example count, the public metrics
    alongside."""
    if reply.has_error():
        raise FedrecError(reply.error.reason)
    metrics = reply.content.metric_records["metrics"]
    task = instructions(sent)
    if task is not None and task.mechanism.shared:
        state = context.state.config_records[RECORD_KEY_STATE]
        grid = SumGrid(scalar_float(state, "clipping_range"), scalar_int(state, "target_range"))
        vector, weight = share_vector(task, sent, reply, grid), scalar_int(state, "max_weight")
    else:
        vector, weight = update_delta(sent, reply), scalar_int(metrics, "num-examples")
    fit = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vector), weight, {})
    content = compat.fitres_to_recorddict(fit, keep_input=False)
    content["metrics"] = metrics
    return Message(content, reply_to=sent)


def instructions(msg: Message) -> DeviceInstructions | None:
    """The round's instructions, or None when they are missing or malformed (the train handler then
    answers with its own error reply)."""
    config = msg.content.config_records.get("config")
    try:
        return None if config is None else DeviceInstructions.from_config(dict(config))
    except FedrecError:
        return None


def _plain_refusal(msg: Message, context: Context) -> str | None:
    if str(context.node_config.get(REQUIRE_KEY, "")) == "required":
        return "this device answers train requests only under secure aggregation (SecAgg+)"
    task = instructions(msg) if deployed(context.node_config) else None
    if task is not None and task.mechanism.shared:
        return "a shared-noise round (privacy.mechanism distributed or user) needs secure aggregation (SecAgg+)"
    return None


def _threshold_refusal(msg: Message, context: Context) -> str | None:
    """At SecAgg+'s setup stage: does the server's reconstruction threshold meet the owner's minimum? (A
    threshold of 1 would let the server unmask any one device's update from a single share.)"""
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) != Stage.SETUP:
        return None
    try:
        threshold = scalar_int(configs, Key.THRESHOLD)
        return node_policy(context.node_config).secagg_refusal(threshold)
    except FedrecError as exc:
        return str(exc)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ for train messages that ask for it; everything else goes straight to the handler."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    reason = None
    if not under_secure_aggregation(msg):
        reason = _plain_refusal(msg, context) if msg.has_content() else None
        if reason is None:
            return call_next(msg, context)
    else:
        reason = _threshold_refusal(msg, context)
    if reason:
        log.error("node %s: %s", context.node_id, reason)
        return Message(Error(code=REFUSED, reason=reason), reply_to=msg)
    try:
        return secaggplus_mod(msg, context, lambda m, c: as_fit_reply(m, call_next(m, c), c))
    except Exception as exc:  # noqa: BLE001 - the server treats an error reply as this node dropping out
        log.exception("secure aggregation failed on node %s", context.node_id)
        return Message(Error(code=1, reason=f"secure aggregation: {type(exc).__name__}: {exc}"), reply_to=msg)
