"""``cifar10``: the CIFAR-10 "python version" batches, as a single domain named ``cifar10``.

Layout (the official ``cifar-10-python.tar.gz`` unpacked; ``data_root`` may be the folder that
contains ``cifar-10-batches-py`` or that folder itself)::

    cifar-10-batches-py/data_batch_1 ... data_batch_5   cifar-10-batches-py/test_batch

Each batch is a (Python 2) pickle of a dict with ``b"data"`` (``uint8`` ``(10000, 3072)``, rows are
RGB planes of 32×32) and ``b"labels"`` (a list of ints); it is read with the restricted
unpickler. Meant for the ``iid`` and ``dirichlet`` partitioners; ``train_per_domain`` and
``test_per_domain`` cap the sets (class-balanced, seeded), ``image_size`` defaults to 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedwon.datasets.base import DomainArrays
from fedwon.datasets.errors import DataError
from fedwon.datasets.files import cap_indices, require_file, require_root
from fedwon.datasets.images import as_labels, as_nchw_uint8, resize_nchw
from fedwon.datasets.safe_pickle import load_pickle_file
from fedwon.datasets.spec import DataSpec

DOMAINS: tuple[str, ...] = ("cifar10",)
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
NUM_CLASSES = 10
LAYOUT = (
    f"<data_root>/{FOLDER}/data_batch_1..5 and {FOLDER}/test_batch "
    "(the CIFAR-10 python-version pickles)"
)


def batch_folder(root: Path) -> Path:
    """``root/cifar-10-batches-py`` if present, else ``root`` itself if it holds the batches."""
    nested = root / FOLDER
    if nested.is_dir() or not (root / TEST_BATCH).is_file():
        return nested
    return root


def _field(batch: dict[Any, Any], name: str, path: Path) -> Any:
    for key in (name.encode("ascii"), name):
        if key in batch:
            return batch[key]
    raise DataError(f"{path}: batch has no {name!r} entry; keys: {sorted(map(str, batch))}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (uint8 ``(N, 3, 32, 32)``, int64 labels), validated."""
    batch = load_pickle_file(require_file(path, LAYOUT))
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: 'data' has shape {shape}; expected (N, 3072) uint8")
    x = as_nchw_uint8(data.reshape(-1, 3, 32, 32), str(path))
    return x, as_labels(_field(batch, "labels", path), len(x), NUM_CLASSES, str(path))


def load_cifar10(
    spec: DataSpec, domains: tuple[str, ...], image_size: int
) -> dict[str, DomainArrays]:
    """Loader for :data:`fedwon.datasets.DATASETS` (``cifar10``)."""
    folder = batch_folder(require_root(spec.data_root, "cifar10", LAYOUT))
    parts = [read_batch(folder / name) for name in TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read_batch(folder / TEST_BATCH)
    arrays = DomainArrays(train_x, train_y, test_x, test_y).select(
        cap_indices(train_y, spec.train_per_domain, spec.seed, "cifar10", "train"),
        cap_indices(test_y, spec.test_per_domain, spec.seed, "cifar10", "test"),
    )
    resized = DomainArrays(
        resize_nchw(arrays.train_x, image_size),
        arrays.train_y,
        resize_nchw(arrays.test_x, image_size),
        arrays.test_y,
    )
    return dict.fromkeys(domains, resized)
