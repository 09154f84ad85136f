"""``RoundRules``: fedwon's rules of a round, as one wrapper around any Flower strategy.

Applied outermost (by :func:`fedwon.strategies.build_strategy`), in the shape of Flower's DP
wrappers: it holds the inner strategy and delegates every hook, adding

- *seeded sampling*: Flower samples nodes with the global ``random`` module; it is seeded from
  ``(seed, round, phase)`` before the inner strategy samples, so a run and a resumed run sample
  the same clients;
- *cyclic participation* (``participation = "cyclic"``, :mod:`fedwon.strategies.participation`):
  the inner strategy samples a round's training cohort from that round's group only;
- *faults*: replies with an error, or with NaN/Inf in arrays or metrics, are dropped and logged
  (one line each) **before** any inner wrapper or aggregator sees them; a round with fewer than
  ``min_clients`` usable replies stops the run with a message saying why (Flower would go on,
  and return empty arrays when every client failed);
- *connected nodes* (deployments): sampling draws from the nodes that are connected, less those
  that recently let a round time out (:mod:`fedwon.strategies.nodes`), so a dead or stalled
  node costs at most one ``round_timeout`` and a round runs with fewer nodes as long as
  ``min_clients`` replies come back; an instruction without a reply within the timeout counts
  as a dropped reply, naming the node;
- *round offset*: a resumed run starts Flower's loop at 1 again; the offset makes the round
  numbers the inner strategy, clients and callbacks see identical to an uninterrupted run;
- *evaluation cadence*: federated evaluation every ``eval_every`` rounds and on the last round;
- *streaming*: around FedAvg and the server optimizers built on its mean, train replies are
  folded into one running mean as they arrive and the inner strategy gets the mean as a single
  reply (:mod:`fedwon.strategies.streaming`): memory stays one model whatever the cohort;
- *per-round reporting*: after each round, ``on_round`` receives a :class:`RoundReport`
  (arrays, aggregated train/evaluate metrics, dropped replies). Recording (metrics rows,
  checkpoints, progress) is that callback's business, not the strategy's.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedwon.common.records import WEIGHT_KEY
from fedwon.strategies.aggregation import (
    non_finite_in,
    reply_order,
    reply_problem,
    total_weight,
)
from fedwon.strategies.nodes import NodeTracker, NodeView
from fedwon.strategies.participation import Participation
from fedwon.strategies.spec import FLOWER_ROUND_TIMEOUT_S
from fedwon.strategies.streaming import RunningMean, streams

log = logging.getLogger(__name__)
# A child of Flower's logger: its lines appear among Flower's own, wherever those are shown
# (``fedwon run -v``, ``flwr run``, a SuperLink's log), and nowhere else.
flower_log = logging.getLogger("flwr.fedwon")


class RoundFailedError(RuntimeError):
    """Too few clients returned a usable update for a round to be aggregated."""


@dataclass
class RoundReport:
    """What one round produced (``round`` counts from the start of the whole run)."""

    round: int
    arrays: ArrayRecord
    train_metrics: MetricRecord | None = None
    evaluate_metrics: MetricRecord | None = None
    dropped: list[str] = field(default_factory=list)
    no_reply: list[int] = field(default_factory=list)  # nodes silent until the timeout
    unsampled: int = 0  # train instructions short of the planned sample (too few nodes)

    @property
    def missing_nodes(self) -> bool:
        """Whether the round ran with fewer nodes than planned (not connected, or silent)."""
        return bool(self.no_reply) or self.unsampled > 0


RoundCallback = Callable[[RoundReport], None]


class RoundRules(Strategy):
    """Seeded sampling, fault filtering, ``min_clients``, resume offset and eval cadence around
    ``strategy`` (any Flower Message-API strategy or wrapper)."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        num_rounds: int,
        seed: int = 0,
        min_clients: int = 1,
        eval_every: int = 1,
        round_offset: int = 0,
        on_round: RoundCallback | None = None,
        server_step: str = "",
        sampler: FedAvg | None = None,
        participation: Participation | None = None,
    ) -> None:
        """``sampler``: the aggregator (inside any wrappers) whose sample sizes the round rules
        lower for a round with fewer connected nodes; without it Flower's sampling waits for
        every node it was sized for. ``participation``: who may train when (None: any node,
        Flower's uniform sampling)."""
        self.strategy = strategy
        self.participation = participation
        self.sampler = sampler
        self.nodes = NodeTracker(flower_log)
        self.timeout = FLOWER_ROUND_TIMEOUT_S  # set by start()
        self.server_step = server_step  # e.g. "aggregator=fedadam server_lr=0.01", for errors
        self.num_rounds = num_rounds
        self.seed = seed
        self.min_clients = min_clients
        self.eval_every = eval_every
        self.round_offset = round_offset
        self.on_round = on_round
        self._report: RoundReport | None = None
        self._sent = {"train": 0, "evaluate": 0}  # messages configured this round, per phase
        self._sent_to: dict[str, list[int]] = {"train": [], "evaluate": []}

    def __repr__(self) -> str:
        return f"RoundRules({self.strategy!r})"

    def summary(self) -> None:
        log.info(
            "round rules: seed %d, min_clients %d, eval every %d, offset %d, timeout %g s",
            self.seed,
            self.min_clients,
            self.eval_every,
            self.round_offset,
            self.timeout,
        )
        self.strategy.summary()

    # ---- rules --------------------------------------------------------------------------------
    def _seed_sampling(self, server_round: int, phase: str) -> None:
        random.seed(f"fedwon:{self.seed}:{server_round}:{phase}")

    def is_evaluation_round(self, server_round: int) -> bool:
        """Evaluate every ``eval_every`` rounds and always on the run's last round."""
        return server_round % self.eval_every == 0 or server_round == self.num_rounds

    def _filtered(
        self,
        server_round: int,
        replies: Iterable[Message],
        phase: str,
        fold: Callable[[Message], list[str]] | None = None,
    ) -> Iterator[Message]:
        """The replies an inner strategy may see, one at a time as they arrive; the round fails
        below ``min_clients`` (unless the inner strategy chose to send nothing this phase).
        ``fold``: the streamed mean's checked ``add`` (see :func:`reply_problem`): the replies
        yielded have been added already."""
        received, kept, problems, non_finite = 0, 0, [], 0
        sent, self._sent_to[phase] = self._sent_to[phase], []  # these replies answer them
        replied: list[int] = []
        for msg in replies:
            received += 1
            replied.append(msg.metadata.src_node_id)
            problem = reply_problem(msg, fold)
            if problem is not None:
                log.warning("round %d %s: dropped %s", server_round, phase, problem)
                problems.append(problem)
                non_finite += not msg.has_error()
                if self._report is not None:
                    self._report.dropped.append(problem)
                continue
            kept += 1
            yield msg
            del msg  # not held while the next reply is produced (the next client trains)
        problems += self._silent(server_round, phase, sent, replied)
        asked = max(received, len(sent))
        if kept < self.min_clients and (self._sent[phase] or received):
            if phase == "evaluate" and kept == 0 and non_finite == received > 0:
                # this round's training replies were all finite (or it would have failed
                # there): the model the server made from them is what breaks every client --
                # by its own step if it has one, else because a mean of the clients' huge
                # (finite) models is itself unusable: their training diverged
                if self.server_step:
                    raise RoundFailedError(
                        f"round {server_round}: the server update diverged "
                        f"({self.server_step}): every client's update was finite, but the new "
                        f"model gives non-finite results on all {received} clients that "
                        "evaluated it; lower server_lr or choose another aggregator"
                    )
                raise RoundFailedError(
                    f"round {server_round} evaluate: 0 of {received} clients returned usable "
                    "results: the clients' training diverged (their averaged model gives "
                    "non-finite results); lower lr (or set agc_clip)"
                )
            detail = "; ".join(problems[:3]) or "no replies arrived"
            raise RoundFailedError(
                f"round {server_round} {phase}: {kept} of {asked} clients returned "
                f"usable results, fewer than min_clients={self.min_clients} ({detail})"
            )

    def _silent(
        self, server_round: int, phase: str, sent: list[int], replied: list[int]
    ) -> list[str]:
        """The nodes ``sent`` an instruction this phase that did not reply before the timeout
        (none, unless a reply was missing): one dropped entry each, left out of sampling for a
        while."""
        if len(replied) >= len(sent):
            return []
        answered = set(replied)
        silent = [n for n in sent if n not in answered]
        self.nodes.missed(server_round, phase, silent, self.timeout)
        problems = [f"node {n}: no reply within round_timeout={self.timeout:g} s" for n in silent]
        if self._report is not None:
            self._report.dropped += problems
            self._report.no_reply += silent
        return problems

    def _connected(self, server_round: int, grid: Grid) -> Sequence[int]:
        """The connected node ids, once at least ``min_clients`` are (a round cannot succeed
        with fewer): waits up to the round timeout, saying so in Flower's words (which
        ``fedwon deploy local`` watches for), then fails the round."""
        ids = grid.get_node_ids()
        nodes = ids if isinstance(ids, range) else list(ids)
        deadline, shown = time.monotonic() + self.timeout, -1
        while len(nodes) < self.min_clients:
            if len(nodes) != shown:
                shown = len(nodes)
                flower_log.info(
                    "Waiting for nodes to connect: %d connected (minimum required: %d).",
                    shown,
                    self.min_clients,
                )
            if time.monotonic() >= deadline:
                raise RoundFailedError(
                    f"round {server_round}: {len(nodes)} nodes connected, fewer than "
                    f"min_clients={self.min_clients}, for round_timeout={self.timeout:g} s"
                )
            time.sleep(1.0)
            nodes = list(grid.get_node_ids())
        return nodes

    @contextmanager
    def _sampling(self, server_round: int, phase: str, grid: Grid) -> Iterator[Grid]:
        """The grid the inner strategy samples from: ``grid`` itself while every node it was
        sized for is there (simulation, a healthy deployment), else a :class:`NodeView` of the
        available nodes, with the sampler's minimum sizes lowered to them for the call. Under
        cyclic participation a training round sees only its group."""
        cyclic = self.participation is not None and self.participation.cyclic
        if cyclic and phase == "train":
            assert self.participation is not None
            try:
                group = self.participation.members(server_round, list(grid.get_node_ids()))
            except ValueError as err:
                raise RoundFailedError(f"round {server_round}: {err}") from None
            yield NodeView(grid, group)
            return
        sampler = self.sampler
        if sampler is None:
            yield grid
            return
        nodes = self._connected(server_round, grid)
        available = self.nodes.available(server_round, nodes, self.min_clients)
        wanted = sampler.min_train_nodes if phase == "train" else sampler.min_evaluate_nodes
        if available is nodes and len(nodes) >= max(wanted, sampler.min_available_nodes):
            yield grid
            return
        saved = (sampler.min_train_nodes, sampler.min_evaluate_nodes, sampler.min_available_nodes)
        k = len(available)
        sampler.min_train_nodes, sampler.min_evaluate_nodes, sampler.min_available_nodes = (
            min(v, k) for v in saved
        )
        try:
            yield NodeView(grid, available)
        finally:
            sampler.min_train_nodes, sampler.min_evaluate_nodes, sampler.min_available_nodes = saved

    def _usable(self, server_round: int, replies: Iterable[Message], phase: str) -> list[Message]:
        """All usable replies, in :func:`reply_order`."""
        return sorted(self._filtered(server_round, replies, phase), key=reply_order)

    def _streamed_mean(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[list[Message], float, int]:
        """Fold the usable replies into a running mean as they arrive (:mod:`.streaming`):
        the inner strategy's one reply, the total weight and the number of clients."""
        weight_key = getattr(self.strategy, "weighted_by_key", WEIGHT_KEY)
        mean = RunningMean(weight_key)
        # a list (Flower's grids) is sorted into partition order first; the fast engine's
        # stream already comes in it (train messages go out in node order), and each reply is
        # checked for NaN/Inf as it is folded in, then let go before the next client trains
        if isinstance(replies, list | tuple):
            for msg in self._usable(server_round, replies, "train"):
                mean.add(msg)
        else:
            fold = partial(mean.add, check_finite=True)
            for msg in self._filtered(server_round, replies, "train", fold):
                del msg
        if not mean.count:
            return [], 0.0, 0
        aggr_fn = getattr(self.strategy, "train_metrics_aggr_fn", aggregate_metricrecords)
        return [mean.reply(aggr_fn)], mean.total, mean.count

    def _check_server_update(self, server_round: int, arrays: ArrayRecord | None) -> None:
        """Stop at a non-finite aggregate: every reply it was made from was finite (non-finite
        ones were dropped), so the server's own step diverged (e.g. FedAdam at a huge
        ``server_lr``). Sent on, it would make every client fail next round, and the error
        would blame them."""
        bad = non_finite_in(arrays) if arrays is not None else []
        if bad:
            step = f" ({self.server_step})" if self.server_step else ""
            raise RoundFailedError(
                f"round {server_round}: the server update diverged{step}: the new model holds "
                f"non-finite values in {', '.join(bad[:5])} although every client's update was "
                "finite; lower server_lr or choose another aggregator"
            )

    # ---- Flower hooks -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        report = self._report = RoundReport(server_round, arrays)
        planned = self.sampler.min_train_nodes if self.sampler is not None else 0
        with self._sampling(server_round, "train", grid) as nodes:
            self._seed_sampling(server_round, "train")
            messages = list(self.strategy.configure_train(server_round, arrays, config, nodes))
        # in node order: a grid that delivers in order (the fast engine's, whose node ids are
        # partition order) then streams replies in the order the running mean adds them
        messages.sort(key=lambda m: m.metadata.dst_node_id)
        self._sent["train"] = len(messages)
        self._sent_to["train"] = [m.metadata.dst_node_id for m in messages]
        report.unsampled = max(0, planned - len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        if streams(self.strategy):
            usable, weight, clients = self._streamed_mean(server_round, replies)
        else:
            usable = self._usable(server_round, replies, "train")
            weight, clients = total_weight(m.content for m in usable), len(usable)
        arrays, metrics = self.strategy.aggregate_train(server_round, usable)
        if streams(self.strategy) and clients:
            # right under Flower's "aggregate_train: Received 1 results", which reads like a
            # lost cohort without it
            flower_log.info(
                "aggregate_train: fedwon aggregated %d replies as one streamed mean (the 1 "
                "result above)",
                clients,
            )
        self._check_server_update(server_round, arrays)
        if metrics is not None:
            metrics[WEIGHT_KEY] = int(weight)
            metrics["clients"] = clients
        if self._report is not None:
            self._report.train_metrics = metrics
            if arrays is not None:
                self._report.arrays = arrays
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._sent["evaluate"], self._sent_to["evaluate"] = 0, []
        if not self.is_evaluation_round(server_round):
            return []
        with self._sampling(server_round, "evaluate", grid) as nodes:
            self._seed_sampling(server_round, "evaluate")
            messages = list(self.strategy.configure_evaluate(server_round, arrays, config, nodes))
        self._sent["evaluate"] = len(messages)
        self._sent_to["evaluate"] = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        server_round += self.round_offset
        replies = list(replies)
        if not self.is_evaluation_round(server_round):
            return None
        usable = self._usable(server_round, replies, "evaluate")
        metrics = self.strategy.aggregate_evaluate(server_round, usable)
        if self._report is not None:
            self._report.evaluate_metrics = metrics
        return metrics

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop, with ``on_round`` called once each round has completed.

        ``num_rounds`` counts the rounds still to run (after ``round_offset``); ``timeout`` is
        how long each phase waits for replies (the ``round_timeout`` key).
        """
        self.timeout = timeout

        def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            result = evaluate_fn(server_round + self.round_offset, arrays) if evaluate_fn else None
            report, self._report = self._report, None
            if server_round > 0 and report is not None and self.on_round is not None:
                report.arrays = arrays
                self.on_round(report)
            return result

        streaming = getattr(grid, "streaming_replies", None)
        with streaming() if streaming is not None and streams(self.strategy) else nullcontext():
            return super().start(
                grid,
                initial_arrays,
                num_rounds=num_rounds,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=end_of_round,
            )
