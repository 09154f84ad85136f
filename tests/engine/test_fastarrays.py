"""Tests of the fast record layer: byte-identical encoding, Flower's aggregation bit for bit,
pickling, arrays outliving the run, and Flower's methods restored afterwards."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.app.message.typeddict import TypedDict
from flwr.serverapp.strategy import fedavg, strategy_utils

from fedwon.engine import fastarrays
from fedwon.engine.fastarrays import fast_array_codec, is_lazy, payload_view

FLOWER_AGGREGATE = strategy_utils.aggregate_arrayrecords

CASES = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(12.0).reshape(3, 4)[:, ::2],
    np.array(3.5),
    np.zeros((2, 0, 3), np.int8),
    np.array([True, False]),
    np.arange(5, dtype=">i4"),
    np.arange(6, dtype=np.float16),
    np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    np.array(["2020-01-01"], dtype="datetime64[D]"),
]


@pytest.mark.parametrize("arr", CASES, ids=lambda a: f"{a.dtype}{a.shape}")
def test_lazy_arrays_encode_and_decode_like_flower(arr: np.ndarray) -> None:
    ref = Array(arr)
    expected = ref.numpy()
    with fast_array_codec():
        fast = Array(arr)
        decoded = [fast.numpy(), ref.numpy()]
        assert fast.data == ref.data
    for got in decoded:
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes() and got.flags.writeable


def test_state_dicts_stay_arrays_until_bytes_are_asked_for() -> None:
    model = torch.nn.Linear(3, 2)
    expected = ArrayRecord(model.state_dict())
    with fast_array_codec():
        record = ArrayRecord(model.state_dict())
        assert all(is_lazy(a) for a in record.values())
        with torch.no_grad():
            model.weight.add_(1.0)  # the record holds a copy, not the live tensor
        back = record.to_torch_state_dict()
    assert all(torch.equal(back[k], torch.from_numpy(expected[k].numpy())) for k in back)
    assert {k: a.data for k, a in record.items()} == {k: a.data for k, a in expected.items()}
    assert not any(is_lazy(a) for a in record.values())


def test_torch_decoding_shares_values_until_someone_writes() -> None:
    as_bytes = ArrayRecord([np.arange(3)])  # made outside a run: Flower's copy path
    with fast_array_codec():
        record = ArrayRecord([np.arange(6, dtype=np.float32), np.arange(3)])
        first, second = record.to_torch_state_dict(), record.to_torch_state_dict()
        from_bytes = as_bytes.to_torch_state_dict()
    if fastarrays.cow_tensors_work():
        assert torch._C._is_cow_tensor(first["0"]) and torch._C._is_cow_tensor(second["0"])
    first["0"].add_(1.0)
    second["0"].numpy()[0] = -1.0
    first["1"].data.mul_(5)
    from_bytes["0"].add_(1)
    assert first["0"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert second["0"].tolist() == [-1.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert (first["1"].tolist(), second["1"].tolist()) == ([0, 5, 10], [0, 1, 2])
    assert np.array_equal(record["0"].numpy(), np.arange(6, dtype=np.float32))
    assert np.array_equal(record["1"].numpy(), np.arange(3))
    assert np.array_equal(as_bytes["0"].numpy(), np.arange(3))


def test_payloads_cannot_be_written_through_views() -> None:
    with fast_array_codec():
        arr = Array(np.arange(4.0))
    view = payload_view(arr)
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 9.0
    with pytest.raises(ValueError, match="cannot set WRITEABLE flag"):
        view.flags.writeable = True
    assert np.array_equal(arr.numpy(), np.arange(4.0))


def _reply(w: np.ndarray, b: np.ndarray, steps: np.ndarray, n: int) -> RecordDict:
    """A reply as FedAvg sees it: two ArrayRecords, mixed dtypes, an integer weight."""
    return RecordDict(
        {
            "a": ArrayRecord({"w": Array(w), "steps": Array(steps)}),
            "b": ArrayRecord({"bias": Array(b)}),
            "m": MetricRecord({"num-examples": n}),
        }
    )


def _replies(seed: int, lazy: bool) -> list[RecordDict]:
    """Four replies with random values, built with or without lazy payloads."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (3, 1, 7, 2):
        args = (
            rng.standard_normal((5, 4)).astype(np.float32),
            rng.standard_normal(4),
            rng.integers(0, 9, size=3),
            n,
        )
        with fast_array_codec(lazy):
            out.append(_reply(*args))
    return out


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy-replies", "byte-replies"])
def test_aggregation_is_flowers_bit_for_bit(lazy: bool) -> None:
    expected = FLOWER_AGGREGATE(_replies(1, lazy=False), "num-examples")
    replies = _replies(1, lazy)
    with fast_array_codec():
        assert fedavg.aggregate_arrayrecords is fastarrays.aggregate_arrayrecords
        got = fedavg.aggregate_arrayrecords(replies, "num-examples")
    assert list(got.keys()) == list(expected.keys()) == ["w", "steps", "bias"]
    for key, arr in expected.items():
        assert (got[key].dtype, got[key].shape, got[key].data) == (arr.dtype, arr.shape, arr.data)


