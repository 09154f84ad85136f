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

Per reply the fold costs what a bare loop's running sum costs, plus one read of each weighted
product for the NaN/Inf check (``add(check_finite=True)``: refused replies add nothing and are
named as the separate check names them). Per round, the mean is divided in place and handed
on as it is: on the fast engine it lives in torch memory (``empty_result``), FedAvg's mean of
that one reply shares it, and clients clone it copy-on-write. On the fast engine, a streamed
client's reply holds copy-on-write snapshots of its model's tensors, not copies
(``fastarrays.lazy_snapshots``): the reply is folded and dropped before the next client writes
the model, so no copy is ever made.

Any other strategy or wrapper (DP clipping, robust aggregators, a user's own subclass) sees
every reply, exactly as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedwon.engine.fastarrays import adopt_result, empty_result, payload_view
from fedwon.strategies.aggregation import finite_probe, non_finite_arrays, reply_weight
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

    def add(self, reply: Message, *, check_finite: bool = False) -> list[str]:
        """Add one reply (one ArrayRecord and one MetricRecord with the weight).

        ``check_finite``: unless every float array of the reply is finite, add nothing and
        return the names of those holding NaN or Inf (in record order, as
        :func:`~fedwon.strategies.aggregation.non_finite_arrays` names them). The check reads
        each weighted product right after computing it (:func:`finite_probe`: one BLAS pass),
        before any is added: NaN and Inf survive the multiplication by a weight, and a product
        that is not finite although its values are (it overflowed) is added, as before. (Tried:
        the products a cache-sized chunk at a time, checked and added into a second buffer so
        that a reply found non-finite halfway leaves the sums untouched: slower, as writing a
        new buffer costs more than adding in place.)"""
        content = reply.content
        node = reply.metadata.src_node_id
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            if check_finite and (bad := non_finite_arrays(content)):
                return bad
            raise ValueError(
                f"reply from node {node} has {len(content.array_records)} array and "
                f"{len(content.metric_records)} metric records; FedAvg aggregates replies "
                "with one of each"
            )
        (array_name, arrays), (metric_name, metrics) = (
            next(iter(content.array_records.items())),
            next(iter(content.metric_records.items())),
        )
        first = self._record_names is None
        if not first and arrays.keys() != self._sums.keys():
            raise ValueError(
                f"reply from node {node} sends arrays "
                f"{sorted(set(arrays.keys()) ^ set(self._sums))[:5]} unlike the round's "
                "other replies"
            )
        weight = reply_weight(content, self.weight_key)
        products = {}
        bad = []
        with np.errstate(over="ignore", invalid="ignore"):  # overflows: the server's check
            for key, array in arrays.items():
                values = payload_view(array)
                product = self._product(key, values, weight, first)
                if (
                    check_finite
                    and values.dtype.kind == "f"
                    and not finite_probe(product)
                    and not np.isfinite(values).all()
                ):
                    bad.append(key)
                products[key] = product
        if bad:
            return bad
        if first:
            self._record_names = (array_name, metric_name)
            self._sums = products
        else:
            for key, total in self._sums.items():
                total += products[key]
        self._metrics.append(RecordDict({metric_name: metrics}))
        self.total += weight
        self.count += 1
        return []

    def _product(self, key: str, values: np.ndarray, weight: float, first: bool) -> np.ndarray:
        """``values * weight`` in the dtype FedAvg's result would have (float32 stays float32;
        integer buffers such as BN's ``num_batches_tracked`` become float64): a new array
        for the first reply (the sum to be), else written into this key's scratch array."""
        if first:
            out = empty_result(values.shape, np.result_type(values.dtype, 1.0))
            return np.multiply(values, weight, out=out)  # 0-d stays an array
        total = self._sums[key]
        if values.shape != total.shape:
            raise ValueError(f"array {key!r} has shape {values.shape}, others {total.shape}")
        scratch = self._scratch.get(key)
        if scratch is None:
            scratch = self._scratch[key] = np.empty_like(total)
        return np.multiply(values, weight, out=scratch, dtype=total.dtype)

    def reply(self, metrics_aggr_fn: Any) -> Message:
        """The mean as one reply carrying the total weight (see the module docstring)."""
        if self._record_names is None:
            raise ValueError("no replies were added")
        array_name, metric_name = self._record_names
        arrays = ArrayRecord()
        for key, total in self._sums.items():
            # divided in place and handed over as the payload: no copy of the mean
            np.divide(total, self.total, out=total)
            arrays[key] = adopt_result(total)
        self._sums, self._scratch = {}, {}
        metrics: MetricRecord = metrics_aggr_fn(self._metrics, self.weight_key)
        metrics[self.weight_key] = self.total
        content = RecordDict({array_name: arrays, metric_name: metrics})
        return Message(content, dst_node_id=0, message_type="train")
