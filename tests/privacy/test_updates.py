"""Updates as data: zero-copy payload views, reply - sent, and sent + update back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedwon.engine.fastarrays import adopt, fast_array_codec, payload_view
from fedwon.privacy.updates import (
    UpdateMismatchError,
    apply_update,
    arrays_of,
    hold_fixed,
    update_tensors,
)

CASES = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(5, np.int64),
    np.zeros((0, 3), np.float32),
    np.arange(6, dtype=">f4"),  # big-endian: read as such, never reinterpreted
    np.linspace(0, 1, 7, dtype=np.float16),
]


@pytest.mark.parametrize("fast", [False, True])
def test_payload_views_equal_flowers_decoding(fast: bool) -> None:
    with fast_array_codec(fast):
        for values in CASES:
            array = Array(values)
            view = payload_view(array)
            assert view is not None and not view.flags.writeable
            np.testing.assert_array_equal(view, array.numpy())
            assert view.dtype == array.numpy().dtype and view.shape == values.shape
        fortran = Array(np.asfortranarray(np.arange(12.0).reshape(3, 4)))
        view = payload_view(fortran)  # not C order: decoded the ordinary way, still read-only
        np.testing.assert_array_equal(view, np.arange(12.0).reshape(3, 4))
        assert not view.flags.writeable


def test_an_update_reads_the_fast_engines_payload_without_encoding_it() -> None:
    """Under the fast engine a reply's Array holds its ndarray; DP reads it in place rather
    than through ``Array.data``, which would serialize it to .npy bytes first."""
    with fast_array_codec(True):
        reply = ArrayRecord({"w": adopt(np.full((2, 3), 1.5, np.float32))})
        update = update_tensors(reply, {"w": np.ones((2, 3), np.float32)})
        assert "data" not in reply["w"].__dict__  # never encoded
    torch.testing.assert_close(update["w"], torch.full((2, 3), 0.5))


def test_update_round_trip_keeps_counters_and_dtypes() -> None:
    sent = {"w": np.ones((2, 3), np.float32), "n": np.array(4, np.int64)}
    reply = ArrayRecord({"w": Array(np.full((2, 3), 1.5, np.float32)), "n": Array(np.array(9))})
    update = update_tensors(reply, sent)
    assert list(update) == ["w"]  # the counter is not part of the update
    torch.testing.assert_close(update["w"], torch.full((2, 3), 0.5))
    buffer = {"w": torch.empty(2, 3)}
    assert update_tensors(reply, sent, out=buffer)["w"] is buffer["w"]
    back = arrays_of(apply_update(sent, update))
    np.testing.assert_array_equal(back["w"], np.full((2, 3), 1.5, np.float32))
    assert back["n"] == 4 and back["n"].dtype == np.int64  # the sent value, not the reply's
    assert back["n"].shape == ()  # 0-d as sent: the client's reply is 0-d too


def test_hold_fixed_restores_counters_an_aggregator_turned_into_floats() -> None:
    sent = {"w": np.ones(3, np.float32), "n": np.array(4, np.int64)}
    mean = ArrayRecord({"w": Array(np.full(3, 2.0, np.float32)), "n": Array(np.array([4.0]))})
    held = arrays_of(hold_fixed(mean, sent))
    assert list(held) == ["w", "n"]
    np.testing.assert_array_equal(held["w"], np.full(3, 2.0, np.float32))
    assert (held["n"].dtype, held["n"].shape, held["n"].item()) == (np.int64, (), 4)


def test_mismatched_replies_are_refused() -> None:
    sent = {"w": np.ones(3, np.float32)}
    with pytest.raises(UpdateMismatchError, match=r"node 7 replied with shape \(4,\) for 'w'"):
        update_tensors(ArrayRecord({"w": Array(np.ones(4, np.float32))}), sent, "node 7")
    with pytest.raises(UpdateMismatchError, match=r"unexpected \['v'\]"):
        update_tensors(ArrayRecord({"v": Array(np.ones(3, np.float32))}), sent)
