"""Sample-level DP on the server: the round's epsilon is the worst client's; a reply without
one (a client that did not run DP-SGD) is refused, not aggregated."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message
from privacy_fakes import StubGrid, client_delta, fedavg, model_arrays, record, reply

from fedwon.privacy import ClientEpsilons, MissingEpsilonError


def round_replies(epsilons: list[float | None]) -> tuple[ClientEpsilons, list[Message]]:
    strategy = ClientEpsilons(fedavg(len(epsilons)))
    sent = model_arrays()
    messages = list(
        strategy.configure_train(1, record(sent), ConfigRecord(), StubGrid(len(epsilons)))  # type: ignore[arg-type]
    )
    replies = []
    for msg, (i, eps) in zip(messages, enumerate(epsilons), strict=True):
        answer = reply(msg, client_delta(i, 0.1, sent), num_examples=10 * (i + 1))
        if eps is not None:
            answer.content["metrics"]["epsilon"] = eps
        replies.append(answer)
    return strategy, replies


def test_the_round_reports_the_largest_client_epsilon_not_the_mean() -> None:
    strategy, replies = round_replies([0.5, 3.0, 1.0])
    arrays, metrics = strategy.aggregate_train(1, replies)
    plain_arrays, plain_metrics = fedavg(3).aggregate_train(1, replies)
    assert metrics is not None and plain_metrics is not None and arrays is not None
    assert metrics["epsilon"] == 3.0 and plain_metrics["epsilon"] != 3.0  # FedAvg: weighted mean
    assert metrics["train_loss"] == plain_metrics["train_loss"]  # the rest untouched
    assert plain_arrays is not None and arrays.keys() == plain_arrays.keys()
    assert strategy.epsilon_spent == 3.0
    _, later = round_replies([1.5, 2.0])
    strategy.aggregate_train(2, later)
    assert strategy.epsilon_spent == 3.0  # the run's maximum so far


def test_a_reply_without_epsilon_stops_the_run() -> None:
    strategy, replies = round_replies([0.5, None])
    with pytest.raises(MissingEpsilonError, match=r"round 1: node \d+ replied without its DP-SGD"):
        strategy.aggregate_train(1, replies)
