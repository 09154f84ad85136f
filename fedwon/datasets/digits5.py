"""``digits5``: FedBN's pre-processed Digits-5 files (MNIST, MNIST-M, SVHN, USPS, SynthDigits).

Layout under ``data_root`` (FedBN's ``digit_dataset.zip`` unpacked)::

    MNIST/partitions/train_part0.pkl ... train_part9.pkl    MNIST/test.pkl
    MNIST_M/...   SVHN/...   USPS/...   SynthDigits/...      (same structure)

Each file is a pickled ``(images uint8, labels int)`` pair: MNIST ``(N, 28, 28)``, MNIST-M
``(N, 28, 28, 3)``, SVHN and SynthDigits ``(N, 32, 32, 3)``, USPS ``(N, 16, 16)``; every
``train_part`` holds about 743 images. FedBN trains each client on one part (``--percent 0.1``).
Here ``train_per_domain=None`` reads ``train_part0`` only; a number ``n`` reads as many parts as
needed (in order) to hold ``n`` images and keeps a class-balanced seeded subset of ``n``.
``test_per_domain`` caps ``test.pkl`` the same way. Images are resized (bilinear, antialiased) to
``image_size`` (default 28) and grey domains repeated to three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedwon.datasets.base import DomainArrays
from fedwon.datasets.errors import DataError
from fedwon.datasets.files import cap_indices, read_pair, require_file, require_root
from fedwon.datasets.images import as_labels, as_nchw_uint8, standardize
from fedwon.datasets.spec import DataSpec

DOMAINS: tuple[str, ...] = ("mnist", "mnist_m", "svhn", "usps", "synth")
FOLDERS: dict[str, str] = {
    "mnist": "MNIST",
    "mnist_m": "MNIST_M",
    "svhn": "SVHN",
    "usps": "USPS",
    "synth": "SynthDigits",
}
NUM_PARTS = 10
NUM_CLASSES = 10
LAYOUT = (
    "<data_root>/{MNIST,MNIST_M,SVHN,USPS,SynthDigits}/partitions/train_part{0..9}.pkl and "
    "<data_root>/<DOMAIN>/test.pkl, each a pickled (images uint8, labels) pair (FedBN's Digits-5)"
)


def read_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One FedBN digits file as (uint8 NCHW images, int64 labels), validated."""
    images, labels = read_pair(require_file(path, LAYOUT))
    x = as_nchw_uint8(images, str(path))
    return x, as_labels(labels, len(x), NUM_CLASSES, str(path))


def read_train_parts(folder: Path, wanted: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``train_part0`` (``wanted is None``) or as many parts as needed for ``wanted`` images."""
    xs, ys = [], []
    total = 0
    for part in range(NUM_PARTS):
        path = folder / "partitions" / f"train_part{part}.pkl"
        if part > 0 and not path.is_file():
            break
        x, y = read_images(path)
        xs.append(x)
        ys.append(y)
        total += len(y)
        if wanted is None or total >= wanted:
            break
    if len({x.shape[1:] for x in xs}) > 1:
        raise DataError(f"{folder}/partitions: train parts have different image shapes")
    return np.concatenate(xs), np.concatenate(ys)


def load_domain(
    root: Path,
    domain: str,
    spec_train: int | None,
    spec_test: int | None,
    image_size: int,
    seed: int,
) -> DomainArrays:
    folder = root / FOLDERS[domain]
    if not folder.is_dir():
        raise DataError(f"missing folder {folder} for domain {domain!r}; expected layout: {LAYOUT}")
    train_x, train_y = read_train_parts(folder, spec_train)
    test_x, test_y = read_images(folder / "test.pkl")
    arrays = DomainArrays(train_x, train_y, test_x, test_y).select(
        cap_indices(train_y, spec_train, seed, domain, "train"),
        cap_indices(test_y, spec_test, seed, domain, "test"),
    )
    return DomainArrays(
        standardize(arrays.train_x, image_size),
        arrays.train_y,
        standardize(arrays.test_x, image_size),
        arrays.test_y,
    )


def load_digits5(
    spec: DataSpec, domains: tuple[str, ...], image_size: int
) -> dict[str, DomainArrays]:
    """Loader for :data:`fedwon.datasets.DATASETS` (``digits5``)."""
    root = require_root(spec.data_root, "digits5", LAYOUT)
    return {
        d: load_domain(root, d, spec.train_per_domain, spec.test_per_domain, image_size, spec.seed)
        for d in domains
    }
