"""Streaming FedAvg: the running mean against the formula and against Flower's own strategies,
and replies not outliving their addition to the sum."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from fakes import BASE, FakeGrid, train_reply
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedwon.strategies import RoundRules
from fedwon.strategies.streaming import RunningMean, streams

RNG = np.random.default_rng(0)
N = 6
WEIGHTS = [3, 1, 7, 2, 5, 4]
VALUES = [
    {
        "w": RNG.standard_normal((4, 3)).astype(np.float32),
        "b": np.float32(RNG.standard_normal()),  # 0-d
        "n": np.int64(10 * i),  # an integer buffer (BN's num_batches_tracked)
    }
    for i in range(N)
]
W0 = ArrayRecord({k: Array(np.zeros_like(np.asarray(v))) for k, v in VALUES[0].items()})


def respond(msg: Message, pid: int) -> Message:
    return train_reply(msg, pid, VALUES[pid], n=WEIGHTS[pid], loss=float(pid))


def replies_for(grid: FakeGrid) -> list[Message]:
    inner = FedAvg(min_available_nodes=N)
    msgs = list(inner.configure_train(1, W0, ConfigRecord(), grid))  # type: ignore[arg-type]
    return [respond(m, m.metadata.dst_node_id - BASE) for m in msgs]


def test_running_mean_is_the_example_weighted_mean_in_fedavgs_dtypes() -> None:
    mean = RunningMean("num-examples")
    for reply in replies_for(FakeGrid(N)):
        mean.add(reply)
    out = mean.reply(aggregate_metricrecords)
    arrays, metrics = out.content["arrays"], out.content["metrics"]
    total = sum(WEIGHTS)
    for key in ("w", "b", "n"):
        expected = sum(np.float64(w) * v[key] for w, v in zip(WEIGHTS, VALUES, strict=True)) / total
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert arrays["w"].numpy().dtype == np.float32 and arrays["b"].numpy().shape == ()
    assert arrays["n"].numpy().dtype == np.float64  # as FedAvg's int * float
    assert metrics["num-examples"] == total and mean.count == N
    assert metrics["train_loss"] == pytest.approx(sum(w * i for i, w in enumerate(WEIGHTS)) / total)


def test_running_mean_refuses_replies_unlike_the_others() -> None:
    first, second = replies_for(FakeGrid(N))[:2]
    mean = RunningMean("num-examples")
    mean.add(first)
    del second.content["arrays"]["w"]
    with pytest.raises(ValueError, match=r"node \d+ sends arrays \['w'\] unlike"):
        mean.add(second)
    with pytest.raises(ValueError, match="no replies were added"):
        RunningMean("num-examples").reply(aggregate_metricrecords)


@pytest.mark.parametrize(
    "make", [lambda: FedAvg(min_available_nodes=N), lambda: FedAdam(min_available_nodes=N)]
)
def test_round_rules_stream_into_flowers_strategy_and_agree_with_it(make) -> None:  # type: ignore[no-untyped-def]
    direct, wrapped = make(), make()
    assert streams(wrapped) and not streams(type("Sub", (FedAvg,), {})())
    grid = FakeGrid(N)
    replies = replies_for(grid)
    for strategy in (direct, wrapped):  # FedAdam needs the current arrays from configure_train
        list(strategy.configure_train(1, W0, ConfigRecord(), grid))  # type: ignore[arg-type]
    expected, expected_metrics = direct.aggregate_train(1, replies)
    rules = RoundRules(wrapped, num_rounds=1)
    seen: list[int] = []
    original = wrapped.aggregate_train
    wrapped.aggregate_train = lambda rnd, rs: (seen.append(len(list(rs))), original(rnd, rs))[1]  # type: ignore[method-assign]
    rules._sent["train"] = N
    got, metrics = rules.aggregate_train(1, replies[::-1])  # order does not matter
    assert seen == [1]  # the inner strategy saw one reply: the mean
    assert got is not None and expected is not None and metrics is not None
    for key in ("w", "b", "n"):
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=2e-6, atol=1e-6)
    assert metrics["train_loss"] == pytest.approx(expected_metrics["train_loss"])  # type: ignore[index]
    assert metrics["num-examples"] == sum(WEIGHTS) and metrics["clients"] == N


class StreamingGrid(FakeGrid):
    """A FakeGrid that, like the fast engine's, answers each message only when its reply is
    asked for while ``streaming_replies`` is active, and checks that no earlier reply lives."""

    def __init__(self, n: int) -> None:
        super().__init__(n, respond)
        self.streaming = False
        self.alive: list[weakref.ref[ArrayRecord]] = []
        self.most_alive = 0

    @contextmanager
    def streaming_replies(self) -> Iterator[None]:
        self.streaming = True
        try:
            yield
        finally:
            self.streaming = False

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        batch = list(messages)
        if not self.streaming:
            return super().send_and_receive(batch)

        def replies() -> Iterator[Message]:
            for m in batch:
                gc.collect()
                self.most_alive = max(self.most_alive, sum(r() is not None for r in self.alive))
                reply = respond(m, m.metadata.dst_node_id - BASE)
                self.alive.append(weakref.ref(reply.content["arrays"]))
                yield reply
                del reply  # a generator's locals live on: drop it before the next client

        return replies()


def test_a_streamed_round_holds_no_earlier_reply_while_the_next_client_trains() -> None:
    grid = StreamingGrid(N)
    rules = RoundRules(FedAvg(min_available_nodes=N, fraction_evaluate=0.0), num_rounds=2)
    result = rules.start(grid, W0, num_rounds=2)  # type: ignore[arg-type]
    assert len(grid.alive) == 2 * N and grid.most_alive == 0
    expected = sum(np.float64(w) * v["w"] for w, v in zip(WEIGHTS, VALUES, strict=True))
    np.testing.assert_allclose(
        result.arrays["w"].numpy(), expected / sum(WEIGHTS), rtol=1e-6, atol=1e-6
    )


def test_other_strategies_see_every_reply_and_no_stream() -> None:
    class Median(FedAvg):  # a subclass may aggregate differently: not streamed
        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            replies = list(replies)
            assert isinstance(replies[0].content["arrays"], ArrayRecord) and len(replies) == N
            return super().aggregate_train(server_round, replies)

    grid = StreamingGrid(N)
    inner: Strategy = Median(min_available_nodes=N, fraction_evaluate=0.0)
    RoundRules(inner, num_rounds=1).start(grid, W0, num_rounds=1)  # type: ignore[arg-type]
    assert grid.most_alive == 0 and not grid.streaming  # a list: the grid never streamed


def test_a_streamed_round_says_how_many_replies_its_one_result_holds() -> None:
    """Flower's FedAvg logs "Received 1 results" for the mean it is handed; fedwon's line under
    it, on Flower's logger, says how many replies that one result folds."""
    grid = FakeGrid(N)
    replies = replies_for(grid)
    wrapped = FedAvg(min_available_nodes=N)
    list(wrapped.configure_train(1, W0, ConfigRecord(), grid))  # type: ignore[arg-type]
    rules = RoundRules(wrapped, num_rounds=1)
    rules._sent["train"] = N
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    flower = logging.getLogger("flwr")
    level = flower.level  # a quiet run before this test may have raised it
    flower.addHandler(handler)
    flower.setLevel(logging.INFO)
    try:
        rules.aggregate_train(1, replies)
    finally:
        flower.removeHandler(handler)
        flower.setLevel(level)
    received = next(i for i, line in enumerate(lines) if "Received 1 results" in line)
    assert lines[received + 1] == (
        f"aggregate_train: fedwon aggregated {N} replies as one streamed mean (the 1 result above)"
    )


