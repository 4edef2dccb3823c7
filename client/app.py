"""The fedrec ClientApp (Flower Message API): local DP-SGD training and on-device evaluation.

Replies carry the global parameters only (dense state_dict entries, never ``user_emb.*``) and scalar
metrics. A ClientApp that raises can hang a Flower 1.42 simulation without a word, so failures are caught and
reported as an error reply with a reason.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.secagg_mod import secure_aggregation_mod
from fedrec.common.errors import FedrecError
from fedrec.common.flower_logs import single_flower_lines

if TYPE_CHECKING:
    import torch

    from fedrec.client.device_round import DeviceRef
    from fedrec.common.instructions import DeviceInstructions
    from fedrec.common.policy import DevicePolicy

# Torch, Opacus and the device code load with the first train or evaluate request, not on import: a
# SuperNode starts one ClientApp process per message, and SecAgg+'s key stages need none of them.
single_flower_lines()
app = ClientApp(mods=[secure_aggregation_mod])  # SecAgg+ when a train message asks for it
log = logging.getLogger("fedrec.client")
# A mechanism's node round: (devices, global parameters, instructions, owner's policy) -> (sum or mean, metrics)
FleetTrainer = Callable[
    ["list[DeviceRef]", "dict[str, torch.Tensor]", "DeviceInstructions", "DevicePolicy"],
    "tuple[dict[str, torch.Tensor], dict[str, Any]]",
]


def _instructions(msg: Message) -> DeviceInstructions:
    """Only what the server sent: the device section whole, the privacy mechanism, this round's facts."""
    from fedrec.common.instructions import DeviceInstructions

    if "config" not in msg.content:
        raise FedrecError("the server sent no config record")
    return DeviceInstructions.from_config(dict(msg.content["config"]))


def _global_params(msg: Message) -> dict[str, torch.Tensor]:
    from fedrec.common.model import is_local

    state = msg.content.array_records["arrays"].to_torch_state_dict()
    leaked = [k for k in state if is_local(k)]
    if leaked:
        raise ValueError(f"server sent local parameters {leaked}: refusing")
    return state


def _error_reply(msg: Message, context: Context, what: str, exc: Exception) -> Message:
    log.error("%s failed on node %s:\n%s", what, context.node_id, traceback.format_exc())
    return Message(error=Error(code=1, reason=f"{what} failed: {type(exc).__name__}: {exc}"), reply_to=msg)


def _setup() -> None:
    import torch

    torch.set_num_threads(1)  # one core per ClientApp; the simulation runs several side by side


Work = Callable[["DeviceInstructions", "list[DeviceRef]", "DevicePolicy"], RecordDict]


def _reply(msg: Message, context: Context, what: str, work: Work) -> Message:
    """Reply with ``work(task, devices, policy)`` for this node's devices under its owner's policy; any
    failure becomes an error reply."""
    _setup()
    try:
        from fedrec.client.fleet import node_devices
        from fedrec.common.policy import node_policy

        task = _instructions(msg)
        policy = node_policy(context.node_config)
        refused = policy.model_refusal(task.device.model)
        if refused:
            raise FedrecError(refused)
        devices = node_devices(context.node_config, task.device.fleet)
        return Message(content=work(task, devices, policy), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - reported to the server instead of hanging the run
        return _error_reply(msg, context, what, exc)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from fedrec.client.fleet import train_fleet
    from fedrec.client.shared_noise import train_fleet_shared
    from fedrec.client.user_level import train_fleet_user
    from fedrec.common.mechanisms import Trainer

    trainers: dict[Trainer, FleetTrainer] = {
        Trainer.LOCAL: train_fleet,
        Trainer.SHARED_GRADIENTS: train_fleet_shared,
        Trainer.USER_UPDATES: train_fleet_user,
    }

    def work(task: DeviceInstructions, devices: list[DeviceRef], policy: DevicePolicy) -> RecordDict:
        update, metrics = trainers[task.mechanism.trainer](devices, _global_params(msg), task, policy)
        return RecordDict({"arrays": ArrayRecord(update), "metrics": MetricRecord(metrics)})

    return _reply(msg, context, "train", work)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from fedrec.client.fleet import evaluate_fleet

    def work(task: DeviceInstructions, devices: list[DeviceRef], policy: DevicePolicy) -> RecordDict:
        return RecordDict({"metrics": MetricRecord(evaluate_fleet(devices, _global_params(msg), task))})

    return _reply(msg, context, "evaluate", work)