def test_lazy_arrays_pickle_copy_and_outlive_the_run() -> None:
    with fast_array_codec():
        record = ArrayRecord([np.arange(6, dtype=np.float32).reshape(2, 3)])
        inside = pickle.loads(pickle.dumps(record))
    after = pickle.loads(pickle.dumps(record))
    expected = ArrayRecord([np.arange(6, dtype=np.float32).reshape(2, 3)])
    for rec in (record, inside, after, copy.copy(record), copy.deepcopy(record)):
        assert rec["0"].data == expected["0"].data
        assert np.array_equal(rec["0"].numpy(), expected["0"].numpy())


def test_flower_methods_are_restored_after_the_run() -> None:
    originals = (Array.numpy, TypedDict.__setitem__, fedavg.aggregate_arrayrecords)
    with fast_array_codec(), fast_array_codec():  # nested runs: restored by the outer one
        assert Array.numpy is not originals[0]
    assert (Array.numpy, TypedDict.__setitem__, fedavg.aggregate_arrayrecords) == originals
    assert RecordDict.__dict__["array_records"].fget.__module__.startswith("flwr")


# ---- copy-on-write snapshots (streamed replies) ------------------------------------------


def _snapshot(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(state)`` as a client's reply is built while the grid streams."""
    saved = fastarrays.lazy_snapshots(True)
    try:
        return ArrayRecord(state)
    finally:
        fastarrays.lazy_snapshots(saved)


def test_copy_on_write_snapshots_keep_their_values_whatever_writes_the_model() -> None:
    assert fastarrays.cow_snapshots_work()
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    writes = [
        lambda: model[0].weight.data.add_(1.0),
        lambda: model.load_state_dict(
            {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
        ),
        lambda: torch._foreach_copy_(
            [p.detach() for p in model.parameters()],
            [torch.full_like(p, 3.0) for p in model.parameters()],
        ),
        lambda: model[1].bias.detach().numpy().__setitem__(0, 7.0),  # a view taken now
        lambda: (model(torch.ones(1, 3)).sum().backward(), optimizer.step()),
    ]
    with fast_array_codec():
        for write in writes:
            before = {k: v.clone() for k, v in model.state_dict().items()}
            record = _snapshot(model.state_dict())
            assert all(torch._C._is_cow_tensor(p) for p in model.parameters())
            write()
            assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
            for key, arr in record.items():
                assert np.array_equal(payload_view(arr), before[key].numpy())
                assert arr.data == Array(before[key].numpy()).data  # Flower's bytes
            back = record.to_torch_state_dict()
            back["0.weight"].add_(5.0)  # the receiver's tensors are its own
            assert np.array_equal(record["0.weight"].numpy(), before["0.weight"].numpy())
            pickled = pickle.loads(pickle.dumps(record))
            assert np.array_equal(pickled["1.bias"].numpy(), before["1.bias"].numpy())


def test_a_dropped_snapshot_costs_no_copy_and_outside_streaming_replies_copy() -> None:
    model = torch.nn.Linear(300, 200)
    weight = model.weight.detach()
    with fast_array_codec():
        address = weight.data_ptr()
        record = _snapshot(model.state_dict())
        assert record["weight"].__dict__[fastarrays.PAYLOAD_KEY].ctypes.data == address
        del record  # folded and dropped: the next write takes the memory back
        model.load_state_dict({"weight": torch.ones(200, 300), "bias": torch.ones(200)})
        assert weight.data_ptr() == address and not torch._C._is_cow_tensor(weight)
        kept = _snapshot(model.state_dict())  # still held: the write copies, in torch
        model.load_state_dict({"weight": torch.zeros(200, 300), "bias": torch.zeros(200)})
        assert weight.data_ptr() != address and np.all(kept["weight"].numpy() == 1.0)
        copied = ArrayRecord(model.state_dict())  # not streaming: a copy, as before
        assert not torch._C._is_cow_tensor(weight)
        assert copied["weight"].__dict__[fastarrays.PAYLOAD_KEY].ctypes.data != weight.data_ptr()


def test_memory_torch_does_not_own_and_odd_tensors_are_copied() -> None:
    backing = np.arange(6, dtype=np.float32)
    state = {
        "from_numpy": torch.from_numpy(backing),
        "transposed": torch.arange(6.0).reshape(2, 3).t(),
        "empty": torch.zeros(0),
        "scalar": torch.tensor(2.5),
        "ints": torch.arange(3),
    }
    with fast_array_codec():
        record = _snapshot(state)
        backing[:] = -1.0  # written behind torch's back: the record must hold a copy
        state["scalar"].add_(1.0)
        state["ints"].mul_(10)
    assert record["from_numpy"].numpy().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert record["transposed"].numpy().tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    assert record["empty"].numpy().shape == (0,)
    assert record["scalar"].numpy().tolist() == 2.5 and record["ints"].numpy().tolist() == [0, 1, 2]
    expected = ArrayRecord({k: v for k, v in state.items() if k == "transposed"})
    assert record["transposed"].data == expected["transposed"].data


def test_state_dict_records_are_flowers_and_other_inputs_take_flowers_constructor() -> None:
    state = torch.nn.Linear(3, 2).state_dict()
    expected = ArrayRecord(state)
    with fast_array_codec():
        fast = ArrayRecord(state)
        assert list(fast.keys()) == list(expected.keys())
        assert all(fast[k].data == expected[k].data for k in state)
        assert ArrayRecord([np.zeros(2)])["0"].shape == (2,)
        assert list(ArrayRecord({"a": Array(np.ones(1))}).keys()) == ["a"]
        assert len(ArrayRecord({})) == 0 and len(ArrayRecord(state, keep_input=True)) == 2
        with pytest.raises(TypeError):
            ArrayRecord({"a": torch.ones(1), "b": Array(np.ones(1))})


# ---- the round rules' streamed mean handed to FedAvg ---------------------------------------


def test_fedavg_of_one_server_result_shares_it_and_equals_flowers_bits() -> None:
    mean = np.array([0.1, -2.5, np.inf, 3e38], np.float32)
    counts = np.arange(3.0)
    with fast_array_codec():
        exact = fastarrays.adopt_result(mean.copy())
        reply = RecordDict(
            {
                "a": ArrayRecord({"w": exact, "n": fastarrays.adopt_result(counts.copy())}),
                "m": MetricRecord({"num-examples": 7}),
            }
        )
        payload = exact.__dict__[fastarrays.PAYLOAD_KEY]
        got = fedavg.aggregate_arrayrecords([reply], "num-examples")
        assert got["w"].__dict__[fastarrays.PAYLOAD_KEY] is payload  # shared, not recomputed
        plain = fedavg.aggregate_arrayrecords(
            [_reply(mean, counts, np.arange(2), 7)], "num-examples"
        )
        assert plain["w"].__dict__[fastarrays.PAYLOAD_KEY] is not payload  # not a result
    flower = FLOWER_AGGREGATE([reply], "num-examples")
    assert got["w"].data == flower["w"].data == plain["w"].data
    assert got["n"].data == flower["n"].data


def test_server_results_outside_a_run_are_plain_arrays() -> None:
    values = np.arange(4.0)
    arr = fastarrays.adopt_result(fastarrays.empty_result((4,), np.float64))
    assert (
        not is_lazy(arr)
        and type(fastarrays.empty_result((2,), np.float32).base) is not torch.Tensor
    )
    assert Array(values).data == fastarrays.adopt_result(values.copy()).data
    with fast_array_codec():
        out = fastarrays.empty_result((2, 3), np.float32)
        out[...] = 1.5
        arr = fastarrays.adopt_result(out)
        tensors = ArrayRecord({"x": arr}).to_torch_state_dict()
    assert is_lazy(arr) and torch._C._is_cow_tensor(tensors["x"])  # no copy into torch
    tensors["x"].add_(1.0)
    assert np.all(arr.numpy() == 1.5)
