"""The server side of sample-level DP: every client's own epsilon, and the round's maximum.

With ``dp.level = "sample"`` each client runs DP-SGD (:mod:`fedwon.privacy.dp_sgd`) and its
epsilon depends on its own data size and on how often it was sampled, so clients differ. A
guarantee holds for the *worst* client, so the round's ``epsilon`` is the maximum over the
clients that trained in it -- not the weighted mean Flower's metric aggregation would give.
Each client's epsilon only grows, so the maximum over all rows of ``metrics.jsonl`` is the
maximum over every client of the run so far.

:class:`ClientEpsilons` wraps any strategy (inside the round rules, as
:class:`~fedwon.privacy.CentralDP` does) and refuses a reply that carries no epsilon: that
client did not run DP-SGD (e.g. an older ClientApp, which ignores the DP-SGD settings it does
not know), so its update is not aggregated and the run stops saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedwon.common.records import EPSILON_METRIC
from fedwon.privacy.train_wrapper import TrainWrapper

log = logging.getLogger(__name__)


class MissingEpsilonError(RuntimeError):
    """A reply of a DP-SGD run carries no epsilon: its client trained without DP-SGD."""


def reply_epsilon(msg: Message) -> float | None:
    """The epsilon a train reply reports in its MetricRecord, or ``None``."""
    for record in msg.content.metric_records.values():
        value = record.get(EPSILON_METRIC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


class ClientEpsilons(TrainWrapper):
    """Delegate everything to ``strategy``; the train metrics' ``epsilon`` is the maximum of
    the clients' own epsilons (``epsilon_spent``: the maximum over the run so far)."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__()
        self.strategy = strategy
        self.epsilon_spent = 0.0

    def __repr__(self) -> str:
        return f"ClientEpsilons({self.strategy!r})"

    def summary(self) -> None:
        log.info("sample-level DP: each client runs DP-SGD; a round reports the max epsilon")
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        usable = [msg for msg in replies if not msg.has_error()]
        epsilons = []
        for msg in usable:
            epsilon = reply_epsilon(msg)
            if epsilon is None:
                raise MissingEpsilonError(
                    f"round {server_round}: node {msg.metadata.src_node_id} replied without its "
                    f"DP-SGD {EPSILON_METRIC!r} although dp.level='sample': its ClientApp did not "
                    "run DP-SGD (an older fedwon?); its update was not aggregated"
                )
            epsilons.append(epsilon)
        arrays, metrics = self.strategy.aggregate_train(server_round, usable)
        if metrics is not None and epsilons:
            metrics[EPSILON_METRIC] = max(epsilons)
            self.epsilon_spent = max(self.epsilon_spent, *epsilons)
        return arrays, metrics
