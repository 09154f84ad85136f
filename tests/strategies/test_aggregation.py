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
from fedwon.strategies.aggregation import all_finite, finite_probe, reply_order, reply_problem
from fedwon.strategies.streaming import RunningMean

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


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_finite_check_is_exact_and_its_probe_never_misses(dtype: type) -> None:
    big = np.finfo(dtype).max / 2  # finite, but its square overflows the probe
    cases = {
        "finite": (np.linspace(-3, 3, 1001).astype(dtype), True),
        "nan": (np.array([0.0, np.nan, 1.0], dtype), False),
        "inf": (np.array([np.inf], dtype), False),
        "-inf": (np.array([[1.0, -np.inf]], dtype), False),
        "nan and inf": (np.array([np.inf, -np.inf, np.nan], dtype), False),
        "huge but finite": (np.full(4, big, dtype), True),
        "0-d": (np.array(2.0, dtype), True),
        "empty": (np.zeros((0, 3), dtype), True),
    }
    for name, (values, finite) in cases.items():
        with np.errstate(over="ignore", invalid="ignore"):
            assert all_finite(values) is finite, name
            assert not finite_probe(values) or finite, name  # a finite probe means finite
            assert not finite_probe(np.full(4, big, dtype))  # ...not the other way round


def _arrays_reply(pid: int, arrays: dict[str, np.ndarray], loss: float = 1.0) -> Message:
    ins = Message(RecordDict(), dst_node_id=100 + pid, message_type="train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": 1 + pid, "train_loss": loss}),
        }
    )
    return Message(content, reply_to=ins)


def test_checking_while_folding_refuses_exactly_what_the_separate_check_refuses() -> None:
    """The streamed mean checks each product as it folds: the same replies are refused with
    the same message, the others give the same sums bit for bit, a refused reply adds nothing
    (even when its bad array comes after good ones), and a finite reply whose product
    overflows is added, as before."""
    rng = np.random.default_rng(0)
    huge = np.float32(3e38)

    def arrays(**bad: np.ndarray) -> dict[str, np.ndarray]:
        base = {
            "a": rng.standard_normal((3, 4)).astype(np.float32),
            "b": rng.standard_normal(5).astype(np.float32),
            "n": np.array(4, np.int64),
        }
        return base | bad

    replies = [
        _arrays_reply(0, arrays()),
        _arrays_reply(1, arrays(b=np.array([1, np.nan, 2, 3, 4], np.float32))),
        _arrays_reply(
            2, arrays(a=np.full((3, 4), np.inf, np.float32), b=np.full(5, -np.inf, np.float32))
        ),
        _arrays_reply(3, arrays(), loss=float("nan")),
        _arrays_reply(4, arrays(a=np.full((3, 4), huge, np.float32))),  # finite; w * x overflows
        _arrays_reply(5, arrays()),
    ]
    separate, fused = RunningMean("num-examples"), RunningMean("num-examples")
    for msg in replies:
        expected = reply_problem(msg)
        if expected is None:
            separate.add(msg)
        assert reply_problem(msg, lambda m: fused.add(m, check_finite=True)) == expected
    assert [reply_problem(m) is None for m in replies] == [True, False, False, False, True, True]
    assert "non-finite values in a, b" in str(reply_problem(replies[2]))
    assert "non-finite values in train_loss" in str(reply_problem(replies[3]))
    assert fused.count == separate.count == 3 and fused.total == separate.total
    for key in ("a", "b", "n"):
        assert fused._sums[key].tobytes() == separate._sums[key].tobytes()
    assert np.isinf(fused._sums["a"]).all()  # the overflow reaches the server's own check


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
