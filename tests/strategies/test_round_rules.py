"""RoundRules around Flower strategies: sampling, cadence, faults, offset, per-round reports."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import BASE, FakeGrid, error_reply, eval_reply, train_reply
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, Strategy

from fedwon.config import make_config
from fedwon.server_app import run_strategy
from fedwon.strategies import RoundFailedError, RoundReport, RoundRules

W0 = ArrayRecord({"w": Array(np.zeros(2, np.float32))})


def sampled(strategy: RoundRules, rnd: int, n: int = 20) -> list[int]:
    msgs = strategy.configure_train(rnd, W0, ConfigRecord(), FakeGrid(n))  # type: ignore[arg-type]
    return sorted(m.metadata.dst_node_id for m in msgs)


def test_sampling_is_reproducible_per_round_and_sized_by_clients_per_round() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 20, "clients_per_round": 5})
    a, b = run_strategy(cfg), run_strategy(cfg)
    rounds = [sampled(a, r) for r in (1, 2, 3)]
    assert rounds[0] == sampled(b, 1)
    assert all(len(r) == 5 for r in rounds)
    assert rounds[0] != rounds[1] and rounds[1] != rounds[2]  # C(20,5) = 15504: a clash is a bug
    # a resumed run (offset 2) samples in its round 1 what the original sampled in round 3
    assert sampled(run_strategy(cfg, round_offset=2), 1) == rounds[2]
    # another seed, another sample
    assert sampled(run_strategy(cfg.replace(seed=1)), 1) != rounds[0]


def test_evaluation_runs_every_eval_every_rounds_and_on_the_last() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 2, "num_rounds": 7, "eval_every": 3})
    strategy = run_strategy(cfg)
    grid = FakeGrid(2)
    evaluated = [
        r for r in range(1, 8) if list(strategy.configure_evaluate(r, W0, ConfigRecord(), grid))
    ]  # type: ignore[arg-type]
    assert evaluated == [3, 6, 7]
    assert strategy.aggregate_evaluate(4, []) is None


class Spy(Strategy):
    """An inner wrapper recording every reply it is shown, delegating to FedAvg."""

    def __init__(self, inner: FedAvg) -> None:
        self.inner = inner
        self.seen: list[Message] = []

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        replies = list(replies)
        self.seen += replies
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        replies = list(replies)
        self.seen += replies
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        pass


def respond(msg: Message, pid: int) -> Message:
    """Partition 1 fails, partition 2 sends NaN, the others send w = pid with pid*10 examples."""
    if pid == 1:
        return error_reply(msg, "client\n  exploded")
    if msg.metadata.message_type == "evaluate":
        return eval_reply(msg, pid, accuracy=pid / 10, n=10)
    value = np.nan if pid == 2 else float(pid)
    return train_reply(msg, pid, {"w": np.full(2, value, np.float32)}, n=10 * max(pid, 1))


def test_bad_replies_never_reach_inner_strategies_and_the_rest_is_averaged() -> None:
    reports: list[RoundReport] = []
    spy = Spy(FedAvg(min_train_nodes=4, min_available_nodes=4, min_evaluate_nodes=4))
    rules = RoundRules(spy, num_rounds=2, min_clients=2, on_round=reports.append)
    result = rules.start(FakeGrid(4, respond), W0, num_rounds=2)  # type: ignore[arg-type]
    assert spy.seen and all(not m.has_error() for m in spy.seen)
    for m in spy.seen:
        if "arrays" in m.content:
            assert np.isfinite(m.content["arrays"]["w"].numpy()).all()
    # (0 * 10 + 3 * 30) / 40 = 2.25 for every entry
    np.testing.assert_allclose(result.arrays["w"].numpy(), [2.25, 2.25])
    assert [r.round for r in reports] == [1, 2]
    report = reports[-1]
    assert report.train_metrics is not None and report.evaluate_metrics is not None
    assert report.train_metrics["clients"] == 2 and report.train_metrics["num-examples"] == 40
    assert len(report.dropped) == 3  # 1 and 2 in train; 1 in evaluate (2 evaluates fine)
    assert any("client exploded" in d for d in report.dropped)  # one line, whitespace folded
    assert any("non-finite values in w" in d for d in report.dropped)
    # evaluation: partitions 0, 2 and 3 (accuracies 0.0, 0.2, 0.3, 10 examples each)
    assert report.evaluate_metrics["accuracy"] == pytest.approx((0.0 + 0.2 + 0.3) / 3)
    np.testing.assert_allclose(report.arrays["w"].numpy(), [2.25, 2.25])


def test_too_few_usable_replies_stop_the_run_with_the_reasons() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 4, "min_clients": 3})
    strategy = run_strategy(cfg)
    with pytest.raises(RoundFailedError, match=r"round 1 train: 2 of 4 .*min_clients=3.*exploded"):
        strategy.start(FakeGrid(4, respond), W0, num_rounds=1)  # type: ignore[arg-type]
    with pytest.raises(RoundFailedError, match=r"0 of 0 .*\(no replies arrived\)"):
        strategy.aggregate_train(2, [])


def test_round_offset_reaches_inner_strategy_clients_and_reports() -> None:
    rounds_seen: list[int] = []

    def record_round(msg: Message, pid: int) -> Message:
        rounds_seen.append(int(msg.content["config"]["server-round"]))
        return respond(msg, 0) if pid != 1 else respond(msg, 3)

    reports: list[RoundReport] = []
    inner = FedAvg(min_train_nodes=2, min_available_nodes=2, min_evaluate_nodes=2)
    rules = RoundRules(inner, num_rounds=5, round_offset=3, on_round=reports.append)
    rules.start(FakeGrid(2, record_round), W0, num_rounds=2)  # type: ignore[arg-type]
    assert [r.round for r in reports] == [4, 5]
    assert sorted(set(rounds_seen)) == [4, 5]


def test_reports_carry_the_inner_strategys_metrics_unchanged() -> None:
    class Constant(FedAvg):
        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            arrays, _ = super().aggregate_train(server_round, replies)
            return arrays, MetricRecord({"train_loss": 42.0})

    reports: list[RoundReport] = []
    inner = Constant(min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0)
    RoundRules(inner, num_rounds=1, on_round=reports.append).start(
        FakeGrid(1, respond),
        W0,
        num_rounds=1,  # type: ignore[arg-type]
    )
    assert reports[0].train_metrics is not None
    assert reports[0].train_metrics["train_loss"] == 42.0
    assert reports[0].evaluate_metrics is None


def test_a_diverged_server_step_is_blamed_on_the_server_not_on_the_clients(
    tmp_path: Path,
) -> None:
    from fedwon.config import load_config
    from fedwon.simulation import run_simulation

    sims = Path(__file__).resolve().parents[2] / "sims"
    tiny = ["model=cnn-tiny", "num_rounds=2", "train_per_domain=20", "test_per_domain=10"]
    tiny += ["domains=mnist,usps", "num_clients=2", "engine=fast", "num_workers=0"]
    cfg = load_config(sims / "cross_silo.toml", [*tiny, "aggregator=fedadam", "server_lr=1e30"])
    with pytest.raises(
        RoundFailedError,
        match=r"^round 1: the server update diverged \(aggregator=fedadam server_lr=1e\+30\): "
        r"every client's update was finite, .* lower server_lr",
    ):
        run_simulation(cfg, tmp_path / "run")
    # an aggregate that is itself non-finite is caught before any client receives it
    strategy = run_strategy(make_config({"aggregator": "fedadam", "server_lr": 1e30}))
    inf = ArrayRecord({"w": Array(np.array([1.0, np.inf], np.float32))})
    with pytest.raises(RoundFailedError, match=r"round 3: the server update diverged .* in w "):
        strategy._check_server_update(3, inf)


@pytest.fixture
def node_log() -> Iterator[list[str]]:
    """The lines of fedwon's child of Flower's logger (it does not propagate to caplog)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("flwr.fedwon")
    level, disabled = logger.level, logger.disabled  # (a quiet simulation earlier raised it)
    logger.setLevel(logging.INFO)
    logger.disabled = False
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.disabled = disabled


