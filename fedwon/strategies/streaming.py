"""Streaming FedAvg: each reply folded into one running sum as it arrives, none kept.

Flower's ``FedAvg.aggregate_train`` needs every reply of the round at once, and
``Strategy.start`` still holds them while the next round trains: about two models per client of
the cohort (1,000 clients of a 1.6 MB model: ~3 GB, growing with the cohort). For strategies
whose aggregate is the example-weighted mean of the replies (:data:`STREAMABLE`, exact types)
the round rules instead add each usable reply to a :class:`RunningMean` and hand the inner
strategy **one** reply that holds the mean and the round's total weight. FedAvg's mean of a
single reply is that reply (every factor is ``w / w = 1.0``), FedAvgM, FedAdam, FedYogi,
FedAdagrad and LAMB apply their server step to it unchanged, and train metrics go through the
strategy's own ``train_metrics_aggr_fn`` on every reply's metrics (kept: a few numbers each).
So the strategy computes the same function of the replies; only the rounding differs: the sum
is ``sum(w_i * x_i) / sum(w_i)`` where FedAvg adds ``x_i * (w_i / W)``. Both engines and
deployments use the same formula, in partition order, so they still agree bit for bit.

Any other strategy or wrapper (DP clipping, robust aggregators, a user's own subclass) sees
every reply, exactly as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedwon.engine.fastarrays import payload_view
from fedwon.strategies.aggregation import reply_weight
from fedwon.strategies.aggregators import AGGREGATORS

__all__ = ["STREAMABLE", "RunningMean", "streams"]

STREAMABLE: tuple[type[Strategy], ...] = tuple(
    a.cls for a in AGGREGATORS.values() if a.weighted_mean
)
"""Strategies whose ``aggregate_train`` is FedAvg's weighted mean (then, for some, a server
optimizer step on it): Flower's FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad and
fedwon's LAMB. Exact types only: a subclass may aggregate differently."""


def streams(strategy: Strategy) -> bool:
    """Whether the round rules may fold ``strategy``'s train replies into a running mean."""
    return type(strategy) in STREAMABLE


class RunningMean:
    """The example-weighted mean of replies' arrays, one reply at a time.

    Memory: one sum and one scratch product per array, whatever the number of replies.
    """

    def __init__(self, weight_key: str) -> None:
        self.weight_key = weight_key
        self.total = 0.0
        self.count = 0
        self._record_names: tuple[str, str] | None = None
        self._sums: dict[str, np.ndarray] = {}
        self._scratch: dict[str, np.ndarray] = {}
        self._metrics: list[RecordDict] = []

    def add(self, reply: Message) -> None:
        """Add one usable reply (one ArrayRecord and one MetricRecord with the weight)."""
        content = reply.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            raise ValueError(
                f"reply from node {reply.metadata.src_node_id} has "
                f"{len(content.array_records)} array and {len(content.metric_records)} metric "
                "records; FedAvg aggregates replies with one of each"
            )
        (array_name, arrays), (metric_name, metrics) = (
            next(iter(content.array_records.items())),
            next(iter(content.metric_records.items())),
        )
        if self._record_names is None:
            self._record_names = (array_name, metric_name)
        elif set(arrays.keys()) != set(self._sums):
            raise ValueError(
                f"reply from node {reply.metadata.src_node_id} sends arrays "
                f"{sorted(set(arrays.keys()) ^ set(self._sums))[:5]} unlike the round's "
                "other replies"
            )
        weight = reply_weight(content, self.weight_key)
        for key, array in arrays.items():
            self._add_array(key, payload_view(array), weight)
        self._metrics.append(RecordDict({metric_name: metrics}))
        self.total += weight
        self.count += 1

    def _add_array(self, key: str, values: np.ndarray, weight: float) -> None:
        """``sum += values * weight`` in the dtype FedAvg's result would have (float32 stays
        float32; integer buffers such as BN's ``num_batches_tracked`` become float64)."""
        total = self._sums.get(key)
        if total is None:
            total = np.empty(values.shape, np.result_type(values.dtype, 1.0))
            self._sums[key] = np.multiply(values, weight, out=total)  # 0-d stays an array
            return
        if values.shape != total.shape:
            raise ValueError(f"array {key!r} has shape {values.shape}, others {total.shape}")
        scratch = self._scratch.get(key)
        if scratch is None:
            scratch = self._scratch[key] = np.empty_like(total)
        np.multiply(values, weight, out=scratch, dtype=total.dtype)
        total += scratch

    def reply(self, metrics_aggr_fn: Any) -> Message:
        """The mean as one reply carrying the total weight (see the module docstring)."""
        if self._record_names is None:
            raise ValueError("no replies were added")
        array_name, metric_name = self._record_names
        arrays = ArrayRecord(
            {k: Array(np.asarray(total / self.total)) for k, total in self._sums.items()}
        )
        metrics: MetricRecord = metrics_aggr_fn(self._metrics, self.weight_key)
        metrics[self.weight_key] = self.total
        content = RecordDict({array_name: arrays, metric_name: metrics})
        return Message(content, dst_node_id=0, message_type="train")
