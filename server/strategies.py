"""Flower strategies by name, each extended with what fedrec's server needs and Flower's lack:
a record of what crossed the wire, zero-weight replies (nodes whose devices all sat out or hit their
budget) dropped before averaging, and per-device epsilons collected instead of averaged."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

from fedrec.common.config import StrategyConfig
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, RoundInfo
from fedrec.common.item_rows import COUNTS, ITEM_TABLE, for_weighted_mean
from fedrec.common.record_values import float_list, scalar_float, scalar_int

if TYPE_CHECKING:
    FlowerStrategy = FedAvg  # what fedrec's classes sit in front of (a Flower strategy, for the type checker)
else:
    FlowerStrategy = object

LIST_KEYS = ("epsilons",)
SUM_KEYS = ("num-examples", "devices", "refused")
MAX_KEYS = ("epsilon-max", "steps-max")


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Sums, maxima and concatenated lists where a weighted mean would be wrong; weighted mean otherwise."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(scalar_float(m, weighted_by_key) for m in metrics) or 1.0
    out: dict = {}
    for key in metrics[0].keys():
        values = [m[key] for m in metrics]
        if key in LIST_KEYS:
            out[key] = [v for m in metrics for v in float_list(m, key)]
        elif key in SUM_KEYS:
            out[key] = sum(values)
        elif key in MAX_KEYS:
            out[key] = max(values)
        else:
            out[key] = sum(scalar_float(m, key) * scalar_float(m, weighted_by_key) for m in metrics) / total
    return MetricRecord(out)


def _array_stats(arrays: ArrayRecord) -> dict:
    return {
        name: {"shape": list(arr.shape), "dtype": str(arr.dtype), "bytes": len(arr.data)}
        for name, arr in arrays.items()
    }


class FedrecStrategyMixin(FlowerStrategy):
    """Mixed in front of a Flower strategy. Every message carries ``instructions`` with this round's facts
    (absolute round number, final-evaluation flag); ``wire_log`` is a JSONL path or None. The remaining
    keyword arguments are the Flower strategy's own."""

    def __init__(
        self,
        *,
        instructions: DeviceInstructions,
        round_offset: int = 0,
        last_round: int = 0,
        eval_every: int = 1,
        wire_log: Path | None = None,
        **flower: Any,
    ) -> None:
        super().__init__(**flower)
        self.instructions = instructions
        self.round_offset = round_offset  # rounds a resumed run already has behind it
        self.last_round = last_round  # the final round (of this start) is always evaluated
        self.eval_every = eval_every
        self.wire_log = wire_log
        self.last_train_metrics: MetricRecord | None = None
        self.last_evaluate_metrics: MetricRecord | None = None
        self.sent_arrays: ArrayRecord | None = None  # this round's global model, as sent

    @staticmethod
    def options(cfg: StrategyConfig, local_lr: float) -> dict[str, Any]:
        """The Flower strategy's own keyword arguments from fedrec's settings (none for FedAvg)."""
        return {}

    def _config(self, server_round: int, final: bool) -> ConfigRecord:
        info = RoundInfo(number=self.round_offset + server_round, final=final)
        return ConfigRecord(replace(self.instructions, round=info).to_config())

    def _log_wire(
        self,
        server_round: int,
        direction: str,
        arrays_list: list[ArrayRecord],
        metrics: list[MetricRecord] | None = None,
    ) -> None:
        """One line per round and direction: array names, shapes and sizes, and every metric key replied."""
        if self.wire_log is None or not (arrays_list or metrics):
            return
        stats = _array_stats(arrays_list[0]) if arrays_list else {}
        line = {
            "round": server_round,
            "direction": direction,
            "arrays": stats,
            "n_messages": len(arrays_list or metrics or []),
            "bytes_total": sum(sum(len(a.data) for a in arrs.values()) for arrs in arrays_list),
            "same_names_in_all": all(set(a.keys()) == set(stats) for a in arrays_list),
        }
        if metrics is not None:
            line["metric_keys"] = sorted({key for record in metrics for key in record})
        with self.wire_log.open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    def _average_item_rows(self, replies: list[Message]) -> None:
        """Replies with per-row example counts (training without DP) are rewritten in place so that the
        strategy's weighted mean gives each item row its count-weighted mean (fedrec.common.item_rows)."""
        if (
            not replies
            or not all(COUNTS in m.content.array_records["arrays"] for m in replies)
            or self.sent_arrays is None
        ):
            return
        arrays: list[Mapping[str, np.ndarray]] = [
            {k: a.numpy() for k, a in m.content.array_records["arrays"].items()} for m in replies
        ]
        weights = [scalar_float(m.content.metric_records["metrics"], "num-examples") for m in replies]
        rewritten = for_weighted_mean(arrays, weights, self.sent_arrays[ITEM_TABLE].numpy())
        for message, new in zip(replies, rewritten):
            message.content["arrays"] = ArrayRecord({k: Array(v) for k, v in new.items()})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.sent_arrays = arrays
        config = self._config(server_round, final=False)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._log_wire(server_round, "down", [m.content.array_records["arrays"] for m in messages])
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not any(m.has_content() for m in replies):
            reasons = sorted({m.error.reason or f"error code {m.error.code}" for m in replies if m.has_error()})
            reasons = reasons or ["no replies"]
            raise FedrecError(f"round {server_round}: no node replied with an update ({'; '.join(reasons)[:500]})")
        answered = [m for m in replies if m.has_content()]
        self._log_wire(
            server_round,
            "up",
            [m.content.array_records["arrays"] for m in answered],
            [m.content.metric_records["metrics"] for m in answered],
        )
        useful = [
            m
            for m in replies
            if not m.has_content() or scalar_float(m.content.metric_records["metrics"], "num-examples") > 0
        ]
        idle = [m for m in replies if m not in useful]
        self._average_item_rows([m for m in useful if m.has_content()])
        arrays, metrics = (None, None)
        if any(m.has_content() for m in useful):
            arrays, metrics = super().aggregate_train(server_round, useful)
        if idle and metrics is not None:
            extra = aggregate_train_metrics([m.content for m in idle], "num-examples")
            metrics["refused"] = scalar_int(metrics, "refused", default=0) + scalar_int(extra, "refused")
            metrics["epsilons"] = float_list(metrics, "epsilons", default=[]) + float_list(extra, "epsilons")
        elif idle:
            metrics = aggregate_train_metrics([m.content for m in idle], "num-examples")
        self.last_train_metrics = metrics
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        final = server_round == self.last_round
        # A private device's evaluation reply carries a count only (common/replies.py): a mid-run round
        # would cost every device a serving refit and tell the server nothing.
        if not final and (server_round % self.eval_every or self.instructions.privacy.private):
            self.last_evaluate_metrics = None
            return []
        config = self._config(server_round, final=final)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        metrics_list = [m.content.metric_records["metrics"] for m in replies if m.has_content()]
        self._log_wire(server_round, "evaluate", [], metrics_list)
        metrics = super().aggregate_evaluate(server_round, replies)
        self.last_evaluate_metrics = metrics
        return metrics


