"""Strategies on a stub Grid: what FedBN sends, sampling, eval cadence, the failure guard."""

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedwon.config import make_config
from fedwon.models import build_model
from fedwon.strategies import FedBN, RoundFailedError, build_strategy, norm_state_keys

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class StubGrid:
    """Only what Flower strategies call while configuring a round."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(100, 100 + n))

    def get_node_ids(self) -> Iterable[int]:
        return self.ids


def full_state(model) -> ArrayRecord:  # type: ignore[no-untyped-def]
    return ArrayRecord(model.state_dict())


def test_fedbn_messages_carry_no_normalization_tensors() -> None:
    model = build_model("cnn-tiny", norm="bn")
    cfg = make_config({"strategy": "fedbn", "model": "cnn-tiny", "num_clients": 4})
    strategy = build_strategy(cfg, model)
    assert isinstance(strategy, FedBN)
    local = set(norm_state_keys(model))
    for configure in (strategy.configure_train, strategy.configure_evaluate):
        messages = list(configure(1, full_state(model), ConfigRecord(), StubGrid(4)))  # type: ignore[arg-type]
        assert len(messages) == 4
        for msg in messages:
            sent = set(msg.content["arrays"].keys())
            assert sent and not sent & local
            assert sent | local == set(model.state_dict())


def test_sampling_is_reproducible_per_round_and_sized_by_clients_per_round() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 20, "clients_per_round": 5})
    model = build_model("cnn-tiny", norm="bn")

    def sampled(strategy, rnd: int) -> list[int]:  # type: ignore[no-untyped-def]
        msgs = strategy.configure_train(rnd, full_state(model), ConfigRecord(), StubGrid(20))
        return sorted(m.metadata.dst_node_id for m in msgs)

    a, b = build_strategy(cfg, model), build_strategy(cfg, model)
    assert sampled(a, 1) == sampled(b, 1)
    assert len(sampled(a, 1)) == 5
    assert sampled(a, 1) != sampled(a, 2) or sampled(a, 2) != sampled(a, 3)
    # a resumed run (offset 2) samples in its round 1 what the original sampled in round 3
    resumed = build_strategy(cfg, model, round_offset=2)
    assert sampled(resumed, 1) == sampled(a, 3)


def test_evaluation_runs_every_eval_every_rounds_and_on_the_last() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 2, "num_rounds": 7, "eval_every": 3})
    model = build_model("cnn-tiny", norm="bn")
    strategy = build_strategy(cfg, model)
    evaluated = [
        r
        for r in range(1, 8)
        if list(strategy.configure_evaluate(r, full_state(model), ConfigRecord(), StubGrid(2)))  # type: ignore[arg-type]
    ]
    assert evaluated == [3, 6, 7]


def _reply(node: int, value: float, n: int = 10) -> Message:
    ins = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.full(2, value, np.float32))}),
            "metrics": MetricRecord({"num-examples": n, "train_loss": value}),
            "client": ConfigRecord({"partition-id": node}),
        }
    )
    return Message(content, reply_to=ins)


def test_bad_replies_are_dropped_and_the_rest_averaged() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 4, "min_clients": 2})
    strategy = build_strategy(cfg, build_model("cnn-tiny"))
    failed = Message(
        Error(code=0, reason="client exploded"),
        reply_to=Message(RecordDict(), dst_node_id=9, message_type="train"),
    )
    arrays, metrics = strategy.aggregate_train(
        1, [_reply(1, 1.0, 10), _reply(2, float("nan")), failed, _reply(3, 4.0, 30)]
    )
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [3.25, 3.25])  # (1*10 + 4*30) / 40
    assert metrics["clients"] == 2 and metrics["num-examples"] == 40
    assert len(strategy.dropped[1]) == 2


def test_too_few_usable_replies_stop_the_run_with_the_reasons() -> None:
    cfg = make_config({"model": "cnn-tiny", "num_clients": 4, "min_clients": 2})
    strategy = build_strategy(cfg, build_model("cnn-tiny"))
    with pytest.raises(
        RoundFailedError, match=r"round 1 train: 1 of 2 .*min_clients=2.*non-finite"
    ):
        strategy.aggregate_train(1, [_reply(1, 1.0), _reply(2, float("inf"))])
    with pytest.raises(RoundFailedError, match="0 of 0"):
        strategy.aggregate_train(2, [])