def healthy(msg: Message, pid: int) -> Message:
    """Every partition answers with w = 1."""
    if msg.metadata.message_type == "evaluate":
        return eval_reply(msg, pid, accuracy=0.5)
    return train_reply(msg, pid, {"w": np.ones(2, np.float32)})


def test_a_silent_node_costs_one_timeout_is_logged_once_and_rounds_go_on_without_it(
    node_log: list[str],
) -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 3, "num_rounds": 3, "min_clients": 2})
    reports: list[RoundReport] = []
    strategy = run_strategy(cfg, on_round=reports.append)
    dead = BASE + 2  # killed during round 1's training: still listed, never answers again
    grid = FakeGrid(3, lambda m, pid: None if pid == 2 else healthy(m, pid))
    strategy.start(grid, W0, num_rounds=3, timeout=5.0)  # type: ignore[arg-type]
    sent = [sorted(m.metadata.dst_node_id for m in batch) for batch in grid.sent]
    assert sent[0] == [BASE, BASE + 1, dead]  # round 1 train: all three
    assert all(dead not in nodes for nodes in sent[1:])  # left out once it missed the deadline
    first = reports[0]
    assert first.no_reply == [dead] and first.unsampled == 0 and first.missing_nodes
    assert first.dropped == [f"node {dead}: no reply within round_timeout=5 s"]
    assert first.train_metrics is not None and first.train_metrics["clients"] == 2
    for report in reports[1:]:  # sampled from the two that answer: nothing dropped
        assert report.unsampled == 1 and report.no_reply == [] and report.dropped == []
        assert report.missing_nodes
    silent = [line for line in node_log if f"node {dead} sent no reply" in line]
    assert len(silent) == 1 and silent[0].startswith("round 1 train:")