class FedrecFedAvg(FedrecStrategyMixin, FedAvg):
    """Flower's FedAvg with fedrec's mixin."""


class FedrecFedAvgM(FedrecStrategyMixin, FedAvgM):
    """Flower's FedAvgM with fedrec's mixin."""

    @staticmethod
    def options(cfg: StrategyConfig, local_lr: float) -> dict[str, Any]:
        return {"server_learning_rate": cfg.server_lr, "server_momentum": cfg.server_momentum}


class FedrecFedAdam(FedrecStrategyMixin, FedAdam):
    """Flower's FedAdam with fedrec's mixin."""

    @staticmethod
    def options(cfg: StrategyConfig, local_lr: float) -> dict[str, Any]:
        return {"eta": cfg.server_lr, "eta_l": local_lr, "tau": cfg.tau}


STRATEGIES: dict[str, type[FedrecStrategyMixin]] = {
    "fedavg": FedrecFedAvg,
    "fedavgm": FedrecFedAvgM,
    "fedadam": FedrecFedAdam,
}


def node_sampling(cfg: StrategyConfig) -> dict[str, Any]:
    """Flower's keyword arguments for sampling nodes and aggregating train metrics (every strategy's)."""
    return dict(
        fraction_train=cfg.node_fraction,
        fraction_evaluate=cfg.node_fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes,
        min_available_nodes=cfg.min_nodes,
        train_metrics_aggr_fn=aggregate_train_metrics,
    )


def build_strategy(
    cfg: StrategyConfig,
    local_lr: float,
    instructions: DeviceInstructions,
    *,
    round_offset: int,
    last_round: int,
    eval_every: int,
    wire_log: Path | None,
) -> FedrecStrategyMixin:
    """The named Flower strategy with fedrec's mixin in front (names are checked by StrategyConfig)."""
    strategy_cls = STRATEGIES[cfg.name]
    return strategy_cls(
        instructions=instructions,
        round_offset=round_offset,
        last_round=last_round,
        eval_every=eval_every,
        wire_log=wire_log,
        **node_sampling(cfg),
        **strategy_cls.options(cfg, local_lr),
    )
