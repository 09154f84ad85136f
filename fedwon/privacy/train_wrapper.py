"""``TrainWrapper``: a Strategy wrapper that changes training only.

The DP wrappers (:class:`~fedwon.privacy.CentralDP`, :class:`~fedwon.privacy.ClientEpsilons`)
touch the train phase; evaluation passes through to the wrapped strategy unchanged. This base
holds that delegation once.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class TrainWrapper(Strategy):
    """Holds the wrapped ``strategy`` and forwards the evaluation hooks to it."""

    strategy: Strategy

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