def test_a_node_that_left_is_not_waited_for_and_is_sampled_again_when_back(
    node_log: list[str],
) -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 3, "num_rounds": 3, "eval_every": 9})
    strategy = run_strategy(cfg)
    grid = FakeGrid(3, healthy)

    def train_round(rnd: int) -> list[int]:
        msgs = strategy.configure_train(rnd, W0, ConfigRecord(), grid)  # type: ignore[arg-type]
        return sorted(m.metadata.dst_node_id for m in msgs)

    assert train_round(1) == [BASE, BASE + 1, BASE + 2]
    grid.ids = [BASE, BASE + 1]  # the SuperLink no longer lists node 102
    assert train_round(2) == [BASE, BASE + 1]  # no wait for it (Flower would wait forever)
    assert strategy.sampler is not None and strategy.sampler.min_train_nodes == 3  # restored
    grid.ids = [BASE, BASE + 1, BASE + 2]
    assert train_round(3) == [BASE, BASE + 1, BASE + 2]
    lines = [line for line in node_log if f"node {BASE + 2}" in line]
    assert lines == [
        f"round 2: node {BASE + 2} is no longer connected; rounds go on with the 2 connected nodes",
        f"round 3: node {BASE + 2} is back and sampled again",
    ]


def test_fewer_connected_nodes_than_min_clients_fail_the_round_after_the_timeout() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 3, "min_clients": 3})
    strategy = run_strategy(cfg)
    grid = FakeGrid(3, healthy)
    grid.ids = grid.ids[:2]
    with pytest.raises(RoundFailedError, match=r"round 1: 2 nodes connected, fewer than min_cl"):
        strategy.start(grid, W0, num_rounds=1, timeout=0.1)  # type: ignore[arg-type]


def test_a_round_without_enough_replies_by_the_timeout_names_the_silent_nodes() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 3, "min_clients": 3})
    grid = FakeGrid(3, lambda m, pid: None if pid == 0 else healthy(m, pid))
    with pytest.raises(RoundFailedError, match=rf"2 of 3 .*node {BASE}: no reply within round_t"):
        run_strategy(cfg).start(grid, W0, num_rounds=1, timeout=5.0)  # type: ignore[arg-type]
