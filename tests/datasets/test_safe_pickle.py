"""The restricted unpickler: numpy data loads, anything executable is refused unrun."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedwon.datasets import DataError, UnsafePickleError, load_pickle_file
from fedwon.datasets.safe_pickle import safe_loads


class _CreatesFile:
    """Unpickling this calls ``open(target, "w")``, creating a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


class _RunsShell:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


def _pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.arange(4, dtype=np.int64)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_raw_pickle_of_arrays_loads(tmp_path: Path, protocol: int) -> None:
    images, labels = _pair()
    path = tmp_path / "pair.pkl"
    path.write_bytes(pickle.dumps((images, labels, {"k": [1, 2.5, "s"]}), protocol=protocol))
    got = load_pickle_file(path)
    assert np.array_equal(got[0], images) and got[0].dtype == np.uint8
    assert np.array_equal(got[1], labels)
    assert got[2] == {"k": [1, 2.5, "s"]}


def test_numpy_scalars_strings_and_object_arrays_load() -> None:
    payload = (np.int64(7), np.float32(1.5), np.array(["a/b.jpg", "c.png"]), np.dtype("U5"))
    got = safe_loads(pickle.dumps(payload, protocol=2))
    assert got[0] == 7 and got[1] == np.float32(1.5)
    assert list(got[2]) == ["a/b.jpg", "c.png"] and got[3] == np.dtype("U5")


def test_npy_object_array_loads(tmp_path: Path) -> None:
    images, labels = _pair()
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = images, labels
    path = tmp_path / "pair.pkl"  # FedBN-style name, .npy content
    with path.open("wb") as f:
        np.save(f, pair, allow_pickle=True)
    got = load_pickle_file(path)
    assert got.shape == (2,)
    assert np.array_equal(got[0], images) and np.array_equal(got[1], labels)


def test_npy_plain_array_loads_without_pickle(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = tmp_path / "plain.npy"
    np.save(path, np.asfortranarray(array))
    assert np.array_equal(load_pickle_file(path), array)


@pytest.mark.parametrize("gadget", [_CreatesFile, _RunsShell])
@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pickle_refused_and_payload_never_runs(
    tmp_path: Path, gadget: type, protocol: int
) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "train_part0.pkl"
    path.write_bytes(pickle.dumps((np.zeros(3), gadget(target)), protocol=protocol))
    with pytest.raises(UnsafePickleError, match="refused") as info:
        load_pickle_file(path)
    message = str(info.value)
    assert str(path) in message and "refused" in message
    assert not target.exists()


def test_malicious_payload_inside_npy_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = np.zeros(2), _CreatesFile(target)
    path = tmp_path / "evil.npy"
    np.save(path, evil, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match=r"evil\.npy"):
        load_pickle_file(path)
    assert not target.exists()


def test_other_classes_refused() -> None:
    from collections import OrderedDict

    with pytest.raises(UnsafePickleError, match=r"collections\.OrderedDict"):
        safe_loads(pickle.dumps(OrderedDict(a=1)), source="x.pkl")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing file .*nothing\.pkl"):
        load_pickle_file(tmp_path / "nothing.pkl")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps((np.zeros(100), 1))[:40])
    with pytest.raises(DataError, match=r"broken\.pkl: not a readable pickle"):
        load_pickle_file(broken)
