"""``cifar10`` loader on python-version batch fixtures (dicts with bytes keys, protocol 2)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fedwon.datasets import DataError, DataSpec, build_federation
from fedwon.datasets.cifar10 import FOLDER, TEST_BATCH, TRAIN_BATCHES

PER_BATCH = 20


def write_cifar(folder: Path, per_batch: int = PER_BATCH, seed: int = 0) -> Path:
    """Batches shaped like the real ones: {b"batch_label", b"labels", b"data", b"filenames"}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in np.arange(per_batch) % 10],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / FOLDER)
    return root


def test_iid_over_cifar(cifar_root: Path) -> None:
    fed = build_federation(
        DataSpec(dataset="cifar10", data_root=str(cifar_root), partition="iid", num_clients=4)
    )
    assert fed.domains == ["cifar10"] and fed.image_size == 32 and fed.num_classes == 10
    sizes = [fed.num_train(p) for p in range(4)]
    assert sum(sizes) == 5 * PER_BATCH and max(sizes) - min(sizes) <= 1
    assert sum(fed.num_test(p) for p in range(4)) == PER_BATCH
    assert fed.train_data(0)[0].shape[1:] == (3, 32, 32)
    assert len(fed.domain_test_data("cifar10")[1]) == PER_BATCH


def test_pixel_layout_is_rgb_planes(cifar_root: Path) -> None:
    raw = pickle.loads((cifar_root / FOLDER / TEST_BATCH).read_bytes(), encoding="bytes")
    fed = build_federation(
        DataSpec(
            dataset="cifar10", data_root=str(cifar_root / FOLDER), partition="iid", num_clients=1
        )
    )
    x, y = fed.domain_test_data("cifar10")
    pixels = ((x * 0.5 + 0.5) * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()
    assert {row.tobytes() for row in pixels} == {row.tobytes() for row in raw[b"data"]}
    assert sorted(y.tolist()) == sorted(raw[b"labels"])


def test_dirichlet_and_caps(cifar_root: Path) -> None:
    fed = build_federation(
        DataSpec(
            dataset="cifar10",
            data_root=str(cifar_root),
            partition="dirichlet",
            alpha=0.5,
            num_clients=5,
            train_per_domain=50,
            test_per_domain=10,
            image_size=16,
        )
    )
    joined = np.concatenate(fed.assignment.train)
    assert len(joined) == len(np.unique(joined)) == 50
    assert min(fed.num_train(p) for p in range(5)) >= 1
    assert fed.train_data(0)[0].shape[1:] == (3, 16, 16)


def test_cifar_errors(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path / "c" / FOLDER)
    spec = DataSpec(dataset="cifar10", data_root=str(tmp_path / "c"), partition="iid")
    (folder / "data_batch_3").unlink()
    with pytest.raises(
        DataError, match=r"missing file .*data_batch_3; expected layout: .*data_batch_1\.\.5"
    ):
        build_federation(spec)
    write_cifar(folder)
    (folder / TEST_BATCH).write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}, 2))
    with pytest.raises(DataError, match=r"test_batch: 'data' has shape \(2, 100\)"):
        build_federation(spec)
    (folder / TEST_BATCH).write_bytes(pickle.dumps([1, 2], 2))
    with pytest.raises(DataError, match=r"test_batch: expected a pickled dict, got list"):
        build_federation(spec)
