"""Pure record helpers: fault filtering, reply order, per-domain metrics, FedBN key selection."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedwon.models import build_model
from fedwon.strategies import (
    check_normalization_free,
    non_finite_arrays,
    norm_state_keys,
    per_domain_metrics,
)
from fedwon.strategies.aggregation import reply_order, reply_problem

TaskIdentity.run_id = 1
TaskIdentity.node_id = 0
TaskIdentity.task_id = 1


def reply(pid: int, values: np.ndarray, n: int = 10) -> Message:
    ins = Message(RecordDict(), dst_node_id=100 + pid, message_type="train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(values)}),
            "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0}),
            "client": ConfigRecord({"partition-id": pid}),
        }
    )
    return Message(content, reply_to=ins)


def test_non_finite_updates_and_errors_are_dropped_with_reasons() -> None:
    good = reply(1, np.ones(3, np.float32))
    nan = reply(2, np.array([1.0, np.nan], np.float32))
    inf = reply(3, np.array([np.inf], np.float32))
    ins = Message(RecordDict(), dst_node_id=7, message_type="train")
    failed = Message(Error(code=0, reason="boom"), reply_to=ins)
    problems = [reply_problem(m) for m in (nan, good, failed, inf)]
    assert problems[1] is None
    problems = [p for p in problems if p is not None]
    assert len(problems) == 3
    assert any("boom" in p for p in problems)
    assert any("non-finite values in w" in p for p in problems)
    assert non_finite_arrays(nan.content) == ["w"]


def test_replies_are_ordered_by_partition_not_arrival() -> None:
    replies = [reply(p, np.full(2, p, np.float32)) for p in (3, 0, 2, 1)]
    usable = sorted(replies, key=reply_order)
    assert [int(m.content["client"]["partition-id"]) for m in usable] == [0, 1, 2, 3]


def test_per_domain_metrics_are_example_weighted() -> None:
    def rec(acc: float, n: int, domain: str) -> RecordDict:
        m = MetricRecord({"accuracy": acc, "loss": 1 - acc, "num-examples": n})
        return RecordDict({"metrics": m, "client": ConfigRecord({"domain": domain})})

    out = per_domain_metrics(
        [rec(1.0, 10, "a"), rec(0.5, 30, "a"), rec(0.0, 20, "b")], "num-examples"
    )
    assert out["accuracy/a"] == pytest.approx((10 + 15) / 40)
    assert out["loss/a"] == pytest.approx((0 + 15) / 40)
    assert out["accuracy/b"] == 0.0
    assert out["accuracy"] == pytest.approx(25 / 60)
    assert out["num-examples"] == 60
    # a reply that names no domain counts overall only
    plain = RecordDict({"metrics": MetricRecord({"accuracy": 1.0, "num-examples": 20})})
    out = per_domain_metrics([rec(0.0, 20, "b"), plain], "num-examples")
    assert out["accuracy"] == 0.5 and out["accuracy/b"] == 0.0
    assert set(out) == {"accuracy", "accuracy/b", "loss", "loss/b", "num-examples"}


def test_fedbn_local_keys_are_exactly_the_norm_layers() -> None:
    model = build_model("cnn-tiny", norm="bn")
    keys = norm_state_keys(model)
    assert keys and all(k.startswith("bn") for k in keys)
    assert any(k.endswith("running_mean") for k in keys)
    assert any(k.endswith("num_batches_tracked") for k in keys)
    assert not any(k.startswith(("conv", "fc")) for k in keys)
    assert norm_state_keys(build_model("cnn-tiny", norm="ws")) == []


def test_fedwon_refuses_a_model_with_normalization() -> None:
    check_normalization_free(build_model("cnn-tiny", norm="ws"))
    with pytest.raises(ValueError, match=r"normalization layers.*norm='ws'"):
        check_normalization_free(build_model("cnn-tiny", norm="gn"))
