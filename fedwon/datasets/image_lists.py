"""Data sets described by FedBN-style ``(image paths, labels)`` pickles plus image folders.

Shared by ``office-caltech10`` and ``domainnet``. Each site (domain) has
``<data_root>/<subdir>/<site>_train.pkl`` and ``<site>_test.pkl``, each a pickled pair of an image
path list and a label list (class-name strings as in FedBN, or integer ids). Paths are resolved
like FedBN does — relative to ``data_root`` (FedBN's ``../data``) — falling back to
``data_root/<subdir>/``; absolute paths are used as they are.

Training-set size: ``train_per_domain=None`` follows FedBN's protocol, which trains every site on
the same number of images, a fraction of the smallest selected site's training list
(Office-Caltech-10: 1/2, DomainNet: 1/20); here that many images are taken from each site as a
class-balanced seeded subset (FedBN takes the first ones in file order). A number caps each site
instead. ``test_per_domain`` caps the test lists likewise (default: all, like FedBN). Only the
selected images are decoded (PIL, RGB, bilinear resize to ``image_size``, default 256), with a
few threads.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedwon.datasets.base import DomainArrays
from fedwon.datasets.errors import DataError
from fedwon.datasets.files import cap_indices, read_pair, require_file, require_root
from fedwon.datasets.images import as_labels, load_image_file
from fedwon.datasets.spec import DataSpec


@dataclass(frozen=True)
class ImageListFormat:
    """Where one image-list data set keeps its files and how it names its classes."""

    dataset: str
    subdir: str
    classes: tuple[str, ...]
    fedbn_train_fraction: float

    @property
    def layout(self) -> str:
        return (
            f"<data_root>/{self.subdir}/<site>_train.pkl and <site>_test.pkl, each a pickled "
            "(image paths, labels) pair, with the images at paths relative to <data_root>"
        )


def read_list(path: Path, fmt: ImageListFormat) -> tuple[list[str], np.ndarray]:
    """Paths and integer labels from one ``<site>_<split>.pkl``."""
    paths_obj, labels_obj = read_pair(require_file(path, fmt.layout))
    paths = [str(p) for p in np.asarray(paths_obj, dtype=object).reshape(-1)]
    labels = np.asarray(labels_obj).reshape(-1)
    if labels.dtype.kind in "US" or labels.dtype == object:
        labels = np.array([_class_id(str(t), fmt, path) for t in labels], dtype=np.int64)
    return paths, as_labels(labels, len(paths), len(fmt.classes), str(path))


def _class_id(name: str, fmt: ImageListFormat, source: Path) -> int:
    try:
        return fmt.classes.index(name)
    except ValueError:
        raise DataError(f"{source}: unknown class {name!r}; valid: {list(fmt.classes)}") from None


def resolve_image(root: Path, rel: str, fmt: ImageListFormat, source: Path) -> Path:
    """Find an image listed in ``source`` (see module doc for the search order)."""
    p = Path(rel)
    candidates = [p] if p.is_absolute() else [root / p, root / fmt.subdir / p]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(
        f"missing image file {candidates[0]} (listed in {source}); expected images at paths "
        f"relative to data_root {root}"
    )


def decode_images(paths: list[Path], size: int) -> np.ndarray:
    """Decode and resize images in parallel threads; ``uint8`` ``(N, 3, size, size)``."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    if not paths:
        return out
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, image in enumerate(pool.map(lambda p: load_image_file(p, size), paths)):
            out[i] = image
    return out


def fedbn_train_size(root: Path, domains: tuple[str, ...], fmt: ImageListFormat) -> int:
    """FedBN's per-site training size: a fraction of the smallest selected site's list."""
    sizes = [len(read_list(root / fmt.subdir / f"{d}_train.pkl", fmt)[0]) for d in domains]
    return max(1, math.floor(min(sizes) * fmt.fedbn_train_fraction))


def load_split(
    root: Path,
    domain: str,
    split: str,
    cap: int | None,
    spec: DataSpec,
    fmt: ImageListFormat,
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    source = root / fmt.subdir / f"{domain}_{split}.pkl"
    paths, labels = read_list(source, fmt)
    keep = cap_indices(labels, cap, spec.seed, domain, split)
    idx = np.arange(len(labels)) if keep is None else keep
    files = [resolve_image(root, paths[i], fmt, source) for i in idx]
    return decode_images(files, image_size), labels[idx]


def load_image_lists(
    spec: DataSpec, domains: tuple[str, ...], image_size: int, fmt: ImageListFormat
) -> dict[str, DomainArrays]:
    root = require_root(spec.data_root, fmt.dataset, fmt.layout)
    train_cap = spec.train_per_domain
    if train_cap is None:
        train_cap = fedbn_train_size(root, domains, fmt)
    out = {}
    for d in domains:
        train_x, train_y = load_split(root, d, "train", train_cap, spec, fmt, image_size)
        test_x, test_y = load_split(root, d, "test", spec.test_per_domain, spec, fmt, image_size)
        out[d] = DomainArrays(train_x, train_y, test_x, test_y)
    return out
