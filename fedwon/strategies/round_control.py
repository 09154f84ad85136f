"""What every fedwon strategy adds to a Flower strategy, as a mixin placed before it in the MRO.

- *Reproducible sampling*: Flower samples nodes with the global ``random`` module; we seed it
  from ``(seed, round)`` before each sampling so a run, and a resumed run, sample the same clients.
- *Faults*: replies with an error or with NaN/Inf are dropped and logged; a round with fewer than
  ``min_clients`` usable replies stops the run with a message saying why (Flower would otherwise
  go on, and return empty arrays when every client failed).
- *Round offset*: a resumed run starts Flower's loop at 1 again; the offset keeps the round
  numbers clients and callbacks see identical to an uninterrupted run.
- *Evaluation cadence*: federated evaluation every ``eval_every`` rounds and on the last round.
- *History*: the aggregated train/evaluate metrics of the latest round, for the results writer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedwon.strategies.aggregation import (
    WEIGHT_KEY,
    per_domain_metrics,
    split_usable,
    total_weight,
)

log = logging.getLogger(__name__)


class RoundFailedError(RuntimeError):
    """Too few clients returned a usable update for a round to be aggregated."""


class RoundControl:
    """Mixin: put it first, e.g. ``class FedAvg(RoundControl, flwr FedAvg)``."""

    def __init__(
        self,
        *args: Any,
        seed: int = 0,
        min_clients: int = 1,
        num_rounds: int = 1,
        eval_every: int = 1,
        round_offset: int = 0,
        domains: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        self.seed = seed
        self.min_clients = min_clients
        self.num_rounds = num_rounds
        self.eval_every = eval_every
        self.round_offset = round_offset
        self.domains = list(domains)
        self.train_metrics: dict[int, MetricRecord] = {}
        self.evaluate_metrics: dict[int, MetricRecord] = {}
        self.dropped: dict[int, list[str]] = {}
        kwargs.setdefault("evaluate_metrics_aggr_fn", self._aggregate_eval_metrics)
        super().__init__(*args, **kwargs)

    # ---- helpers ------------------------------------------------------------------------------
    def _aggregate_eval_metrics(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        return per_domain_metrics(records, weight_key, self.domains)

    def _seed_sampling(self, server_round: int, phase: str) -> None:
        random.seed(f"fedwon:{self.seed}:{server_round}:{phase}")

    def _usable(self, server_round: int, replies: Iterable[Message], phase: str) -> list[Message]:
        replies = list(replies)
        usable, problems = split_usable(replies)
        for problem in problems:
            log.warning("round %d %s: dropped %s", server_round, phase, problem)
        if problems:
            self.dropped.setdefault(server_round, []).extend(problems)
        if len(usable) < self.min_clients:
            detail = "; ".join(problems[:3]) or "no replies arrived"
            raise RoundFailedError(
                f"round {server_round} {phase}: {len(usable)} of {len(replies)} clients returned "
                f"usable results, fewer than min_clients={self.min_clients} ({detail})"
            )
        return usable

    # ---- Flower hooks -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._seed_sampling(server_round, "train")
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        usable = self._usable(server_round, replies, "train")
        arrays, metrics = super().aggregate_train(server_round, usable)  # type: ignore[misc]
        if metrics is not None:
            metrics[WEIGHT_KEY] = total_weight((m.content for m in usable), WEIGHT_KEY)
            metrics["clients"] = len(usable)
            self.train_metrics[server_round] = metrics
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        if server_round % self.eval_every and server_round != self.num_rounds:
            return []
        self._seed_sampling(server_round, "evaluate")
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        server_round += self.round_offset
        replies = list(replies)
        if not replies:
            return None
        usable = self._usable(server_round, replies, "evaluate")
        metrics: MetricRecord | None = super().aggregate_evaluate(server_round, usable)  # type: ignore[misc]
        if metrics is not None:
            self.evaluate_metrics[server_round] = metrics
        return metrics
