"""``digits5`` loader on FedBN-format fixture files written by the test."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fedwon.datasets import DataError, DataSpec, UnsafePickleError, build_federation
from fedwon.datasets.digits5 import FOLDERS

# FedBN's per-domain image shapes (without N)
SHAPES = {
    "mnist": (28, 28),
    "mnist_m": (28, 28, 3),
    "svhn": (32, 32, 3),
    "usps": (16, 16),
    "synth": (32, 32, 3),
}
PART = 30
TEST = 20


def _pair(
    rng: np.random.Generator, n: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    return images, labels


def _dump(path: Path, obj: object, as_npy: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_npy:  # np.save of an object pair, as some re-exports of FedBN's files are
        pair = np.empty(2, dtype=object)
        pair[0], pair[1] = obj  # type: ignore[misc]
        with path.open("wb") as f:
            np.save(f, pair, allow_pickle=True)
    else:  # FedBN's own files: pkl.dump((images, labels), f, pkl.HIGHEST_PROTOCOL)
        path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def write_digits5(root: Path, parts: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for domain, shape in SHAPES.items():
        folder = root / FOLDERS[domain]
        for part in range(parts):
            _dump(folder / "partitions" / f"train_part{part}.pkl", _pair(rng, PART, shape))
        _dump(folder / "test.pkl", _pair(rng, TEST, shape), as_npy=domain == "svhn")
    return root


@pytest.fixture
def digits_root(tmp_path: Path) -> Path:
    return write_digits5(tmp_path / "data")


def test_loads_all_domains_like_fedbn(digits_root: Path) -> None:
    fed = build_federation(DataSpec(dataset="digits5", data_root=str(digits_root)))
    assert fed.domains == ["mnist", "mnist_m", "svhn", "usps", "synth"]
    for pid in range(5):
        x, y = fed.train_data(pid)
        assert x.shape == (PART, 3, 28, 28) and x.dtype == torch.float32  # one part, like FedBN
        assert fed.test_data(pid)[0].shape == (TEST, 3, 28, 28)
        assert sorted(y.tolist()) == sorted((np.arange(PART) % 10).tolist())


def test_grey_domain_repeated_to_three_identical_channels(digits_root: Path) -> None:
    fed = build_federation(DataSpec(dataset="digits5", data_root=str(digits_root)))
    x, _ = fed.train_data(fed.domains.index("mnist"))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    raw = pickle.loads((digits_root / "MNIST/partitions/train_part0.pkl").read_bytes())[0]
    expected = torch.from_numpy(raw.astype(np.float32) / 255.0 * 2 - 1)
    got = {tuple(np.round(img[0].numpy(), 4).ravel()) for img in x}
    assert tuple(np.round(expected[0].numpy(), 4).ravel()) in got


def test_train_per_domain_reads_more_parts_and_caps_balanced(digits_root: Path) -> None:
    fed = build_federation(
        DataSpec(
            dataset="digits5",
            data_root=str(digits_root),
            train_per_domain=50,
            test_per_domain=10,
            domains=("usps",),
            num_clients=1,
        )
    )
    _, y = fed.train_data(0)
    assert len(y) == 50 and np.bincount(y.numpy()).tolist() == [5] * 10
    assert fed.num_test(0) == 10


def test_image_size_option(digits_root: Path) -> None:
    fed = build_federation(
        DataSpec(
            dataset="digits5",
            data_root=str(digits_root),
            domains=("svhn",),
            num_clients=1,
            image_size=32,
        )
    )
    assert fed.train_data(0)[0].shape[1:] == (3, 32, 32)


def test_missing_root_folder_and_files(tmp_path: Path, digits_root: Path) -> None:
    with pytest.raises(DataError, match=r"data_root .*nowhere is not a directory; expected layout"):
        build_federation(DataSpec(dataset="digits5", data_root=str(tmp_path / "nowhere")))
    (digits_root / "USPS" / "test.pkl").unlink()
    with pytest.raises(
        DataError, match=r"missing file .*USPS/test\.pkl; expected layout: .*test\.pkl"
    ):
        build_federation(DataSpec(dataset="digits5", data_root=str(digits_root)))
    (digits_root / "SVHN" / "partitions" / "train_part0.pkl").unlink()
    with pytest.raises(DataError, match=r"missing file .*SVHN/partitions/train_part0\.pkl"):
        build_federation(DataSpec(dataset="digits5", data_root=str(digits_root)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"missing folder .*MNIST for domain 'mnist'"):
        build_federation(DataSpec(dataset="digits5", data_root=str(empty)))


BAD_CONTENT = [
    ((np.zeros((4, 28, 28), np.float32), np.zeros(4, np.int64)), r"dtype uint8, got float32"),
    ((np.zeros((4, 784), np.uint8), np.zeros(4, np.int64)), r"shape \(4, 784\); expected"),
    (
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 10])),
        r"label 10 out of range; expected 0\.\.9",
    ),
    ((np.zeros((4, 28, 28), np.uint8), np.array([0, -1, 2, 3])), r"label -1 out of range"),
    ((np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.int64)), r"3 labels for 4 images"),
    ((np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.float64)), r"labels must be integers"),
    ({"images": 1}, r"expected a pickled \(images, labels\) pair, got dict"),
    # zero-height / zero-width images used to crash deep inside torch's resize
    ((np.zeros((4, 0, 28), np.uint8), np.zeros(4, np.int64)), r"height 0 and width 28"),
    ((np.zeros((4, 28, 0, 3), np.uint8), np.zeros(4, np.int64)), r"height 28 and width 0"),
]


@pytest.mark.parametrize(("content", "message"), BAD_CONTENT)
def test_malformed_arrays_named_with_file(digits_root: Path, content: object, message: str) -> None:
    path = digits_root / "MNIST" / "test.pkl"
    _dump(path, content)
    with pytest.raises(DataError, match=message) as info:
        build_federation(DataSpec(dataset="digits5", data_root=str(digits_root)))
    assert str(path) in str(info.value)


def test_a_domain_without_test_images_is_refused(digits_root: Path) -> None:
    """It would otherwise vanish silently from every per-domain result."""
    _dump(digits_root / "USPS" / "test.pkl", (np.zeros((0, 16, 16), np.uint8), np.zeros(0, int)))
    with pytest.raises(DataError, match=r"dataset 'digits5': domain 'usps' has no test images"):
        build_federation(DataSpec(dataset="digits5", data_root=str(digits_root)))


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_malicious_partition_file_refused(digits_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "created-by-pickle"
    path = digits_root / "SynthDigits" / "partitions" / "train_part0.pkl"
    _dump(path, (_Payload(target), np.zeros(3)))
    with pytest.raises(UnsafePickleError, match=r"train_part0\.pkl: refused to unpickle global"):
        build_federation(DataSpec(dataset="digits5", data_root=str(digits_root)))
    assert not target.exists()
