"""The fedrec ClientApp (Flower Message API): local DP-SGD training and on-device evaluation.

Replies carry the global parameters only (dense state_dict entries, never ``user_emb.*``) and scalar
metrics. A ClientApp that raises can hang a simulation (stack-notes), so failures are caught and
reported as an error reply with a reason.
"""

from __future__ import annotations

import logging
import traceback

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.fleet import evaluate_fleet, node_devices, train_fleet
from fedrec.common.model import is_local
from fedrec.common.run_config import merged, model_config

app = ClientApp()
log = logging.getLogger("fedrec.client")


def _settings(msg: Message, context: Context) -> dict:
    sent = dict(msg.content["config"]) if "config" in msg.content else {}
    return merged(context.run_config, sent)


def _global_params(msg: Message) -> dict[str, torch.Tensor]:
    state = msg.content["arrays"].to_torch_state_dict()
    leaked = [k for k in state if is_local(k)]
    if leaked:
        raise ValueError(f"server sent local parameters {leaked}: refusing")
    return state


def _error_reply(msg: Message, context: Context, what: str, exc: Exception) -> Message:
    log.error("%s failed on node %s:\n%s", what, context.node_id, traceback.format_exc())
    return Message(error=Error(code=1, reason=f"{what} failed: {type(exc).__name__}: {exc}"), reply_to=msg)


def _setup() -> None:
    torch.set_num_threads(1)  # one core per ClientApp; the simulation runs several side by side


def _reply(msg: Message, context: Context, what: str, work) -> Message:
    """Reply with ``work(cfg, devices)`` for this node's devices; any failure becomes an error reply."""
    _setup()
    try:
        cfg = _settings(msg, context)
        devices = node_devices(context.node_config, cfg)
        return Message(content=work(cfg, devices), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - reported to the server instead of hanging the run
        return _error_reply(msg, context, what, exc)


@app.train()
def train(msg: Message, context: Context) -> Message:
    def work(cfg: dict, devices) -> RecordDict:
        params = _global_params(msg)
        mean, metrics = train_fleet(devices, params, model_config(cfg), cfg, int(msg.content["config"]["server-round"]) + int(cfg["round-offset"]))
        return RecordDict({"arrays": ArrayRecord(mean), "metrics": MetricRecord(metrics)})

    return _reply(msg, context, "train", work)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    def work(cfg: dict, devices) -> RecordDict:
        return RecordDict({"metrics": MetricRecord(evaluate_fleet(devices, _global_params(msg), model_config(cfg), cfg))})

    return _reply(msg, context, "evaluate", work)