def _respond_with_nan_at(bad: int):  # type: ignore[no-untyped-def]
    def respond_nan(msg: Message, pid: int) -> Message:
        if pid != bad:
            return respond(msg, pid)
        values = dict(VALUES[pid], w=np.full((4, 3), np.nan, np.float32))
        return train_reply(msg, pid, values, n=WEIGHTS[pid], loss=float(pid))

    return respond_nan


def test_a_streamed_nan_reply_is_refused_like_a_listed_one_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The streamed mean checks replies as it folds them: the NaN reply is dropped with the
    message, and the one warning, that the separate check gives a list of replies, and the
    mean of the others is the same, bit for bit."""
    results, dropped, warnings = [], [], []
    for streamed in (True, False):
        grid = StreamingGrid(N) if streamed else FakeGrid(N)
        grid.respond = _respond_with_nan_at(2)
        if streamed:  # the streaming grid answers with its module-level ``respond``
            grid.send_and_receive = _streaming_send(grid, _respond_with_nan_at(2))  # type: ignore[method-assign]
        reports: list = []
        rules = RoundRules(
            FedAvg(min_available_nodes=N, fraction_evaluate=0.0),
            num_rounds=1,
            on_round=reports.append,
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fedwon.strategies.round_rules"):
            results.append(rules.start(grid, W0, num_rounds=1))  # type: ignore[arg-type]
        warnings.append([r.getMessage() for r in caplog.records])
        dropped.append(reports[0].dropped)
        assert reports[0].train_metrics["clients"] == N - 1
    assert dropped[0] == dropped[1] == [f"node {BASE + 2} sent non-finite values in w"]
    assert (
        warnings[0]
        == warnings[1]
        == [f"round 1 train: dropped node {BASE + 2} sent non-finite values in w"]
    )
    for key in ("w", "b", "n"):
        assert results[0].arrays[key].numpy().tobytes() == results[1].arrays[key].numpy().tobytes()


def _streaming_send(grid: StreamingGrid, answer):  # type: ignore[no-untyped-def]
    def send_and_receive(messages: Iterable[Message], *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        batch = list(messages)
        assert grid.streaming
        return (answer(m, m.metadata.dst_node_id - BASE) for m in batch)

    return send_and_receive
